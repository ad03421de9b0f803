"""Quality scores a job can ask for with ``evaluate`` (names in ``app.contract.metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from workers.explainers.base import ExplainerError, ModelHandle
from workers.explainers.metrics.deletion_insertion import deletion_auc, insertion_auc

Metric = Callable[..., Tensor]

METRICS: dict[str, Metric] = {"deletion": deletion_auc, "insertion": insertion_auc}
"""Name -> ``(handle, inputs, targets, saliency, *, step, seed, max_batch_size) -> (B,)``."""


def evaluate(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    saliency: Tensor,
    names: list[str],
    *,
    max_batch_size: int | None = 64,
    step: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """One dict per row: each requested metric of that row's map.

    ``inputs`` ``(B, 3, H, W)`` model inputs, ``targets`` ``(B,)``, ``saliency`` ``(B, h, w)``
    (resized to the input when smaller). Unknown names raise :class:`ExplainerError`.
    Cost: ``⌈HW / step⌉ + 1`` forward passes per image per metric (225 by default).
    """
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ExplainerError(f"unknown evaluation(s) {unknown}; known: {sorted(METRICS)}")
    rows: list[dict[str, float]] = [{} for _ in range(inputs.shape[0])]
    for name in dict.fromkeys(names):
        scores = METRICS[name](
            handle,
            inputs,
            targets,
            saliency.to(inputs.device),
            step=step,
            seed=seed,
            max_batch_size=max_batch_size or 64,
        )
        for row, value in zip(rows, scores.tolist(), strict=True):
            row[name] = float(value)
    return rows
