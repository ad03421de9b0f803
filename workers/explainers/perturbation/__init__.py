"""Perturbation methods: occlusion, FMO, RISE, LIME."""

from workers.explainers.perturbation import occlusion

__all__ = ["occlusion"]
