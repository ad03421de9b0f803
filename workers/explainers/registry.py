"""Name -> explainer function. Methods register themselves with :func:`register`."""

from __future__ import annotations

from collections.abc import Callable

from workers.explainers.base import Explainer

_EXPLAINERS: dict[str, Explainer] = {}


def register(name: str) -> Callable[[Explainer], Explainer]:
    """Decorator: make ``fn`` the explainer called ``name``."""

    def decorate(fn: Explainer) -> Explainer:
        if name in _EXPLAINERS:
            raise RuntimeError(f"explainer {name!r} registered twice")
        _EXPLAINERS[name] = fn
        return fn

    return decorate


def get_explainer(name: str) -> Explainer:
    """The explainer called ``name`` (``KeyError`` if none)."""
    return _EXPLAINERS[name]


def explainer_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_EXPLAINERS)
