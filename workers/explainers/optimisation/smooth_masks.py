"""Extremal perturbation's building blocks: smooth masks and the blur-pyramid perturbation.

Smooth mask (Fong, Patrick & Vedaldi 2019, §3.3; kernel and pooling as in TorchRay [V]):
parameters ``p_i ∈ [0, 1]`` sit on a coarse grid of pitch ``step`` pixels; the mask at pixel
``u`` is a smooth maximum over the grid points ``i`` near ``u`` of ``w_i(u) = p_i · k(‖u −
c_i‖ / σ)`` with the flat-topped radial kernel ``k(z) = exp(−2·max(z − ½, 0)²)``, pooled as
``m(u) = Σ_i w_i softmax_i(20·w)`` ("softmax pooling", coldness 20), then clamped to [0, 1].
Grid points lie within ``r = 1 + ⌈σ/step⌉`` cells of the pixel's own (TorchRay's radius);
points outside the grid count as 0. Our grid points sit at cell centres (TorchRay's at cell
corners, from pixel 0) and we build the mask on the image only (TorchRay adds a σ margin).

Perturbation: ``L`` copies of the image blurred with ``σ_l = σ_max·(1 − l/(L−1))``, ``l =
0 … L−1`` (level 0 most blurred, level ``L−1`` the image itself). A mask value ``m`` picks the
level ``m·(L−1)``, linearly interpolated between the two nearest levels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from workers.explainers.optimisation.filters import gaussian_blur
from workers.explainers.optimisation.softmax_pool import softmax_pool

COLDNESS = 20.0


class SmoothMaskGenerator:
    """Grid parameters ``(N, 1, gh, gw)`` -> smooth masks ``(N, 1, H, W)`` in [0, 1].

    The grid has ``⌈H/step⌉ × ⌈W/step⌉`` points, one at the centre of each ``step × step``
    cell of a canvas that covers the image (centred on it when ``H`` is not a multiple of
    ``step``). Every pixel sees the same ``(2r+1)²`` neighbours at the same distances as any
    other pixel at the same place in its cell, so the kernel is ``(2r+1)² × step × step``
    and the pooling a broadcast product (:func:`.softmax_pool.softmax_pool`), with no gather.
    """

    def __init__(
        self,
        size: tuple[int, int],
        step: int,
        sigma: float,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        height, width = size
        self.size, self.step = size, step
        self.grid = (math.ceil(height / step), math.ceil(width / step))
        self.radius = 1 + math.ceil(sigma / step)
        self.crop = ((self.grid[0] * step - height) // 2, (self.grid[1] * step - width) // 2)
        span = 2 * self.radius + 1
        # Offset of a pixel (a within its cell) from the grid point `shift` cells away.
        within = torch.arange(step, device=device, dtype=dtype) - (step - 1) / 2
        shifts = torch.arange(-self.radius, self.radius + 1, device=device, dtype=dtype)
        delta = within[None, :] - shifts[:, None] * step  # (span, step)
        dist = torch.sqrt(delta[:, None, :, None] ** 2 + delta[None, :, None, :] ** 2)
        kernel = torch.exp(-2 * (dist / sigma - 0.5).clamp(min=0) ** 2)  # (dy, dx, a, b)
        self.kernel = kernel.reshape(1, span * span, 1, step, 1, step)

    def __call__(self, params: Tensor) -> Tensor:
        """The masks of ``params`` (differentiable)."""
        n = params.shape[0]
        rows, cols = self.grid
        pooled = softmax_pool(params, self.kernel, COLDNESS, self.radius)
        canvas = pooled.reshape(n, 1, rows * self.step, cols * self.step)
        top, left = self.crop
        height, width = self.size
        return canvas[:, :, top : top + height, left : left + width].clamp(0, 1)


class BlurPyramid:
    """``L`` blur levels of each image; :meth:`apply` perturbs rows by their masks."""

    def __init__(self, inputs: Tensor, levels: int, max_blur: float) -> None:
        if levels < 2:
            raise ValueError("the blur pyramid needs at least 2 levels")
        self.levels = levels
        sigmas = [max_blur * (1 - level / (levels - 1)) for level in range(levels)]
        pyramid = torch.stack([gaussian_blur(inputs, s, padding="zeros") for s in sigmas], 1)
        batch, _, channels, height, width = pyramid.shape
        # Level l and its difference to level l+1, flattened for gather: (B·(L−1), C, H·W).
        base = pyramid[:, :-1].reshape(batch * (levels - 1), channels, height * width)
        delta = (pyramid[:, 1:] - pyramid[:, :-1]).reshape_as(base)
        self.base, self.delta = base, delta
        self.shape = (channels, height, width)

    def apply(self, masks: Tensor, images: Tensor) -> Tensor:
        """Perturbed inputs ``(N, C, H, W)`` for masks ``(N, 1, H, W)`` of images ``(N,)``.

        ``m = 1`` keeps the image, ``m = 0`` takes the most blurred level.
        """
        channels, height, width = self.shape
        level = masks.flatten(1) * (self.levels - 1)  # (N, H·W)
        k = level.detach().floor().clamp(0, self.levels - 2)
        frac = (level - k).unsqueeze(1)  # (N, 1, H·W)
        index = (images[:, None] * (self.levels - 1) + k.long()).unsqueeze(1)
        index = index.expand(-1, channels, -1)
        low = torch.gather(self.base, 0, index)
        step = torch.gather(self.delta, 0, index)
        return (low + frac * step).view(-1, channels, height, width)


def area_penalty(masks: Tensor, areas: Tensor) -> Tensor:
    """``mean((sort(m) − r_a)²)`` per row, ``r_a`` = ``⌊n(1−a)⌋`` zeros then ones.

    ``masks`` ``(N, 1, H, W)``, ``areas`` ``(N,)`` -> ``(N,)``; zero iff exactly a fraction
    ``a`` of the pixels is 1 and the rest 0.
    """
    values = masks.flatten(1).sort(dim=1).values
    count = values.shape[1]
    # TorchRay: int(max_area * (1 - a)); the 1e-6 keeps float32 areas from losing a pixel.
    zeros = torch.floor(count * (1 - areas.double()) + 1e-6).long()
    positions = torch.arange(count, device=masks.device)
    reference = (positions[None, :] >= zeros[:, None]).to(values.dtype)
    return ((values - reference) ** 2).mean(dim=1)
