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


RESIDUAL_WIDTHS = (24, 48, 96, 128)
RESIDUAL_LAYER = "layer4"


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 projection) shortcut, as in ResNet."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResidualShapesNet(nn.Module):
    """The second evaluation model: a small ResNet (one block per stage), 112 → 7.

    ``stem`` (conv 3→24 stride 2, max-pool: 112 → 28), ``layer1``–``layer4`` (24, 48, 96, 128
    channels; strides 1, 2, 2, 1: 28 → 7), global average pooling, ``fc``. Unlike the demo
    model it has residual additions, a max-pool in the stem and a 7×7 last map (a ResNet's
    layout at 224 px).
    """

    def __init__(
        self, num_classes: int = 5, widths: tuple[int, ...] = RESIDUAL_WIDTHS, stem_stride: int = 2
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        kernel = 2 * stem_stride + 1  # 5 at stride 2 (112 px), 9 at stride 4 (224 px)
        self.stem = nn.Sequential(
            nn.Conv2d(3, w1, kernel, stride=stem_stride, padding=stem_stride, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.layer1 = BasicBlock(w1, w1, 1)
        self.layer2 = BasicBlock(w1, w2, 2)
        self.layer3 = BasicBlock(w2, w3, 2)
        self.layer4 = BasicBlock(w3, w4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of normalised inputs ``(B, 3, H, W)``."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


def build_residual(num_classes: int = 5) -> ResidualShapesNet:
    """Factory of the second evaluation model (``benchmarks/quality/models.toml``)."""
    return ResidualShapesNet(num_classes=num_classes)


def build_residual224(num_classes: int = 5) -> ResidualShapesNet:
    """Factory of the third evaluation model: the same network for 224 px inputs, its stem
    convolution 9×9 with stride 4 (224 → 56 → 28 after the max-pool), so that every later layer
    sees what it sees at 112 px and the last map is 7×7."""
    return ResidualShapesNet(num_classes=num_classes, stem_stride=4)
