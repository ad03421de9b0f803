"""Area under a curve sampled at evenly spaced points of [0, 1] (the trapezoid rule)."""

from __future__ import annotations

from torch import Tensor


def trapezoid_auc(curves: Tensor) -> Tensor:
    """AUC of each row of ``curves`` ``(B, n)``, the ``n`` samples spread evenly over [0, 1].

    The trapezoid rule of the RISE evaluation code:
    ``(Σ s − s_0 / 2 − s_{n−1} / 2) / (n − 1)``. A curve of one point has no width and gets
    its single value.
    """
    if curves.dim() != 2:
        raise ValueError(f"curves must be (B, n), got {tuple(curves.shape)}")
    points = curves.shape[1]
    if points == 0:
        raise ValueError("a curve needs at least one point")
    if points == 1:
        return curves[:, 0].clone()
    inner = curves.sum(dim=1) - (curves[:, 0] + curves[:, -1]) / 2
    return inner / (points - 1)
