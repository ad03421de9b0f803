"""``GET /v1/models`` (from live worker announcements) and ``GET /v1/methods`` (the catalogue)."""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from app.contract import cost
from app.contract.methods import MethodSpec, method_specs
from app.contract.metrics import EVALUATIONS
from app.routes.deps import IdentityDep, QueueDep, get_identity
from app.schemas import MethodCatalog, MethodOut, ModelList, ModelOut

router = APIRouter(prefix="/v1", tags=["catalogue"], dependencies=[Depends(get_identity)])


@router.get("/models", response_model=ModelList)
async def list_models(queue: QueueDep, identity: IdentityDep) -> ModelList:
    """Models served by live workers (those this API key may use): input size, classes,
    default and available layers, measured pass times."""
    served = {
        name: model
        for name, model in (await queue.served_models(fresh=True)).items()
        if identity.may_use(name)
    }
    return ModelList(
        models=[
            ModelOut(
                **model.info.model_dump(),
                workers=model.workers,
                lanes=sorted(model.lanes),
                devices=sorted(set(model.devices)),
            )
            for _, model in sorted(served.items())
        ]
    )


@router.get("/methods", response_model=MethodCatalog)
async def list_methods() -> MethodCatalog:
    """Every method with its parameter JSON schema and defaults, and the evaluation metrics."""
    return catalog()


@cache
def catalog() -> MethodCatalog:
    """The method catalogue (static: built from ``app.contract`` once)."""
    methods = [_method(spec) for spec in method_specs().values()]
    methods.sort(key=lambda m: (m.family, m.name))
    return MethodCatalog(
        methods=methods, evaluations=dict(EVALUATIONS), cost_model=cost.DESCRIPTION
    )


def _method(spec: MethodSpec) -> MethodOut:
    return MethodOut(
        name=spec.name,
        family=spec.family,
        lane=spec.lane,
        summary=spec.summary,
        paper=spec.paper,
        params_schema=spec.params.model_json_schema(),
        defaults=defaults(spec.params),
        cost=inspect.getdoc(spec.params.passes) or "",
    )


def defaults(params: type[BaseModel]) -> dict[str, Any]:
    """Default value of every parameter that has one, as JSON values."""
    values = {
        name: field.get_default(call_default_factory=True)
        for name, field in params.model_fields.items()
        if not field.is_required()
    }
    return to_jsonable_python(values)  # type: ignore[no-any-return]
