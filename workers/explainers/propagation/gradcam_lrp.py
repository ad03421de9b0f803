"""The Grad-CAM × LRP hybrid (Dhore, Bhat, Nerlekar, Chavhan, Umare, "Enhancing Explainable
AI: A Hybrid Approach Combining GradCAM and LRP for CNN Interpretability", arXiv 2405.12175,
2024).

The paper's abstract [P]: the Grad-CAM explanation is first denoised, then multiplied element-wise
with the LRP output, then Gaussian-blurred. Its denoising operator, threshold, blur σ and LRP
rules are not published; the defaults below are the reconstruction of METHODS.md §5.3 [X]:

    G  = N(U(CAM_l(x, c)))                 base CAM, default Grad-CAM++ (per third-party summaries)
    G' = G · 1[G ≥ τ]                      τ = 0.2 (threshold on the min-max normalised CAM) [X]
    L  = max(Σ_channels LRP(x, c), 0)      composite EpsilonPlusFlat; positive part [X]
    P  = GaussianBlur(G' ⊙ L, σ)           σ = 2 px at 224 px, scaled to the input [X];
                                           kernel 2⌈3σ⌉+1, replicated borders

``N`` is per-image min-max normalisation and ``U`` bilinear up-sampling. The LRP map is
*summed* over colour channels where the summaries say the paper *averaged*: a factor of 3 that
min-max normalisation removes. The output is ``P`` (sign kept, not normalised; the worker
normalises). Cost: the CAM's forward and partial backward plus LRP's forward and backward, each
once for the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.cam.common import cam_result
from workers.explainers.postprocess import normalise, upsample
from workers.explainers.propagation.lrp import lrp_relevance
from workers.explainers.propagation.lrp_plan import plan_for
from workers.explainers.registry import register

REFERENCE_SIDE = 224
REFERENCE_SIGMA = 2.0


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, H, W)`` maps, kernel ``2⌈3σ⌉+1``, replicated borders."""
    if sigma <= 0:
        return maps
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


def effective_sigma(sigma: float | None, size: tuple[int, int]) -> float:
    """``sigma`` as given, else 2 px scaled from a 224-px input to this one."""
    if sigma is not None:
        return sigma
    return REFERENCE_SIGMA * min(size) / REFERENCE_SIDE


@register("gradcam_lrp")
def gradcam_lrp(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    base: str = "gradcam_pp",
    threshold: float = 0.2,
    sigma: float | None = None,
    composite: str = "epsilon_plus_flat",
    lrp_positive: bool = True,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Hybrid maps ``(B, H, W)``: denoised CAM times the LRP map, blurred."""
    size = (inputs.shape[-2], inputs.shape[-1])
    result = cam_result(base, handle, inputs, targets, layer)
    name, cams, targets = result.layer, result.maps, result.targets
    progress(1, 2)
    cam = normalise(upsample(cams.float(), size))
    cam = torch.where(cam >= threshold, cam, torch.zeros_like(cam))
    checked = plan_for(handle.model, composite, 1e-6, handle.mean, handle.std).validated
    relevance, _ = lrp_relevance(handle, inputs, targets, composite=composite)
    pixel = relevance.sum(dim=1).float()
    if lrp_positive:
        pixel = pixel.clamp(min=0)
    blur = effective_sigma(sigma, size)
    saliency = gaussian_blur(cam * pixel, blur)
    progress(2, 2)
    return Explanation.uniform(
        saliency,
        result.logits,
        layer=name,
        base=base,
        composite=composite,
        sigma=blur,
        forward_passes=2 if checked else 3,  # a plan's first call checks the merge
        backward_passes=2,
    )
