"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017).

Equations (paper eq. 1-2): with ``A ∈ R^{K×h×w}`` the activations of the chosen layer and
``G = ∂S_c/∂A`` the gradient of the target logit ``S_c``,

    w_k = (1 / hw) Σ_ij G_k(i, j)
    L   = ReLU(Σ_k w_k A_k)

then bilinearly up-sampled to the input size. Not normalised here (the worker normalises).
One forward and one backward pass for the whole batch, each row with its own target.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.hooks import capture
from workers.explainers.postprocess import upsample
from workers.explainers.registry import register


def layer_activations_and_gradients(
    handle: ModelHandle, inputs: Tensor, targets: Tensor, layer: str | None
) -> tuple[str, Tensor, Tensor, Tensor]:
    """One forward + backward: (layer name, logits, activations, d target logit / d activations).

    Rows do not interact in eval mode, so back-propagating the sum of each row's target logit
    gives every row its own gradient.
    """
    name, module = handle.resolve_layer(layer)
    with torch.inference_mode(False), torch.enable_grad(), capture(module, detach=False) as got:
        x = inputs.detach().clone().requires_grad_(True)
        logits = handle.model(x)
        score = logits.gather(1, targets.view(-1, 1)).sum()
        activation = got.activation
        (gradient,) = torch.autograd.grad(score, activation)
    return name, logits.detach(), activation.detach(), gradient.detach()


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
    name, _, activations, gradients = layer_activations_and_gradients(
        handle, inputs, targets, layer
    )
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activations).sum(dim=1))
    progress(1, 1)
    return Explanation.uniform(
        upsample(cams, tuple(inputs.shape[-2:])).float(),
        layer=name,
        forward_passes=1,
        backward_passes=1,
    )
