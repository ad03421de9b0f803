"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017).

Equations (paper eq. 1-2): with ``A ∈ R^{K×h×w}`` the activations of the chosen layer and
``G = ∂S_c/∂A`` the gradient of the target logit ``S_c``,

    w_k = (1 / hw) Σ_ij G_k(i, j)
    L   = ReLU(Σ_k w_k A_k)

then bilinearly up-sampled to the input size. Not normalised here (the worker normalises).
Default layer: the model's default layer, else the last module with a spatial output (the
paper uses the last convolutional layer). One forward and one backward pass for the whole
batch, each row with its own target.
"""

from __future__ import annotations

from torch import Tensor

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.cam.base import CamResult, explanation, gradient_cam
from workers.explainers.cam.formulas import gradcam_weights
from workers.explainers.registry import register


def gradcam_maps(
    handle: ModelHandle, inputs: Tensor, targets: Tensor, layer: str | None = None
) -> CamResult:
    """Grad-CAM maps ``(B, h, w)`` at the layer's resolution, ReLU applied."""
    return gradient_cam(handle, inputs, targets, layer, gradcam_weights, "Grad-CAM")


@register("gradcam")
def gradcam(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Grad-CAM maps ``(B, H, W)`` for ``targets``."""
    result = gradcam_maps(handle, inputs, targets, layer)
    progress(1, 1)
    return explanation(result, inputs)
