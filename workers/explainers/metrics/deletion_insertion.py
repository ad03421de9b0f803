"""Deletion and insertion (Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018, §4.1; reference code ``eclique/RISE``
``evaluation.py``).

Pixels are ranked by decreasing saliency (the map bilinearly resized to the input first). A
curve has ``n + 1`` points, ``n = ⌈HW / step⌉``: state ``k`` has the ``k · step`` most salient
pixels (all channels) moved from a start image to an end image,

    x_k = where(rank < k · step, end, start),   s_k = softmax(f(x_k))_c,

and the score is the trapezoid area under ``s_k`` over ``k / n ∈ [0, 1]``.

* Deletion: start = the input, end = 0 in model-input space (the dataset-mean colour). A
  faithful map makes the probability collapse early: lower is better.
* Insertion: start = the input blurred by an 11 × 11 Gaussian with σ = 5 (zero padding, in
  model-input space, as in the reference code), end = the input: higher is better.

Defaults: ``step = ⌈HW / 224⌉`` pixels, i.e. 224 steps whatever the input size (the paper's
224 pixels per step at 224 × 224). Differences from the reference code: the class is the
given target (the reference takes the class predicted on the original image, which is the
target when none is given); the blur kernel is a normalised truncated Gaussian (the reference
filters a delta with SciPy, nearly the same numbers); ties in saliency are broken by a seeded
random order shared by every row (the reference: whatever ``argsort`` does), so a constant map
scores like a random ranking — the chance value. Cost: ``n + 1`` forward passes per image per
metric, filled to ``max_batch_size`` across images and steps, under ``torch.inference_mode()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from app.contract.metrics import CURVE_STEPS
from workers.explainers.base import ModelHandle
from workers.explainers.batching import iter_chunks
from workers.explainers.metrics.auc import trapezoid_auc
from workers.explainers.postprocess import upsample

DEFAULT_STEPS = CURVE_STEPS
"""Steps of a curve when ``step`` is not given (the RISE paper's count at 224 × 224)."""

BLUR_SIZE = 11
BLUR_SIGMA = 5.0


def default_step(size: tuple[int, int], steps: int = DEFAULT_STEPS) -> int:
    """Pixels moved per step so that a curve has (at most) ``steps`` steps."""
    return max(1, math.ceil(size[0] * size[1] / steps))


def resolve_step(step: int | None, size: tuple[int, int]) -> int:
    """``step`` checked, or the default for ``size`` when None."""
    if step is None:
        return default_step(size)
    if step < 1:
        raise ValueError(f"step must be at least 1 pixel, got {step}")
    return step


def blur(inputs: Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> Tensor:
    """Per-channel Gaussian blur with zero padding (the insertion substrate)."""
    offsets = torch.arange(size, device=inputs.device, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(inputs.dtype)
    channels = inputs.shape[1]
    rows = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    out = F.conv2d(inputs, rows, padding=(size // 2, 0), groups=channels)
    return F.conv2d(out, cols, padding=(0, size // 2), groups=channels)


def saliency_ranks(saliency: Tensor, size: tuple[int, int], seed: int = 0) -> Tensor:
    """``(B, H·W)`` rank of every pixel, 0 = most salient; ties in a seeded random order.

    The random order is drawn once from ``seed`` and shared by every row, so a row's ranks do
    not depend on the other rows. NaN counts as the least salient value.
    """
    maps = upsample(saliency.float(), size).flatten(1)
    maps = torch.nan_to_num(maps, nan=-math.inf)
    pixels = maps.shape[1]
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(pixels, generator=generator).to(maps.device)
    order = shuffle[torch.argsort(maps[:, shuffle], dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(pixels, device=maps.device).expand_as(order))
    return ranks


def transfer_curves(
    handle: ModelHandle,
    start: Tensor,
    end: Tensor,
    targets: Tensor,
    ranks: Tensor,
    step: int,
    max_batch_size: int = 64,
) -> Tensor:
    """``(B, n + 1)`` target probabilities as pixels move from ``start`` to ``end`` by rank."""
    batch, _, height, width = start.shape
    points = math.ceil(height * width / step) + 1
    curves = torch.empty(batch, points, device=start.device)
    with torch.inference_mode():
        for chunk in iter_chunks(batch * points, max_batch_size):
            index = torch.arange(chunk.start, chunk.stop, device=start.device)
            image, k = index // points, index % points
            moved = (ranks[image] < (k * step)[:, None]).view(-1, 1, height, width)
            states = torch.where(moved, end[image], start[image])
            probs = handle.evaluate(states).softmax(dim=1)
            curves[image, k] = probs.gather(1, targets[image].view(-1, 1))[:, 0]
    return curves


def deletion_curves(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    step: int | None = None,
    seed: int = 0,
    max_batch_size: int = 64,
) -> Tensor:
    """``(B, n + 1)`` target probability as the most salient pixels are set to 0."""
    size = (inputs.shape[-2], inputs.shape[-1])
    ranks = saliency_ranks(saliency, size, seed)
    step = resolve_step(step, size)
    return transfer_curves(
        handle, inputs, torch.zeros_like(inputs), targets, ranks, step, max_batch_size
    )


def insertion_curves(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    step: int | None = None,
    seed: int = 0,
    max_batch_size: int = 64,
) -> Tensor:
    """``(B, n + 1)`` target probability as the most salient pixels return to a blurred copy."""
    size = (inputs.shape[-2], inputs.shape[-1])
    ranks = saliency_ranks(saliency, size, seed)
    step = resolve_step(step, size)
    with torch.inference_mode():
        blurred = blur(inputs)
    return transfer_curves(handle, blurred, inputs, targets, ranks, step, max_batch_size)


def deletion_auc(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    step: int | None = None,
    seed: int = 0,
    max_batch_size: int = 64,
) -> Tensor:
    """``(B,)`` deletion AUC (lower is better)."""
    curves = deletion_curves(
        handle, inputs, targets, saliency, step=step, seed=seed, max_batch_size=max_batch_size
    )
    return trapezoid_auc(curves)


def insertion_auc(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    saliency: Tensor,
    *,
    step: int | None = None,
    seed: int = 0,
    max_batch_size: int = 64,
) -> Tensor:
    """``(B,)`` insertion AUC (higher is better)."""
    curves = insertion_curves(
        handle, inputs, targets, saliency, step=step, seed=seed, max_batch_size=max_batch_size
    )
    return trapezoid_auc(curves)
