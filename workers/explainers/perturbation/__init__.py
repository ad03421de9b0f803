"""Perturbation methods: occlusion, FMO, RISE, LIME (sharing the batched ``engine``)."""

from workers.explainers.perturbation import fmo, lime, occlusion, rise

__all__ = ["fmo", "lime", "occlusion", "rise"]
