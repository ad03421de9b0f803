"""Reading a layer's output as a spatial map ``(B, C, h, w)``, whatever its layout.

CAM methods weight a layer's channels and sum them over its spatial grid, so they need to know
where the grid is. Three layouts occur in image classifiers:

* ``nchw`` — convolution maps ``(B, C, h, w)`` (ResNet, VGG, DenseNet, EfficientNet, ...);
* ``nhwc`` — channels-last maps ``(B, h, w, C)`` (Swin's stages and norm, ConvNeXt-V2 and
  MaxViT internals): read as ``(B, h, w, C)`` they are permuted, not taken as ``h`` channels
  on an ``w × C`` grid;
* ``tokens`` — a vision transformer's sequence ``(B, N, D)`` (ViT, DeiT, BEiT): the class,
  distillation and register tokens in front are dropped and the ``h·w`` patch tokens laid out
  on their grid, the embedding dimension acting as channels.

The layout is recognised from the output's shape and the model's input size, not from layer
names: a grid is a grid when its cells have the same stride along both image axes (``H / h ≈
W / w``). For tokens, the number of leading non-patch tokens comes from the model's own
configuration where it has one (timm's ``num_prefix_tokens``; torchvision's ViT has one class
token) and from the shape otherwise. An output that fits none of them (pooled features, a
sequence that is not a patch grid) gets an :class:`ExplainerError` naming its shape, rather
than a map that means nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from workers.explainers.base import ExplainerError

MAX_PREFIX_TOKENS = 16
"""Most leading non-patch tokens tried when the model does not say (class + registers)."""
STRIDE_TOLERANCE = 0.15
"""Relative difference allowed between the vertical and the horizontal stride of a grid."""


@dataclass(frozen=True)
class Layout:
    """How one layer output holds its spatial grid."""

    kind: str
    """``nchw``, ``nhwc`` or ``tokens``."""
    grid: tuple[int, int]
    prefix: int = 0
    """Leading tokens that are not patches (``tokens`` only)."""

    def to_map(self, output: Tensor) -> Tensor:
        """``output`` as ``(B, C, h, w)`` (a view where the layout allows)."""
        if self.kind == "nchw":
            return output
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        patches = output[:, self.prefix :, :]
        h, w = self.grid
        return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], h, w)

    def describe(self) -> str:
        """A short human description, for the metadata."""
        h, w = self.grid
        if self.kind == "tokens":
            return f"tokens {h}x{w}" + (f" (+{self.prefix} dropped)" if self.prefix else "")
        return f"{self.kind} {h}x{w}"


def _same_stride(input_size: tuple[int, int], h: int, w: int) -> bool:
    """Whether an ``h × w`` grid covers the image with equal strides along both axes."""
    if h < 2 or w < 2:
        return False
    along_h, along_w = input_size[0] / h, input_size[1] / w
    if along_h < 1 or along_w < 1:
        return False
    return abs(along_h - along_w) <= STRIDE_TOLERANCE * max(along_h, along_w)


def _token_grid(count: int, input_size: tuple[int, int], prefix: int) -> tuple[int, int] | None:
    """The patch grid of ``count − prefix`` tokens with the image's aspect ratio, if any."""
    patches = count - prefix
    if patches < 4:
        return None
    ratio = input_size[1] / input_size[0]
    h = max(1, round(math.sqrt(patches / ratio)))
    for candidate in (h, h - 1, h + 1):
        if candidate >= 2 and patches % candidate == 0:
            w = patches // candidate
            if _same_stride(input_size, candidate, w):
                return candidate, w
    return None


def prefix_tokens(model: nn.Module) -> int | None:
    """Leading non-patch tokens of a transformer, from its configuration (None: unknown)."""
    count = getattr(model, "num_prefix_tokens", None)  # timm
    if isinstance(count, int):
        return count
    if hasattr(model, "class_token") and hasattr(model, "patch_size"):  # torchvision ViT
        return 1
    return None


def infer_layout(
    shape: tuple[int, ...], input_size: tuple[int, int], prefix: int | None = None
) -> Layout | None:
    """The layout of an output of ``shape`` for an ``input_size`` image, or None."""
    if len(shape) == 4:
        _, a, b, c = shape
        if _same_stride(input_size, b, c):
            return Layout("nchw", (b, c))
        if _same_stride(input_size, a, b):
            return Layout("nhwc", (a, b))
        return None
    if len(shape) == 3:
        count = shape[1]
        known = [prefix] if prefix is not None else []  # the model's own count first
        for leading in [*known, *range(min(MAX_PREFIX_TOKENS, count) + 1)]:
            grid = _token_grid(count, input_size, leading)
            if grid is not None:
                return Layout("tokens", grid, leading)
    return None


def spatial_view(
    name: str, output: Tensor, input_size: tuple[int, int], model: nn.Module
) -> tuple[Tensor, Layout]:
    """``output`` of layer ``name`` as ``(B, C, h, w)`` and its layout; else ExplainerError."""
    layout = infer_layout(tuple(output.shape), input_size, prefix_tokens(model))
    if layout is None and output.dim() == 4 and 1 in tuple(output.shape[-2:]):
        raise ExplainerError(
            f"layer {name!r} outputs shape {tuple(output.shape)}: a map with a single row or "
            f"column at the {input_size[0]}x{input_size[1]} input (after the global pooling, "
            "or an input too small for this layer): choose an earlier layer"
        )
    if layout is None:
        raise ExplainerError(
            f"layer {name!r} outputs shape {tuple(output.shape)}, which cannot be read as a "
            f"spatial map of the {input_size[0]}x{input_size[1]} input (neither (B, C, h, w), "
            "(B, h, w, C) nor transformer tokens on a patch grid): choose a layer before the "
            "global pooling"
        )
    return layout.to_map(output), layout
