"""Optimisation methods: meaningful perturbation, extremal perturbation, NeuroMask."""

from workers.explainers.optimisation import (
    extremal_perturbation,
    meaningful_perturbation,
    neuromask,
)

__all__ = ["extremal_perturbation", "meaningful_perturbation", "neuromask"]
