"""Turning request fields into a job: method, model, parameters, target, evaluations.

Everything is checked here, against the method catalogue and what the live workers announced,
so that no request reaches a worker in a form that can crash it.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.contract.cost import job_cost
from app.contract.jobs import JobCost, ModelInfo
from app.contract.methods import MethodSpec, method_specs, parse_params
from app.contract.metrics import EVALUATIONS
from app.identity import Identity
from app.problems import ProblemError, problem_from_pydantic
from app.queue import JobQueue, ServedModel
from app.schemas import ExplanationFields

_INDEX = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ResolvedJob:
    """A fully validated request and its estimated cost."""

    spec: MethodSpec
    lane: str
    model: ModelInfo
    params: dict[str, Any]
    target: int | None
    evaluate: list[str]
    cost: JobCost


async def resolve(
    fields: ExplanationFields,
    queue: JobQueue,
    *,
    retry_after_s: int,
    identity: Identity | None = None,
) -> ResolvedJob:
    """Validate ``fields``; raises ``ProblemError`` 422 (bad request), 403 (a model the key
    may not use) or 503 (no worker)."""
    spec = method_spec(fields.method)
    raw = dict(fields.params or {})
    evaluate = evaluations([*(fields.evaluate or []), *_pop_evaluate(raw)])
    lane = lane_of(spec, raw)
    served = await pick_model(fields.model, lane, queue, retry_after_s=retry_after_s)
    if identity is not None and not identity.may_use(served.info.name):
        raise ProblemError(
            403,
            f"API key {identity.name!r} may not use model {served.info.name!r}; its models: "
            f"{', '.join(sorted(identity.models or ())) or 'none'}",
            kind="forbidden",
        )
    params = validate_params(spec, raw, served.info)
    refusal = served.info.unsupported.get(spec.name)
    if refusal and not (params.get("layer") or params.get("layers")):
        raise ProblemError(
            422,
            f"method {spec.name!r} cannot run on model {served.info.name!r}: {refusal}",
            kind="invalid-request",
        )
    target = resolve_target(fields.target, served.info)
    passes = parse_params(spec.name, params).passes(served.info)
    cost = job_cost(passes, served.info, evaluate)
    return ResolvedJob(spec, lane, served.info, params, target, evaluate, cost)


def check_cost(cost: JobCost, cap_s: float, *, source: str = "XPLAIN_MAX_JOB_COST") -> None:
    """422 ``job-too-costly`` when the estimated seconds exceed ``cap_s``."""
    if cost.seconds <= cap_s:
        return
    passes = f"{cost.forward_passes} forward"
    if cost.backward_passes:
        passes += f" and {cost.backward_passes} backward"
    raise ProblemError(
        422,
        f"the job's estimated cost is {cost.seconds:.1f} s of worker compute ({passes} passes), "
        f"above the cap of {cap_s:g} s ({source}); ask for fewer samples, masks, windows or "
        "iterations",
        kind="job-too-costly",
        cost=cost.model_dump(),
        max_cost=cap_s,
    )


def lane_of(spec: MethodSpec, raw: dict[str, Any]) -> str:
    """The job's cost lane: the method's, unless its parameters ask for a costlier one.

    Invalid parameters keep the method's lane; ``validate_params`` reports them.
    """
    try:
        return spec.params.model_validate(raw).lane(spec.lane)
    except ValidationError:
        return spec.lane


def method_spec(name: str) -> MethodSpec:
    """The method's spec, or 422 naming the known methods."""
    specs = method_specs()
    if name not in specs:
        raise ProblemError(
            422,
            f"unknown method {name!r}{_suggest(name, specs)}; the methods are "
            f"{', '.join(sorted(specs))} (GET /v1/methods)",
            kind="invalid-request",
        )
    return specs[name]


async def pick_model(
    name: str | None, lane: str, queue: JobQueue, *, retry_after_s: int
) -> ServedModel:
    """The served model named ``name`` (or the only one), able to run jobs of ``lane``."""
    served = await queue.served_models()
    if name is not None and name not in served:
        served = await queue.served_models(fresh=True)
    retry = {"Retry-After": str(retry_after_s)}
    if not served:
        what = f"model {name!r}" if name else "any model"
        raise ProblemError(
            503,
            f"no live worker serves {what}: no worker is running",
            kind="no-worker",
            headers=retry,
        )
    if name is None:
        if len(served) > 1:
            raise ProblemError(
                422,
                f"several models are served ({', '.join(sorted(served))}): name one in `model`",
                kind="invalid-request",
            )
        name = next(iter(served))
    if name not in served:
        if name in queue.seen_models:
            raise ProblemError(
                503,
                f"no live worker serves model {name!r} right now",
                kind="no-worker",
                headers=retry,
            )
        raise ProblemError(
            422,
            f"unknown model {name!r}{_suggest(name, served)}; the served models are "
            f"{', '.join(sorted(served))} (GET /v1/models)",
            kind="invalid-request",
        )
    model = served[name]
    if lane not in model.lanes:
        raise ProblemError(
            503,
            f"no live worker runs {lane}-lane methods for model {name!r} right now",
            kind="no-worker",
            headers=retry,
        )
    return model


def _pop_evaluate(params: dict[str, Any]) -> list[str]:
    value = params.pop("evaluate", None)
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ProblemError(
        422, "params.evaluate must be a list of metric names", kind="invalid-request"
    )


def evaluations(names: list[str]) -> list[str]:
    """Deduplicated metric names, each known, or 422."""
    unknown = sorted({n for n in names if n not in EVALUATIONS})
    if unknown:
        raise ProblemError(
            422,
            f"unknown evaluation(s) {', '.join(map(repr, unknown))}; available: "
            f"{', '.join(EVALUATIONS)}",
            kind="invalid-request",
        )
    return list(dict.fromkeys(names))


def validate_params(spec: MethodSpec, raw: dict[str, Any], model: ModelInfo) -> dict[str, Any]:
    """The effective parameters (defaults filled), validated for the method and the model."""
    try:
        params = parse_params(spec.name, raw)
    except ValidationError as exc:
        fields = sorted(spec.params.model_fields)
        hint = ""
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            hint = f"the parameters of {spec.name} are: {', '.join(fields) or 'none'}"
        raise problem_from_pydantic(exc, prefix="params", hint=hint) from exc
    try:
        params.check_model(model)
    except ValueError as exc:
        raise ProblemError(422, f"params: {exc}", kind="invalid-request") from exc
    return params.model_dump(mode="json")


def resolve_target(target: int | str | None, model: ModelInfo) -> int | None:
    """A class index from an index or a label (exact, else case-insensitive), or 422."""
    if target is None:
        return None
    if isinstance(target, str):
        text = target.strip()
        if _INDEX.fullmatch(text):
            target = int(text)
        else:
            return _label_index(text, model)
    if not 0 <= target < model.num_classes:
        raise ProblemError(
            422,
            f"target {target} is out of range: model {model.name!r} has {model.num_classes} "
            f"classes (0 to {model.num_classes - 1})",
            kind="invalid-request",
        )
    return target


def _label_index(label: str, model: ModelInfo) -> int:
    labels = model.labels[: model.num_classes]
    if label in labels:
        return labels.index(label)
    folded = [i for i, name in enumerate(labels) if name.casefold() == label.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise ProblemError(
        422,
        f"unknown class label {label!r} for model {model.name!r}{_suggest(label, labels)}; "
        "give a class index or one of its labels (GET /v1/models)",
        kind="invalid-request",
    )


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def retry_after_for_backlog(backlog_s: float, depth: int, cap: int, workers: int) -> int:
    """Seconds until a full lane has room, from its estimated backlog of work.

    The jobs over the cap (``depth − cap + 1``) must finish first; each takes the lane's mean
    estimated seconds per job (``backlog_s / depth``), shared by the workers serving the lane.
    Between 1 and 3600 s.
    """
    if depth <= 0 or workers <= 0:
        return 5
    per_job = backlog_s / depth
    waiting = max(1, depth - cap + 1)
    return max(1, min(3600, math.ceil(waiting * per_job / workers)))
