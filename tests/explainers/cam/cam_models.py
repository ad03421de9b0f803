"""Tiny models and handles for the CAM tests (CPU, 32 px, random but seeded weights)."""

from __future__ import annotations

import torch
from torch import nn

from workers.explainers.base import ModelHandle

SIZE = 32
CLASSES = 5


class GapNet(nn.Module):
    """Convolutions, then global average pooling and one linear layer (the CAM architecture)."""

    def __init__(self, bias: bool = True, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=bias),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 12, 3, padding=1, stride=2, bias=bias),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(12, 16, 3, padding=1, bias=bias),
            nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, CLASSES, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, CLASSES)``."""
        return self.fc(self.pool(self.features(x)).flatten(1))


def gap_net(seed: int = 0, **kwargs: bool) -> GapNet:
    """A seeded :class:`GapNet` in eval mode."""
    torch.manual_seed(seed)
    return GapNet(**kwargs).eval()


def make_handle(
    model: nn.Module | None = None, default_layer: str | None = "features.5"
) -> ModelHandle:
    """A handle for ``model`` (default: a seeded GapNet) at 32 px."""
    return ModelHandle(
        name="tiny",
        model=gap_net() if model is None else model,
        input_size=(SIZE, SIZE),
        labels=tuple(f"c{i}" for i in range(CLASSES)),
        default_layer=default_layer,
    )


def images(n: int, seed: int = 1) -> torch.Tensor:
    """``n`` random normalised inputs ``(n, 3, 32, 32)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=generator)
