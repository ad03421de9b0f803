"""Grad-CAM++ (Chattopadhyay, Sarkar, Howlader, Balasubramanian, "Grad-CAM++: Generalized
Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018).

With ``g = ∂S_c/∂A_k(i, j)`` the gradient of the target logit (the paper's ``exp(S_c)`` factor
is a positive per-image constant and is dropped: it only rescales the map),

    α_k(i, j) = g² / (2g² + (Σ_ab A_k(a, b)) · g³)        (0 where g = 0)
    w_k       = Σ_ij α_k(i, j) · ReLU(g)
    L         = ReLU(Σ_k w_k A_k)

then bilinearly up-sampled. The denominator is the paper's form: the *channel sum* of the
activations times the *local* cubed gradient (several popular implementations mix the indices
and sum ``A·g³`` over positions instead). One forward and one backward pass for the batch.
"""

from __future__ import annotations

from torch import Tensor

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.cam.base import CamResult, explanation, gradient_cam
from workers.explainers.cam.formulas import gradcam_pp_weights
from workers.explainers.registry import register


def gradcam_pp_maps(
    handle: ModelHandle, inputs: Tensor, targets: Tensor, layer: str | None = None
) -> CamResult:
    """Grad-CAM++ maps ``(B, h, w)`` at the layer's resolution, ReLU applied."""
    return gradient_cam(handle, inputs, targets, layer, gradcam_pp_weights, "Grad-CAM++")


@register("gradcam_pp")
def gradcam_pp(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Grad-CAM++ maps ``(B, H, W)`` for ``targets``."""
    result = gradcam_pp_maps(handle, inputs, targets, layer)
    progress(1, 1)
    return explanation(result, inputs)
