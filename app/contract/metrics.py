"""Names of the quality metrics a job may ask for with ``evaluate``.

Each value is user documentation (published with the method catalogue). The worker computes
them with ``workers.explainers.metrics.evaluate`` on the job's own map and target.
"""

from __future__ import annotations

import math

CURVE_STEPS = 224
"""Steps of a deletion / insertion curve (the RISE paper's count at 224 × 224)."""


def curve_passes(size: tuple[int, int]) -> int:
    """Forward passes of one deletion or insertion curve of one image of ``size`` (H, W)."""
    pixels = size[0] * size[1]
    step = max(1, math.ceil(pixels / CURVE_STEPS))
    return math.ceil(pixels / step) + 1


def evaluation_passes(size: tuple[int, int], names: list[str] | int) -> int:
    """Forward passes of the requested metrics (names or their count) for one image."""
    count = names if isinstance(names, int) else len(set(names))
    return count * curve_passes(size)


EVALUATIONS: dict[str, str] = {
    "deletion": "Deletion AUC (RISE paper): the target's softmax probability as the most salient "
    "pixels are set to 0 in model-input space (the mean colour), 1/224 of the image per step; "
    "area under that curve, in [0, 1], lower is better. Costs 225 forward passes per image.",
    "insertion": "Insertion AUC (RISE paper): the target's softmax probability as the most "
    "salient pixels are put back into a blurred copy of the image (Gaussian, 11 px, σ = 5), "
    "1/224 of the image per step; area under that curve, in [0, 1], higher is better. "
    "Costs 225 forward passes per image.",
}
