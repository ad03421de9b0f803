"""Quality metrics of saliency maps: faithfulness (deletion, insertion), localisation
(pointing game, energy-based pointing game) and the model-randomisation sanity check.

Pure torch like the rest of the library. :func:`evaluate` is what the worker calls for a job
that asks ``evaluate: ["deletion", "insertion"]``.
"""

from workers.explainers.metrics.auc import trapezoid_auc
from workers.explainers.metrics.deletion_insertion import (
    blur,
    default_step,
    deletion_auc,
    deletion_curves,
    insertion_auc,
    insertion_curves,
    saliency_ranks,
    transfer_curves,
)
from workers.explainers.metrics.evaluate import METRICS, evaluate
from workers.explainers.metrics.localisation import (
    boxes_to_masks,
    energy_pointing_game,
    near_region,
    pointing_game,
    pointing_tolerance,
)
from workers.explainers.metrics.randomisation import (
    average_ranks,
    layers_from,
    randomisable_layers,
    randomise_layers,
    randomise_top_layers,
    randomised_handle,
    sanity_correlation,
    spearman,
)

__all__ = [
    "METRICS",
    "average_ranks",
    "blur",
    "boxes_to_masks",
    "default_step",
    "deletion_auc",
    "deletion_curves",
    "energy_pointing_game",
    "evaluate",
    "insertion_auc",
    "insertion_curves",
    "layers_from",
    "near_region",
    "pointing_game",
    "pointing_tolerance",
    "randomisable_layers",
    "randomise_layers",
    "randomise_top_layers",
    "randomised_handle",
    "saliency_ranks",
    "sanity_correlation",
    "spearman",
    "transfer_curves",
    "trapezoid_auc",
]
