"""Names of the quality metrics a job may ask for with ``evaluate``."""

from __future__ import annotations

EVALUATIONS: dict[str, str] = {
    "deletion": "Deletion AUC (RISE paper): probability as the most salient pixels are removed; "
    "lower is better.",
    "insertion": "Insertion AUC (RISE paper): probability as the most salient pixels are put "
    "back into a blurred image; higher is better.",
}
