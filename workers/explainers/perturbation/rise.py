"""RISE (Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018; reference code ``eclique/RISE``, TorchRay ``rise``).

1. Draw ``N = n_masks`` binary grids ``g_i ∈ {0, 1}^{s×s}`` (``s = cells``), each cell 1 with
   probability ``p``, and a random shift ``(dy_i, dx_i) ∈ [0, ⌈H/s⌉) × [0, ⌈W/s⌉)``.
2. Up-sample each grid bilinearly (``align_corners=False``) to ``(s + 1)·⌈H/s⌉ × (s + 1)·⌈W/s⌉``
   and crop ``H × W`` at the shift: a smooth mask ``M_i ∈ [0, 1]^{H×W}``.
3. ``P_i = softmax(f(x ⊙ M_i))_c`` (masked pixels go to 0 in model-input space, the mean
   colour, as in the reference code), and

       S(u, v) = 1 / (N · p) · Σ_i P_i · M_i(u, v).

Defaults ``N = 4000, s = 7, p = 0.5`` (the paper's ImageNet setting; TorchRay uses 8000).
Differences from the reference code: the bilinear resize clamps at the border where
scikit-image reflects (a half-cell difference at the image edge), and masks are never all
stored: the small grids and shifts are drawn once on the CPU from ``seed`` (so the same seed
gives the same masks on any device and for any ``max_batch_size``), sent to the device once,
and each chunk's masks are up-sampled there, used for the forward pass and for the weighted
sum, and dropped. Items are ordered mask-major, so one up-sampled mask serves every image of
the call and each forward pass is filled to ``max_batch_size`` across images.
Cost: ``N`` forward passes per image, no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import (
    ExplainerError,
    Explanation,
    ModelHandle,
    ProgressFn,
    no_progress,
)
from workers.explainers.perturbation.engine import Evaluator
from workers.explainers.registry import register


def draw_grids(
    n_masks: int, cells: int, p: float, seed: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``(N, s, s)`` bool grids and ``(N, 2)`` shifts, drawn on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    grids = torch.rand(n_masks, cells, cells, generator=generator) < p
    cell_y, cell_x = (math.ceil(side / cells) for side in size)
    shift_y = torch.randint(0, cell_y, (n_masks,), generator=generator)
    shift_x = torch.randint(0, cell_x, (n_masks,), generator=generator)
    return grids, torch.stack([shift_y, shift_x], dim=1)


def upsample_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """``(n, H, W)`` smooth masks: bilinear up-sampling of ``grids`` cropped at ``shifts``."""
    cells = grids.shape[-1]
    height, width = size
    up = ((cells + 1) * math.ceil(height / cells), (cells + 1) * math.ceil(width / cells))
    big = F.interpolate(grids[:, None].float(), size=up, mode="bilinear", align_corners=False)
    rows = shifts[:, 0:1] + torch.arange(height, device=grids.device)  # (n, H)
    cols = shifts[:, 1:2] + torch.arange(width, device=grids.device)  # (n, W)
    index = torch.arange(grids.shape[0], device=grids.device)[:, None, None]
    return big[:, 0][index, rows[:, :, None], cols[:, None, :]]


@register("rise")
def rise(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    n_masks: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    seed: int = 0,
    max_batch_size: int | None = 64,
    precision: str = "float32",
    progress: ProgressFn = no_progress,
) -> Explanation:
    """RISE maps ``(B, H, W)``: the probability-weighted average of random masks."""
    batch, size = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    if not 0 < p <= 1 or n_masks < 1 or not 1 <= cells <= min(size):
        raise ExplainerError(f"RISE needs 0 < p ≤ 1, n_masks ≥ 1, 1 ≤ cells ≤ {min(size)}")
    grids, shifts = draw_grids(n_masks, cells, p, seed, size)
    grids, shifts = grids.to(inputs.device), shifts.to(inputs.device)
    total = n_masks * batch
    with torch.inference_mode():
        evaluator = Evaluator(handle, targets, "prob", max_batch_size, precision, progress, total)
        inputs = evaluator.layout(inputs)
        saliency = torch.zeros(batch, size[0] * size[1], device=inputs.device)
        for chunk in evaluator.chunks(total):
            first, last = chunk.start // batch, (chunk.stop - 1) // batch + 1
            masks = upsample_masks(grids[first:last], shifts[first:last], size)
            index = torch.arange(chunk.start, chunk.stop, device=inputs.device)
            local, rows = index // batch - first, index % batch
            perturbed = inputs[rows] * masks[local][:, None].to(inputs.dtype)
            scores = evaluator.scores(perturbed, rows)
            weights = scores.new_zeros(batch, last - first)
            weights[rows, local] = scores  # each (image, mask) pair once
            saliency += weights @ masks.flatten(1)
        saliency = saliency / (n_masks * p)
    return Explanation.uniform(
        saliency.view(batch, *size),
        forward_passes=n_masks,
        n_masks=n_masks,
        cells=cells,
        p=p,
        seed=seed,
        precision=evaluator.used_precision,
    )
