"""Tiny models with known answers for the perturbation tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.explainers.base import ModelHandle

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
"""Normalisation that makes model-input space equal display space."""


class LinearModel(nn.Module):
    """``logit_k = Σ_{c,u,v} W_k[c, u, v] · x[c, u, v]`` for ``classes`` classes."""

    def __init__(self, size: int, classes: int = 3, seed: int = 0, positive: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(classes, 3, size, size, generator=generator)
        self.weight = nn.Parameter(weight.abs() if positive else weight, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)``."""
        return torch.einsum("bchw,kchw->bk", x, self.weight)


class RegionModel(nn.Module):
    """Two classes; class 0's logit is ``gain · (mean of channel 0 over the region) − shift``.

    ``region``: an ``(H, W)`` bool mask. Nothing outside it can change the output.
    """

    def __init__(self, region: Tensor, gain: float = 8.0, shift: float = 4.0):
        super().__init__()
        weight = region.float() / region.float().sum()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.gain = gain
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 2)``."""
        value = (x[:, 0] * self.weight).sum(dim=(1, 2)) * self.gain - self.shift
        return torch.stack([value, torch.zeros_like(value)], dim=1)


class TinyConvNet(nn.Module):
    """A small random CNN: batch-size invariance is only meaningful with real kernels."""

    def __init__(self, classes: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(8 * 16, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)``."""
        return self.head(self.features(x).flatten(1))


def handle_for(model: nn.Module, size: int, identity: bool = True) -> ModelHandle:
    """A handle over ``model`` (eval mode) for square inputs of ``size`` px."""
    norm = IDENTITY if identity else {}
    return ModelHandle(name="test", model=model.eval(), input_size=(size, size), **norm)


def box_mask(size: int, box: tuple[int, int, int, int]) -> Tensor:
    """``(size, size)`` bool, True inside ``box``."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[box[0] : box[1], box[2] : box[3]] = True
    return mask


def block_image(size: int, box: tuple[int, int, int, int]) -> Tensor:
    """``(1, 3, size, size)`` in [0, 1]: four coloured quadrants and a bright red ``box``.

    Flat colours make superpixels follow the drawn regions.
    """
    image = torch.empty(3, size, size)
    half = size // 2
    colours = [(0.2, 0.5, 0.8), (0.7, 0.7, 0.2), (0.3, 0.8, 0.3), (0.6, 0.3, 0.6)]
    for index, (r0, c0) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
        image[:, r0 : r0 + half, c0 : c0 + half] = torch.tensor(colours[index])[:, None, None]
    image[:, box[0] : box[1], box[2] : box[3]] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return image[None]
