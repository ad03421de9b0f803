"""Model factories that the zoo tests name in their models files (``tests.zoo.factories:...``)."""

from __future__ import annotations

from torch import Tensor, nn


class TinyNet(nn.Module):
    """Conv–ReLU–pool–linear on 3-channel inputs."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.head(self.pool(self.features(x)).flatten(1))


def tiny(num_classes: int = 3) -> TinyNet:
    """A :class:`TinyNet`."""
    return TinyNet(num_classes)


def tiny_frozen_features() -> TinyNet:
    """A :class:`TinyNet` in training mode whose conv does not require gradients."""
    model = TinyNet()
    model.features[0].weight.requires_grad_(False)
    return model.train()


def not_a_module() -> str:
    """A broken factory."""
    return "not a module"


def image_output() -> nn.Module:
    """A model that does not return logits."""
    return nn.Conv2d(3, 2, 1)


NOT_CALLABLE = 3
