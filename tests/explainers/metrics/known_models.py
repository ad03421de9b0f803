"""Small models whose answers are known in closed form, for the metric tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.explainers.base import ModelHandle

SIZE = 32


class MaskFractionModel(nn.Module):
    """Two classes; ``p(class 1) = q`` exactly, ``q`` = mean of channel 0 over a fixed region.

    With an image that is 1 on the region (channel 0), deleting region pixels lowers ``q``
    linearly and nothing else matters, so every deletion/insertion curve is known.
    """

    def __init__(self, region: Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``log([1 − q, q])`` so that the softmax is ``[1 − q, q]``."""
        q = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        q = q.clamp(0, 1) * self.scale
        return torch.stack([(1 - q).clamp(min=1e-12).log(), q.clamp(min=1e-12).log()], dim=1)


def square_region(top: int, left: int, side: int, size: int = SIZE) -> Tensor:
    """``(size, size)`` bool, True on a ``side``-pixel square at (top, left)."""
    region = torch.zeros(size, size, dtype=torch.bool)
    region[top : top + side, left : left + side] = True
    return region


def handle_for(model: nn.Module, size: int = SIZE) -> ModelHandle:
    """A handle with identity normalisation."""
    return ModelHandle(
        name="test",
        model=model.eval(),
        input_size=(size, size),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
