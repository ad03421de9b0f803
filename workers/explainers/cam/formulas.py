"""The CAM formulas as pure functions of tensors (no model, no hooks).

Shapes: ``A`` activations and ``G = ∂S_c/∂A`` gradients are ``(B, K, h, w)``; channel weights
are ``(B, K)``; maps are ``(B, h, w)``. Every function returns the map *before* the final ReLU
(``raw``), so callers can tell an all-negative map from a layer that carries no signal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.explainers.base import ExplainerError

EPS = 1e-7
"""Guard added to the XGrad-CAM denominator (as in pytorch-grad-cam)."""


def weighted_sum(weights: Tensor, A: Tensor) -> Tensor:
    """``Σ_k w_k A_k``: ``(B, K)`` weights and ``(B, K, h, w)`` activations -> ``(B, h, w)``."""
    return torch.einsum("bk,bkhw->bhw", weights.to(A.dtype), A)


def gradcam_weights(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM: ``w_k = (1/hw) Σ_ij G_k(i, j)``."""
    return G.mean(dim=(2, 3))


def gradcam_pp_weights_from_moments(
    A: Tensor, d1: Tensor, d2: Tensor, d3: Tensor, positions: Tensor | None = None
) -> Tensor:
    """Grad-CAM++ weights from first, second and third gradient moments (paper form).

    ``α_k(i,j) = D2 / (2·D2 + (Σ_ab A_k(a,b))·D3)`` (0 where ``D2 = 0`` or the denominator is
    0), ``w_k = Σ_(i,j)∈Ω α_k(i,j)·ReLU(D1_k(i,j))``. With one gradient ``g``, ``D_n = g^n``
    (plain Grad-CAM++); Smooth Grad-CAM++ passes averages over noisy copies. ``positions``
    (``(B, h, w)`` or ``(h, w)`` bool) restricts the sum to a set ``Ω`` of neurons.
    """
    sum_a = A.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * d2 + sum_a * d3
    valid = (d2 != 0) & (denominator != 0)
    alpha = torch.where(valid, d2 / torch.where(valid, denominator, torch.ones_like(d2)), 0.0)
    terms = alpha * torch.relu(d1)
    if positions is not None:
        terms = terms * positions.to(terms.dtype).expand_as(terms[:, 0]).unsqueeze(1)
    return terms.sum(dim=(2, 3))


def gradcam_pp_weights(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al.): ``α = g² / (2g² + (Σ_ab A_k(a,b))·g³)``."""
    g2 = G * G
    return gradcam_pp_weights_from_moments(A, G, g2, g2 * G)


def xgradcam_weights(A: Tensor, G: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al.): ``w_k = Σ_ij G_k(i,j)·A_k(i,j) / (Σ_ab A_k(a,b) + ε)``."""
    return (G * A).sum(dim=(2, 3)) / (A.sum(dim=(2, 3)) + EPS)


def layercam_raw(A: Tensor, G: Tensor) -> Tensor:
    """LayerCAM (Jiang et al.): per-position weights, ``Σ_k ReLU(G_k(i,j))·A_k(i,j)``."""
    return (torch.relu(G) * A).sum(dim=1)


def fuse_layercam(maps: list[Tensor], gamma: float) -> Tensor:
    """LayerCAM multi-layer fusion (paper eq. 9 and its max rule).

    ``maps`` are ReLU'd ``(B, h_l, w_l)`` maps ordered shallow to deep. Each is divided by its
    per-image maximum; every layer but the deepest is then scaled by ``tanh(γ·L/max L)``; all
    are bilinearly resized to the finest grid and fused by the element-wise maximum.
    """
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    fused: Tensor | None = None
    for index, cam in enumerate(maps):
        peak = cam.flatten(1).amax(dim=1).clamp(min=torch.finfo(cam.dtype).tiny)
        scaled = cam / peak.view(-1, 1, 1)
        if index < len(maps) - 1:
            scaled = torch.tanh(gamma * scaled)
        if tuple(scaled.shape[-2:]) != tuple(size):
            scaled = torch.nn.functional.interpolate(
                scaled.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False
            )[:, 0]
        fused = scaled if fused is None else torch.maximum(fused, scaled)
    assert fused is not None
    return fused


def mode_masks(
    A: Tensor, mode: str, channels: list[int] | None, neuron: list[int] | None
) -> tuple[Tensor | None, Tensor | None]:
    """Smooth Grad-CAM++ modes: (channel mask ``(K,)`` or None, position mask ``(h, w)`` or None).

    ``layer``: neither; ``channels``: the feature maps 𝒦; ``neuron``: the one position Ω.
    """
    K, h, w = A.shape[1:]
    if mode == "channels":
        if not channels:
            raise ExplainerError("mode 'channels' needs a non-empty `channels` list")
        bad = [c for c in channels if not 0 <= c < K]
        if bad:
            raise ExplainerError(f"channels {bad} are out of range: the layer has {K} channels")
        keep = torch.zeros(K, dtype=torch.bool, device=A.device)
        keep[torch.tensor(channels, device=A.device)] = True
        return keep, None
    if mode == "neuron":
        if neuron is None or len(neuron) != 2:
            raise ExplainerError("mode 'neuron' needs `neuron` = [i, j] on the layer's grid")
        i, j = neuron
        if not (0 <= i < h and 0 <= j < w):
            raise ExplainerError(f"neuron {[i, j]} is outside the layer's {h}×{w} grid")
        where = torch.zeros(h, w, dtype=torch.bool, device=A.device)
        where[i, j] = True
        return None, where
    if mode != "layer":
        raise ExplainerError(f"unknown mode {mode!r}: use 'layer', 'channels' or 'neuron'")
    return None, None
