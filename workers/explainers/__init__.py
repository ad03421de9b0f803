"""The method library: pure torch, no Redis, no FastAPI, no settings.

Importing this package registers every method (each family package imports its modules).
"""

from workers.explainers import cam, optimisation, perturbation, propagation
from workers.explainers.base import (
    Cancelled,
    ExplainerError,
    Explanation,
    ModelHandle,
    ProgressFn,
)
from workers.explainers.registry import explainer_names, get_explainer, register

__all__ = [
    "Cancelled",
    "ExplainerError",
    "Explanation",
    "ModelHandle",
    "ProgressFn",
    "cam",
    "explainer_names",
    "get_explainer",
    "optimisation",
    "perturbation",
    "propagation",
    "register",
]
