"""The catalogue of methods: name -> ``MethodSpec`` (parameters, lane, paper)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import ValidationError

from app.contract.params import cam, optimisation, perturbation, propagation
from app.contract.params.common import MethodParams, MethodSpec

_FAMILIES = (perturbation, cam, propagation, optimisation)


@cache
def method_specs() -> dict[str, MethodSpec]:
    """Every method the service knows, by client-facing name."""
    specs: dict[str, MethodSpec] = {}
    for family in _FAMILIES:
        for spec in family.SPECS:
            if spec.name in specs:
                raise RuntimeError(f"method {spec.name!r} is declared twice")
            specs[spec.name] = spec
    return specs


def parse_params(method: str, raw: dict[str, Any] | None) -> MethodParams:
    """Validate ``raw`` against the method's model; raises ``KeyError`` or ``ValidationError``."""
    spec = method_specs()[method]
    return spec.params.model_validate(raw or {})


__all__ = ["MethodParams", "MethodSpec", "ValidationError", "method_specs", "parse_params"]
