"""The demo model: a small CNN that names the shape in a 112×112 synthetic scene.

Conv–BatchNorm–ReLU blocks, global average pooling and one linear layer, so that every
method of the service applies (Grad-CAM family on ``features.<i>``, LRP through plain
conv/BN/ReLU/linear layers, perturbation methods on the whole input)::

    features.0  conv 3→16, stride 2      112 → 56
    features.1  conv 16→32, stride 2      56 → 28
    features.2  conv 32→48                28
    features.3  max-pool 2                28 → 14
    features.4  conv 48→64                14
    features.5  conv 64→96                14   (default CAM layer: the last spatial map)
    pool        global average pool
    classifier  linear 96→classes

The receptive field of ``features.5`` is 51 pixels, about the size of the largest shapes.
"""

from __future__ import annotations

from torch import Tensor, nn

WIDTHS = (16, 32, 48, 64, 96)
DEFAULT_LAYER = "features.5"


def conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution (no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    )


class ShapesNet(nn.Module):
    """The demo classifier (see the module docstring for its layers)."""

    def __init__(self, num_classes: int = 5, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            conv_block(3, w0, stride=2),
            conv_block(w0, w1, stride=2),
            conv_block(w1, w2),
            nn.MaxPool2d(2),
            conv_block(w2, w3),
            conv_block(w3, w4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of normalised inputs ``(B, 3, H, W)``."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build(num_classes: int = 5) -> ShapesNet:
    """The factory named in models.toml (``factory = "workers.demo.net:build"``)."""
    return ShapesNet(num_classes=num_classes)
