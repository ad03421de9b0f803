"""Softmax pooling of kernel-weighted grid parameters, with a hand-written backward.

For grid parameters ``(N, 1, gh, gw)``, each grid cell's ``S`` neighbouring parameters ``P``
(``S = (2r + 1)²``) and a kernel ``K`` ``(S, step, step)`` (their weights at each pixel of a
cell), every pixel gets

    w_s = P_s · K_s,   out = Σ_s w_s e^{c·w_s} / Σ_s e^{c·w_s}          (c = coldness)
    ∂out/∂w_s = softmax_s(c·w) · (1 + c·(w_s − out))

The ``(N, S, gh, step, gw, step)`` intermediate is large (81 values a pixel at TorchRay's
defaults; 2025 at ``step = 1, σ = 21``) and plain autograd streams it through memory some
twenty times. Here forward and backward go through it a band of cell rows at a time (sized to
stay in cache on a CPU, ``2²⁶`` elements on a GPU): the neighbours ``P`` of a band are unfolded
there and then (never the whole ``(N, S, gh, gw)``), the backward folds their gradients back
into the parameters band by band, and only ``out``, the per-pixel maximum and the softmax
normaliser are kept, so the backward recomputes ``w`` instead of storing it. Peak memory is
bounded by the band, whatever the step and σ; about 3-4× faster on a CPU than autograd. Same
values as the autograd expression up to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BAND_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
"""Elements of the intermediate per band (others: as CUDA)."""


def softmax_pool(params: Tensor, kernel: Tensor, coldness: float, radius: int) -> Tensor:
    """``(N, gh, step, gw, step)`` pooled values (reshape to ``(N, gh·step, gw·step)``).

    ``params`` ``(N, 1, gh, gw)`` grid parameters (points outside the grid count as 0),
    ``kernel`` ``(1, S, 1, step, 1, step)`` with ``S = (2·radius + 1)²``.
    """
    n, _, _, gw = params.shape
    s, step = kernel.shape[1], kernel.shape[-1]
    budget = BAND_ELEMENTS.get(params.device.type, BAND_ELEMENTS["cuda"])
    per_row = s * step * gw * step  # intermediate elements of one sample's cell row
    samples = max(1, min(n, budget // per_row))
    band = max(1, budget // (samples * per_row))
    return _SoftmaxPool.apply(params, kernel, coldness, band, radius, samples)


def _blocks(n: int, rows: int, samples: int, band: int) -> list[tuple[slice, slice]]:
    """(sample slice, cell-row slice) blocks covering ``n × rows``."""
    return [
        (slice(first, min(n, first + samples)), slice(start, min(rows, start + band)))
        for first in range(0, n, samples)
        for start in range(0, rows, band)
    ]


def _band_patches(padded: Tensor, start: int, stop: int, radius: int) -> Tensor:
    """``(N, S, stop − start, gw)``: each grid cell's ``S`` neighbours, for cell rows
    ``start … stop − 1`` (``padded``: the parameters with ``radius`` zeros around)."""
    span = 2 * radius + 1
    slab = padded[:, :, start : stop + 2 * radius]
    gw = padded.shape[-1] - 2 * radius
    return F.unfold(slab, span).view(padded.shape[0], span * span, stop - start, gw)


class _SoftmaxPool(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        params: Tensor,
        kernel: Tensor,
        coldness: float,
        band: int,
        radius: int,
        samples: int | None = None,
    ) -> Tensor:
        n, _, rows, gw = params.shape
        step = kernel.shape[-1]
        padded = F.pad(params, (radius,) * 4)
        out = params.new_empty(n, rows, step, gw, step)
        top, norm = torch.empty_like(out), torch.empty_like(out)
        for who, part in _blocks(n, rows, samples or n, band):
            patches = _band_patches(padded[who], part.start, part.stop, radius)
            w = patches[:, :, :, None, :, None] * kernel
            peak = w.amax(dim=1, keepdim=True)
            e = (w - peak).mul_(coldness).exp_()
            z = e.sum(dim=1)
            out[who, part] = e.mul_(w).sum(dim=1).div_(z)
            top[who, part], norm[who, part] = peak[:, 0], z
        ctx.save_for_backward(padded, kernel, out, top, norm)
        ctx.coldness, ctx.band, ctx.radius, ctx.samples = coldness, band, radius, samples or n
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        padded, kernel, out, top, norm = ctx.saved_tensors
        coldness, radius = ctx.coldness, ctx.radius
        span = 2 * radius + 1
        n, rows, gw = out.shape[0], out.shape[1], out.shape[3]
        grad_padded = torch.zeros_like(padded)
        for who, part in _blocks(n, rows, ctx.samples, ctx.band):
            patches = _band_patches(padded[who], part.start, part.stop, radius)
            w = patches[:, :, :, None, :, None] * kernel
            soft = (w - top[who, None, part]).mul_(coldness).exp_().div_(norm[who, None, part])
            slope = (w - out[who, None, part]).mul_(coldness).add_(1)
            soft.mul_(slope).mul_(grad[who, None, part]).mul_(kernel)
            count = w.shape[0]
            grad_patches = soft.sum(dim=(3, 5)).reshape(count, span * span, -1)
            height = part.stop - part.start + 2 * radius
            folded = F.fold(grad_patches, (height, gw + 2 * radius), span)
            grad_padded[who, :, part.start : part.stop + 2 * radius] += folded
        grad_params = grad_padded[:, :, radius : radius + rows, radius : radius + gw]
        return grad_params, None, None, None, None, None
