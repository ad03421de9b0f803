"""Tiny models, handles and a Zennit reference for the propagation tests (CPU, seeded)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from zennit import composites as zc
from zennit import rules as zr
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer
from zennit.types import AvgPool, Convolution

from workers.explainers.base import ModelHandle

SIZE = 32
CLASSES = 5


def randomise_norms(model: nn.Module, eps: float = 1e-5) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters (some scales < 0)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 2.5 - 1)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
                module.eps = eps
    return model


def plain_cnn(bias: bool = True) -> nn.Module:
    """Conv / ReLU / max pooling, global average pooling, two dense layers (no batch norm)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1, bias=bias),
        nn.ReLU(inplace=True),
        nn.Conv2d(12, 16, 3, padding=1, stride=2, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 16, bias=bias),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(16, CLASSES, bias=bias),
    ).eval()


def bn_cnn(eps: float = 1e-5) -> nn.Module:
    """Conv / batch norm / ReLU blocks (a VGG-like sequential CNN)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, CLASSES),
    )
    return randomise_norms(model, eps).eval()


def small_resnet(block: str = "basic", eps: float = 1e-5) -> nn.Module:
    """A torchvision ResNet with one block per stage (residual additions, down-samples)."""
    torch.manual_seed(0)
    kind = BasicBlock if block == "basic" else Bottleneck
    model = ResNet(kind, [1, 1, 1, 1], num_classes=CLASSES)
    return randomise_norms(model, eps).eval()


def handle_for(model: nn.Module, name: str = "tiny") -> ModelHandle:
    """A handle with ImageNet normalisation and a 32-px input."""
    return ModelHandle(name=name, model=model, input_size=(SIZE, SIZE))


def images(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` random inputs in model-input space."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=generator).to(dtype)


def zennit_relevance(
    model: nn.Module, inputs: Tensor, targets: Tensor, composite: str, handle: ModelHandle
) -> Tensor:
    """Zennit's ``Gradient`` attributor with the composite and the architecture's canonizer.

    ``Norm`` (sums, average pooling) gets a negligible stabiliser, which is how our rules treat
    those layers; with batch norms of ``eps = 0`` Zennit's merge is then exact as well.
    """
    norm = [(Sum, zr.Norm(stabilizer=1e-300)), (AvgPool, zr.Norm(stabilizer=1e-300))]
    mean = torch.tensor(handle.mean, dtype=inputs.dtype).view(1, -1, 1, 1)
    std = torch.tensor(handle.std, dtype=inputs.dtype).view(1, -1, 1, 1)
    builders: dict[str, Any] = {
        "epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(layer_map=norm),
        "epsilon_plus": lambda: zc.EpsilonPlus(layer_map=norm),
        "epsilon_alpha2_beta1_flat": lambda: zc.EpsilonAlpha2Beta1Flat(layer_map=norm),
        "epsilon_alpha2_beta1": lambda: zc.EpsilonAlpha2Beta1(layer_map=norm),
        "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(
            low=(0 - mean) / std, high=(1 - mean) / std, layer_map=norm
        ),
        "epsilon": lambda: zc.LayerMapComposite(
            layer_map=[
                *norm,
                *zc.layer_map_base(),
                (Convolution, zr.Epsilon()),
                (nn.Linear, zr.Epsilon()),
            ]
        ),
    }
    composite_ = builders[composite]()
    is_resnet = isinstance(model, ResNet)
    composite_.canonizers = [ResNetCanonizer() if is_resnet else SequentialMergeBatchNorm()]

    def seed(output: Tensor) -> Tensor:
        return F.one_hot(targets, output.shape[1]).to(output) * output

    with Gradient(model, composite_) as attributor:
        _, relevance = attributor(inputs.clone().requires_grad_(True), seed)
    return relevance.detach()


def forward_overrides(model: nn.Module) -> list[str]:
    """Modules whose ``forward`` is replaced by an instance attribute."""
    return [name for name, module in model.named_modules() if "forward" in module.__dict__]
