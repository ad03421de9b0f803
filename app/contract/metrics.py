"""Names of the quality metrics a job may ask for with ``evaluate``.

Each value is user documentation (published with the method catalogue). The worker computes
them with ``workers.explainers.metrics.evaluate`` on the job's own map and target.
"""

from __future__ import annotations

EVALUATIONS: dict[str, str] = {
    "deletion": "Deletion AUC (RISE paper): the target's softmax probability as the most salient "
    "pixels are set to 0 in model-input space (the mean colour), 1/224 of the image per step; "
    "area under that curve, in [0, 1], lower is better. Costs 225 forward passes per image.",
    "insertion": "Insertion AUC (RISE paper): the target's softmax probability as the most "
    "salient pixels are put back into a blurred copy of the image (Gaussian, 11 px, σ = 5), "
    "1/224 of the image per step; area under that curve, in [0, 1], higher is better. "
    "Costs 225 forward passes per image.",
}
