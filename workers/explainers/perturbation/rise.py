"""RISE (Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018; reference code ``eclique/RISE``, TorchRay ``rise``).

1. Draw ``N = n_masks`` binary grids ``g_i ∈ {0, 1}^{s×s}`` (``s = cells``), each cell 1 with
   probability ``p``, and a random shift ``(dy_i, dx_i) ∈ [0, ⌈H/s⌉) × [0, ⌈W/s⌉)``.
2. Up-sample each grid bilinearly (``align_corners=False``) to ``(s + 1)·⌈H/s⌉ × (s + 1)·⌈W/s⌉``
   and crop ``H × W`` at the shift: a smooth mask ``M_i ∈ [0, 1]^{H×W}`` (computed as two small
   matrix products, ``rows_y[dy] · g_i · rows_x[dx]ᵀ``: bilinear up-sampling is separable).
3. ``P_i = softmax(f(x ⊙ M_i))_c`` (masked pixels go to 0 in model-input space, the mean
   colour, as in the reference code), and

       S(u, v) = 1 / (N · p) · Σ_i P_i · M_i(u, v).

Defaults ``N = 4000, s = 7, p = 0.5`` (the paper's ImageNet setting; TorchRay uses 8000).
Differences from the reference code: the bilinear resize clamps at the border where
scikit-image reflects (a half-cell difference at the image edge), and masks are never all
stored: the small grids and shifts are drawn on the CPU in blocks of ``2²⁰ / s²`` masks, block
``b`` from the seed ``seed + b·2³¹`` (so the same seed gives the same masks on any device, for
any ``max_batch_size`` and any ``n_masks``; one block at a time is held, about 1 MB of cells
whatever ``N`` and ``s``), and each chunk's masks are up-sampled on the device, used for the
forward pass and for the weighted sum, and dropped. Items are ordered mask-major, so one
up-sampled mask serves every image of the call and each forward pass is filled to
``max_batch_size`` across images. Cost: ``1 + N`` forward passes per image (the clean pass
gives the prediction), no gradient.
"""

from __future__ import annotations

import functools
import math

import torch
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

BLOCK_CELLS = 1 << 20
"""Grid cells drawn at a time: masks are drawn in blocks of ``BLOCK_CELLS // s²`` masks."""


def block_masks(cells: int) -> int:
    """Masks per block for ``cells × cells`` grids (depends on ``cells`` only)."""
    return max(1, BLOCK_CELLS // (cells * cells))


def draw_grids(
    n_masks: int, cells: int, p: float, seed: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``(N, s, s)`` bool grids and ``(N, 2)`` shifts of masks ``0 … N − 1``, on the CPU."""
    source = MaskSource(cells, p, seed, size, torch.device("cpu"))
    return source.take(0, n_masks)


def draw_block(
    block: int, cells: int, p: float, seed: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Block ``block``: grids ``(per_block, s, s)`` and shifts ``(per_block, 2)``.

    Drawn from the generator seeded ``seed + block·2³¹`` (block 0: ``seed`` itself), so a
    mask depends only on ``seed``, ``cells``, ``p`` and its index, never on ``n_masks`` or
    ``max_batch_size``.
    """
    per_block = block_masks(cells)
    generator = torch.Generator().manual_seed(seed + block * 2**31)
    grids = torch.rand(per_block, cells, cells, generator=generator) < p
    cell_y, cell_x = (math.ceil(side / cells) for side in size)
    shift_y = torch.randint(0, cell_y, (per_block,), generator=generator)
    shift_x = torch.randint(0, cell_x, (per_block,), generator=generator)
    return grids, torch.stack([shift_y, shift_x], dim=1)


class MaskSource:
    """The grids and shifts of masks ``first … last − 1``, one block drawn at a time."""

    def __init__(
        self, cells: int, p: float, seed: int, size: tuple[int, int], device: torch.device
    ) -> None:
        self.cells, self.p, self.seed, self.size, self.device = cells, p, seed, size, device
        self.per_block = block_masks(cells)
        self._block = -1
        self._grids = self._shifts = torch.empty(0)

    def take(self, first: int, last: int) -> tuple[Tensor, Tensor]:
        """``(last − first, s, s)`` grids and ``(last − first, 2)`` shifts on the device."""
        grids, shifts = [], []
        while first < last:
            block = first // self.per_block
            if block != self._block:
                drawn = draw_block(block, self.cells, self.p, self.seed, self.size)
                self._grids, self._shifts = (t.to(self.device) for t in drawn)
                self._block = block
            stop = min(last, (block + 1) * self.per_block)
            start_in, stop_in = first - block * self.per_block, stop - block * self.per_block
            grids.append(self._grids[start_in:stop_in])
            shifts.append(self._shifts[start_in:stop_in])
            first = stop
        return torch.cat(grids), torch.cat(shifts)


@functools.lru_cache(maxsize=32)
def interpolation_rows(cells: int, length: int) -> Tensor:
    """``(⌈L/s⌉, L, s)``: for every shift, the rows of 1-D bilinear up-sampling of ``s`` values
    to ``(s + 1)·⌈L/s⌉`` (``align_corners=False``, as ``F.interpolate``), cropped at the shift.

    Up-sampling is linear and separable, so a mask is ``rows_y[dy] @ grid @ rows_x[dx]ᵀ``:
    the same values as interpolating the whole grid and cropping, without the large
    intermediate or the gather.
    """
    cell = math.ceil(length / cells)
    size = (cells + 1) * cell
    out = torch.arange(size, dtype=torch.float64)
    source = ((out + 0.5) * (cells / size) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=cells - 1)
    high = (low + 1).clamp(max=cells - 1)
    weight = source - low
    full = torch.zeros(size, cells, dtype=torch.float64)
    full[out.long(), low] += 1 - weight
    full[out.long(), high] += weight
    return torch.stack([full[shift : shift + length] for shift in range(cell)]).float()


def upsample_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """``(n, H, W)`` smooth masks: bilinear up-sampling of ``grids`` cropped at ``shifts``."""
    cells = grids.shape[-1]
    rows_y = interpolation_rows(cells, size[0]).to(grids.device)
    rows_x = interpolation_rows(cells, size[1]).to(grids.device)
    return rows_y[shifts[:, 0]] @ grids.float() @ rows_x[shifts[:, 1]].transpose(1, 2)


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
    source = MaskSource(cells, p, seed, size, inputs.device)
    total = n_masks * batch
    with torch.inference_mode():
        evaluator = Evaluator(
            handle, targets, "prob", max_batch_size, precision, progress, batch + total
        )
        inputs = evaluator.layout(inputs)
        evaluator.clean(inputs)
        saliency = torch.zeros(batch, size[0] * size[1], device=inputs.device)
        for chunk in evaluator.chunks(total):
            first, last = chunk.start // batch, (chunk.stop - 1) // batch + 1
            masks = upsample_masks(*source.take(first, last), size)
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
        evaluator.logits,
        forward_passes=1 + n_masks,
        n_masks=n_masks,
        cells=cells,
        p=p,
        seed=seed,
        precision=evaluator.used_precision,
    )
