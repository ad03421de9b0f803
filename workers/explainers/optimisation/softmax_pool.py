"""Softmax pooling of kernel-weighted grid parameters, with a hand-written backward.

For patches ``P`` ``(N, S, gh, gw)`` (each grid cell's ``S`` neighbouring parameters) and a
kernel ``K`` ``(S, step, step)`` (their weights at each pixel of a cell), every pixel gets

    w_s = P_s · K_s,   out = Σ_s w_s e^{c·w_s} / Σ_s e^{c·w_s}          (c = coldness)
    ∂out/∂w_s = softmax_s(c·w) · (1 + c·(w_s − out))

The ``(N, S, gh, step, gw, step)`` intermediate is large (81 values a pixel at TorchRay's
defaults) and plain autograd streams it through memory some twenty times. Here forward and
backward go through it a band of cell rows at a time (sized to stay in cache on a CPU, one
band on a GPU) and keep only ``out``, the per-pixel maximum and the softmax normaliser, so
the backward recomputes ``w`` instead of storing it: about 3-4× faster on a CPU, and far less
memory. Same values as the autograd expression up to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

BAND_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
"""Elements of the intermediate per band (others: as CUDA)."""


def softmax_pool(patches: Tensor, kernel: Tensor, coldness: float) -> Tensor:
    """``(N, gh, step, gw, step)`` pooled values (reshape to ``(N, gh·step, gw·step)``).

    ``patches`` ``(N, S, gh, gw)``, ``kernel`` ``(1, S, 1, step, 1, step)``.
    """
    n, s, _, gw = patches.shape
    step = kernel.shape[-1]
    budget = BAND_ELEMENTS.get(patches.device.type, BAND_ELEMENTS["cuda"])
    band = max(1, budget // max(1, n * s * step * gw * step))
    return _SoftmaxPool.apply(patches, kernel, coldness, band)


class _SoftmaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, patches: Tensor, kernel: Tensor, coldness: float, band: int) -> Tensor:
        n, _, rows, gw = patches.shape
        step = kernel.shape[-1]
        out = patches.new_empty(n, rows, step, gw, step)
        top, norm = torch.empty_like(out), torch.empty_like(out)
        for start in range(0, rows, band):
            part = slice(start, min(rows, start + band))
            w = patches[:, :, part, None, :, None] * kernel
            peak = w.amax(dim=1, keepdim=True)
            e = (w - peak).mul_(coldness).exp_()
            z = e.sum(dim=1)
            out[:, part] = e.mul_(w).sum(dim=1).div_(z)
            top[:, part], norm[:, part] = peak[:, 0], z
        ctx.save_for_backward(patches, kernel, out, top, norm)
        ctx.coldness, ctx.band = coldness, band
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        patches, kernel, out, top, norm = ctx.saved_tensors
        coldness, band = ctx.coldness, ctx.band
        grad_patches = torch.empty_like(patches)
        for start in range(0, patches.shape[2], band):
            part = slice(start, min(patches.shape[2], start + band))
            w = patches[:, :, part, None, :, None] * kernel
            soft = (w - top[:, None, part]).mul_(coldness).exp_().div_(norm[:, None, part])
            slope = (w - out[:, None, part]).mul_(coldness).add_(1)
            soft.mul_(slope).mul_(grad[:, None, part]).mul_(kernel)
            grad_patches[:, :, part] = soft.sum(dim=(3, 5))
        return grad_patches, None, None, None
