"""Differentiable image filters shared by the mask-optimisation methods.

All take and return ``(B, C, H, W)`` tensors on the input's device and keep autograd intact
(they are plain convolutions), so a method can differentiate through them w.r.t. a mask.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Padding = Literal["replicate", "zeros"]


def gaussian_kernel1d(sigma: float, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma``, truncated at ``ceil(4σ)``."""
    if sigma <= 0:
        return torch.ones(1, device=device, dtype=dtype)
    radius = max(math.ceil(4 * sigma), 1)
    grid = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: Tensor, sigma: float, *, padding: Padding = "replicate") -> Tensor:
    """Separable Gaussian blur of every channel; ``sigma`` in pixels (0 returns ``x``).

    ``padding="replicate"`` extends the border pixels (PIL's behaviour, any kernel size);
    ``"zeros"`` pads with 0 (TorchRay's ``imsmooth`` default: in model-input space 0 is the
    dataset-mean colour, so the border fades toward it).
    """
    if sigma <= 0:
        return x
    kernel = gaussian_kernel1d(sigma, device=x.device, dtype=x.dtype)
    radius = kernel.numel() // 2
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    if padding == "replicate":
        padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        return F.conv2d(F.conv2d(padded, rows, groups=channels), cols, groups=channels)
    out = F.conv2d(x, rows, padding=(radius, 0), groups=channels)
    return F.conv2d(out, cols, padding=(0, radius), groups=channels)


def total_variation(mask: Tensor, beta: float) -> Tensor:
    """``TV_β(m) = Σ_uv ((m[u+1,v] − m[u,v])² + (m[u,v+1] − m[u,v])²)^(β/2)`` per row.

    Forward differences, zero past the last row/column (the convention of the reference code
    ``ruthcfong/perturb_explanations``); ``mask`` is ``(B, 1, h, w)``, the result ``(B,)``.
    Where both differences are 0 the term is 0 with gradient 0 (finite also for ``β < 2``).
    """
    down = F.pad(mask[..., 1:, :] - mask[..., :-1, :], (0, 0, 0, 1))
    right = F.pad(mask[..., :, 1:] - mask[..., :, :-1], (0, 1, 0, 0))
    squared = down**2 + right**2
    flat = squared == 0
    terms = torch.where(flat, 0.0, torch.where(flat, 1.0, squared).pow(beta / 2))
    return terms.flatten(1).sum(dim=1)


def laplacian_kernel(size: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The high-pass filter of NeuroMask: ``size²−1`` at the centre, −1 elsewhere, ``(1,1,k,k)``."""
    kernel = -torch.ones(size, size, device=device, dtype=dtype)
    kernel[size // 2, size // 2] = size * size - 1
    return kernel.view(1, 1, size, size)
