"""Parameters of the propagation family."""

from __future__ import annotations

from app.contract.params.common import MethodSpec

SPECS: list[MethodSpec] = []
