"""Meaningful perturbation's initial mask: the best blurred centred disc (reference code
``test_circular_masks`` in ``ruthcfong/perturb_explanations`` [V]), or a seeded random one.

Discs of radius 0, 5, …, 170 px (at 224 px; scaled by min(H, W)/224 here), centred, blurred with
σ = 10 px (scaled likewise), are deleted in turn (replaced by the blurred image). With ``s_r``
the target's softmax probability after deleting disc ``r``, ``s_0`` before any deletion and
``s_R`` after the largest, the first radius with ``(s_r − s_R)/(s_0 − s_R) < 0.01`` is chosen
(the largest when none qualifies); the mask starts as ``1 − disc``, resized to the mask grid
by nearest neighbour. Cost: 35 forward passes per image beyond the clean one, in chunks of
``bs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import ModelHandle
from workers.explainers.batching import iter_chunks
from workers.explainers.optimisation.filters import gaussian_blur

REFERENCE_SIZE = 224
RADII = tuple(range(0, 175, 5))
DISC_SIGMA = 10.0
THRESHOLD = 1e-2


def blurred_discs(size: tuple[int, int], device: torch.device) -> Tensor:
    """``(R, 1, H, W)`` centred discs of the scaled :data:`RADII`, blurred, values in [0, 1]."""
    height, width = size
    scale = min(size) / REFERENCE_SIZE
    ys = torch.arange(height, device=device, dtype=torch.float32) - height // 2
    xs = torch.arange(width, device=device, dtype=torch.float32) - width // 2
    squared = ys[:, None] ** 2 + xs[None, :] ** 2
    radii = torch.tensor(RADII, device=device, dtype=torch.float32) * scale
    discs = (squared[None] <= radii[:, None, None] ** 2).float().unsqueeze(1)
    return gaussian_blur(discs, DISC_SIGMA * scale)


def circle_init(
    handle: ModelHandle,
    inputs: Tensor,
    blurred: Tensor,
    targets: Tensor,
    original: Tensor,
    grid: tuple[int, int],
    bs: int,
) -> tuple[Tensor, int]:
    """Initial masks ``(B, 1, h, w)`` and the forward passes spent per image beyond the clean
    one (``original``: the targets' clean probabilities)."""
    batch, size = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    discs = blurred_discs(size, inputs.device)
    n_radii = discs.shape[0]
    scores = torch.empty(batch, n_radii, device=inputs.device)
    total = batch * n_radii
    with torch.inference_mode():
        for chunk in iter_chunks(total, bs):
            index = torch.arange(chunk.start, chunk.stop, device=inputs.device)
            image, radius = index // n_radii, index % n_radii
            keep = 1 - discs[radius]
            x = inputs[image] * keep + blurred[image] * (1 - keep)
            scores[image, radius] = _probability(handle, x, targets[image])
    largest = scores[:, -1:]
    relative = (scores - largest) / (original[:, None] - largest)
    below = relative < THRESHOLD  # NaN (no drop at all) counts as not below, as in the code
    first = torch.where(below.any(dim=1), below.float().argmax(dim=1), n_radii - 1)
    masks = F.interpolate(1 - discs[first], size=grid, mode="nearest")
    return masks.clone(), n_radii


def initial_masks(
    handle: ModelHandle,
    inputs: Tensor,
    blurred: Tensor,
    targets: Tensor,
    original: Tensor,
    init: str,
    grid: tuple[int, int],
    seed: int,
    bs: int,
) -> tuple[Tensor, int]:
    """Starting masks ``(B, 1, h, w)`` (``circle`` or ``random``) and forwards spent per image
    beyond the clean pass (``original``: the targets' clean probabilities).

    ``random`` is one uniform draw from ``seed``, the same for every image, so an image's
    result does not depend on the rest of its group.
    """
    if init == "circle":
        return circle_init(handle, inputs, blurred, targets, original, grid, bs)
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        draw = torch.rand(1, 1, *grid, generator=generator).to(inputs.device)
        return draw.expand(inputs.shape[0], -1, -1, -1).contiguous(), 0
    raise ValueError(f"unknown init {init!r}")


def _probability(handle: ModelHandle, x: Tensor, targets: Tensor) -> Tensor:
    """Softmax probability of each row's target."""
    probs = handle.evaluate(x).softmax(dim=1)
    return probs.gather(1, targets.view(-1, 1))[:, 0]
