"""XGrad-CAM (Fu, Hu, Zhang, Gao, Yang, Cheng, "Axiom-based Grad-CAM: Towards Accurate
Visualization and Explanation of CNNs", BMVC 2020).

Channel weights derived from the sensitivity and conservation axioms: the gradient averaged
with the activations as weights,

    w_k = Σ_ij G_k(i, j) · A_k(i, j) / (Σ_ab A_k(a, b) + ε),   ε = 1e-7
    L   = ReLU(Σ_k w_k A_k)

then bilinearly up-sampled. ``ε`` only guards an all-zero channel (pytorch-grad-cam uses the
same value). One forward and one backward pass for the batch.
"""

from __future__ import annotations

from torch import Tensor

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.cam.base import CamResult, explanation, gradient_cam
from workers.explainers.cam.formulas import xgradcam_weights
from workers.explainers.registry import register


def xgradcam_maps(
    handle: ModelHandle, inputs: Tensor, targets: Tensor, layer: str | None = None
) -> CamResult:
    """XGrad-CAM maps ``(B, h, w)`` at the layer's resolution, ReLU applied."""
    return gradient_cam(handle, inputs, targets, layer, xgradcam_weights, "XGrad-CAM")


@register("xgradcam")
def xgradcam(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """XGrad-CAM maps ``(B, H, W)`` for ``targets``."""
    result = xgradcam_maps(handle, inputs, targets, layer)
    progress(1, 1)
    return explanation(result, inputs)
