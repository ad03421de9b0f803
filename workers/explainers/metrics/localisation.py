"""Localisation metrics: the pointing game and the energy-based pointing game.

Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016;
TorchRay's benchmark): take the arg-max point of the map; it is a hit if some pixel of the
object lies strictly within Euclidean distance ``τ`` of it. ``τ = 15`` px at 224 px, scaled
with the shorter side of the input (7.5 px at 112). When several pixels share the maximum,
the score is the share of them that hit — the expected hit rate of a random choice among
them — so a constant map scores the chance value (the share of the image within ``τ`` of
the object) instead of whatever pixel ``argmax`` happens to return first.

Energy-based pointing game (Wang et al., "Score-CAM", CVPR-W 2020, reference code): the map is
min-max normalised to [0, 1] and the score is the share of its mass inside the object's box
(or mask), ``Σ L · B / Σ L``. A map with no mass after normalisation (a constant map) is
scored as a uniform distribution of mass, i.e. the region's area fraction — the chance value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.postprocess import normalise, upsample

TOLERANCE_AT_224 = 15.0


def pointing_tolerance(size: tuple[int, int]) -> float:
    """The pointing-game tolerance in pixels for an input of ``size`` (15 px at 224)."""
    return TOLERANCE_AT_224 * min(size) / 224


def boxes_to_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, 4)`` boxes ``(x0, y0, x1, y1)`` with exclusive ends -> ``(B, H, W)`` bool masks."""
    height, width = size
    ys = torch.arange(height, device=boxes.device).view(1, -1, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, -1)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def near_region(regions: Tensor, tolerance: float) -> Tensor:
    """``(B, H, W)`` bool: pixels strictly within ``tolerance`` of some pixel of ``regions``."""
    radius = max(0, math.ceil(tolerance) - 1)
    offsets = torch.arange(-radius, radius + 1, device=regions.device, dtype=torch.float32)
    disc = (offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2 < tolerance**2).float()
    hits = F.conv2d(regions.float().unsqueeze(1), disc.view(1, 1, *disc.shape), padding=radius)
    return hits[:, 0] > 0.5


def _maps_like(saliency: Tensor, regions: Tensor) -> Tensor:
    """The maps at the regions' size, float; non-finite values become the row's finite minimum."""
    size = (regions.shape[-2], regions.shape[-1])
    maps = upsample(saliency.float(), size)
    finite = torch.isfinite(maps)
    low = torch.where(finite, maps, torch.full_like(maps, math.inf)).flatten(1).min(dim=1).values
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low)).view(-1, 1, 1)
    return torch.where(finite, maps, low.expand_as(maps))


def pointing_game(saliency: Tensor, regions: Tensor, tolerance: float | None = None) -> Tensor:
    """``(B,)`` pointing-game score in [0, 1] of each map against its object's region.

    ``saliency`` ``(B, h, w)`` (resized to the regions' size), ``regions`` ``(B, H, W)`` bool
    (the object's mask, or its box via :func:`boxes_to_masks`). ``tolerance`` defaults to
    :func:`pointing_tolerance` of the regions' size. 1 = hit, 0 = miss; a fraction only when
    the maximum is shared by several pixels.
    """
    size = (regions.shape[-2], regions.shape[-1])
    tolerance = pointing_tolerance(size) if tolerance is None else tolerance
    maps = _maps_like(saliency, regions).flatten(1)
    is_max = maps == maps.max(dim=1, keepdim=True).values
    hit = near_region(regions.bool(), tolerance).flatten(1)
    return (is_max & hit).sum(dim=1).float() / is_max.sum(dim=1).float()


def energy_pointing_game(saliency: Tensor, regions: Tensor) -> Tensor:
    """``(B,)`` share of the min-max-normalised map's mass inside ``regions`` (higher is better).

    ``regions`` ``(B, H, W)`` bool: a box mask (the Score-CAM definition) or the object's mask.
    """
    maps = normalise(_maps_like(saliency, regions))
    inside = regions.bool().flatten(1)
    energy = maps.flatten(1).sum(dim=1)
    share = (maps.flatten(1) * inside).sum(dim=1) / energy.clamp(min=1e-12)
    return torch.where(energy > 0, share, inside.float().mean(dim=1))
