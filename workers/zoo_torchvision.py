"""torchvision classification architectures: building, local-only weights, default CAM layers.

Weights named by a torchvision enum (``weights = "IMAGENET1K_V2"``) are looked up only in the
local torch cache, at ``torch.hub.get_dir()/checkpoints/<file name of the enum's URL>`` (where
``torchvision`` itself would have stored them after a download). They are never downloaded:
``WeightsEnum.get_state_dict`` (which downloads when the file is missing) is not called.
Instead the builder is called with ``weights=None`` and the constructor arguments torchvision's
builder would have set for those weights (``num_classes``, Inception's ``transform_input``...),
and the state dict is read with ``torch.load(weights_only=True)`` and loaded strictly.

Default CAM layers (the module whose output is the last spatial feature map):

==================  ===========================  =========================================
family              default layer                why
==================  ===========================  =========================================
ResNet / ResNeXt /  ``layer4``                   last residual stage (Grad-CAM paper,
Wide ResNet                                      pytorch-grad-cam, TorchCAM)
DenseNet            ``features.norm5``           last module of ``features``; forward then
                                                 applies ``F.relu`` (no module to hook), so
                                                 the map is taken before that ReLU, as
                                                 pytorch-grad-cam (``features[-1]``) does
VGG / AlexNet       last ``nn.ReLU`` of          the last rectified conv map before the
                    ``features``                 final max-pool (``features.29`` for vgg16,
                                                 ``features.42`` for vgg16_bn)
MobileNet v2 / v3,  ``features.<last>``          the last conv block (``features.18`` for
EfficientNet,                                    mobilenet_v2, ``features.12`` for
ConvNeXt                                         mobilenet_v3_small, ``features.8`` for
                                                 efficientnet_b0, ``features.7`` for
                                                 ConvNeXt: the last stage)
MNASNet             ``layers.<last>``            the final ReLU after the 1×1 conv
Inception v3        ``Mixed_7c``                 last Inception block
GoogLeNet           ``inception5b``              last Inception block
RegNet              ``trunk_output``             last stage
ShuffleNet v2       ``conv5``                    last conv block
SqueezeNet          ``features``                 last Fire module
MaxViT              ``blocks.<last>``            last stage, ``(B, C, h, w)`` output
ViT / Swin          none in this table           found at load by a probe backward
                                                 (``layer_choice.py``): a ViT's last-block
                                                 ``ln_1``, a Swin's ``permute``
==================  ===========================  =========================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import get_model_builder, get_model_weights, list_models
from torchvision.models._api import WeightsEnum

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class TorchvisionError(ValueError):
    """A torchvision entry that cannot be built as asked (message is for the operator)."""


def architectures() -> list[str]:
    """Names of torchvision's image-classification architectures."""
    return list_models(module=torchvision.models)


def check_architecture(arch: str) -> None:
    """Raise :class:`TorchvisionError` unless ``arch`` is a classification architecture."""
    if arch not in architectures():
        raise TorchvisionError(
            f"unknown torchvision architecture {arch!r}; known: {', '.join(architectures())}"
        )


def weights_enum(arch: str) -> type[WeightsEnum]:
    """The weights enum class of an architecture (e.g. ``ResNet50_Weights``)."""
    return get_model_weights(arch)


def find_weights(arch: str, name: str) -> WeightsEnum | None:
    """The enum member called ``name`` (``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``
    or ``DEFAULT``), or None when ``name`` is not one of them."""
    enum = weights_enum(arch)
    short = name.removeprefix(enum.__name__ + ".")
    try:
        return enum[short]
    except KeyError:
        return None


def weights_names(arch: str) -> list[str]:
    """The enum member names an entry may give as ``weights`` for ``arch``."""
    return [*weights_enum(arch).__members__.keys()]


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision stores (and this zoo looks for) the file of ``weights``."""
    file_name = Path(urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


@dataclass(frozen=True)
class Preprocessing:
    """What an architecture/weights pair expects as input, and its labels."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...] | None


def preprocessing(arch: str, weights: WeightsEnum | None, model: nn.Module) -> Preprocessing:
    """Input size and normalisation from the weights' transforms (the architecture's
    default weights when ``weights`` is None: its natural input size, e.g. 299 for
    inception_v3, unless the model was built for one size, as ViT is), labels from
    ``weights.meta["categories"]`` (None without weights)."""
    reference = weights if weights is not None else weights_enum(arch).DEFAULT
    keywords: Mapping[str, Any] = getattr(reference.transforms, "keywords", {})
    crop = keywords.get("crop_size", 224)
    if weights is None and isinstance(getattr(model, "image_size", None), int):
        crop = model.image_size
    crop_size = (int(crop[0]), int(crop[-1])) if isinstance(crop, list | tuple) else (crop, crop)
    categories = weights.meta.get("categories") if weights is not None else None
    return Preprocessing(
        input_size=crop_size,
        mean=tuple(float(v) for v in keywords.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in keywords.get("std", IMAGENET_STD)),
        labels=tuple(categories) if categories else None,
    )


def _builder_kwargs(
    arch: str, weights: WeightsEnum | None, loaded: bool, num_classes: int | None
) -> dict[str, Any]:
    """Constructor arguments: those torchvision's builder sets for enum ``weights``, if any.

    ``loaded``: weights (enum or file) will be loaded, so random initialisation is skipped.
    """
    kwargs: dict[str, Any] = {}
    if arch in ("inception_v3", "googlenet"):
        # Loaded weights come with auxiliary heads, dropped after loading (unused in eval).
        kwargs.update(init_weights=not loaded, aux_logits=loaded)
    if arch.startswith("vgg") and loaded:
        kwargs["init_weights"] = False
    if weights is not None:
        if arch in ("inception_v3", "googlenet"):
            kwargs["transform_input"] = True
        if weights.meta.get("categories"):
            kwargs["num_classes"] = len(weights.meta["categories"])
        if arch.startswith("vit_"):
            kwargs["image_size"] = weights.meta["min_size"][0]
        if arch.startswith("maxvit"):
            kwargs["input_size"] = weights.meta["min_size"]
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return kwargs


def _drop_aux_heads(model: nn.Module) -> None:
    """Remove Inception/GoogLeNet auxiliary classifiers (used only in training mode)."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
    for name in ("AuxLogits", "aux1", "aux2"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def _fix_densenet_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename DenseNet's legacy ``norm.1`` keys to ``norm1`` (as torchvision's loader does)."""
    fixed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _DENSENET_OLD_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """A state dict read with ``weights_only=True`` (a ``{"state_dict": ...}`` wrapper is
    unwrapped)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise TorchvisionError(f"weights file {str(path)!r} does not exist") from error
    except Exception as error:  # any unpickling error means a bad file
        raise TorchvisionError(f"cannot read weights file {str(path)!r}: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise TorchvisionError(f"weights file {str(path)!r} does not hold a state dict")
    return dict(loaded)


def load_into(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, optional: tuple[str, ...] = ()
) -> None:
    """Load strictly, except that keys under ``optional`` prefixes may be absent or extra."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise TorchvisionError(f"weights {source} do not fit the model: {error}") from error
    missing = [k for k in result.missing_keys if not k.startswith(optional)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(optional)]
    if missing or unexpected:
        raise TorchvisionError(
            f"weights {source} do not fit the model: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )


def build(
    arch: str,
    weights: WeightsEnum | Path | None,
    num_classes: int | None = None,
) -> nn.Module:
    """An architecture with random (``None``), enum (local cache) or file weights, on CPU.

    ``num_classes`` sets the head size for random or file weights (default 1000); with enum
    weights it must agree with the weights' categories.
    """
    check_architecture(arch)
    enum = weights if isinstance(weights, WeightsEnum) else None
    if enum is not None and num_classes is not None:
        categories = enum.meta.get("categories")
        if categories and len(categories) != num_classes:
            raise TorchvisionError(
                f"num_classes = {num_classes} but {enum!r} has {len(categories)} classes"
            )
    kwargs = _builder_kwargs(arch, enum, weights is not None, num_classes)
    model = get_model_builder(arch)(weights=None, **kwargs)
    if weights is None:
        return model
    if enum is not None:
        path = cached_weights_path(enum)
        if not path.is_file():
            raise TorchvisionError(
                f"weights {enum!r} for {arch} are not in the local torch cache: expected the "
                f"file {str(path)!r} (downloaded from {enum.url}); models are never "
                "downloaded by the worker: place the file there, or set TORCH_HOME"
            )
        source = f"{enum!r} ({path})"
    else:
        path = weights
        source = f"file {str(path)!r}"
    state_dict = load_state_dict_file(path)
    if arch.startswith("densenet"):
        state_dict = _fix_densenet_keys(state_dict)
    load_into(model, state_dict, source, optional=_AUX_PREFIXES)
    _drop_aux_heads(model)
    return model


def default_layer(arch: str, model: nn.Module) -> str | None:
    """The default CAM layer of a torchvision architecture (see the module's table)."""
    fixed = {
        "inception_v3": "Mixed_7c",
        "googlenet": "inception5b",
        "densenet": "features.norm5",
        "regnet": "trunk_output",
        "shufflenet": "conv5",
        "squeezenet": "features",
    }
    for prefix, layer in fixed.items():
        if arch.startswith(prefix):
            return layer
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        return "layer4"
    if arch.startswith(("vgg", "alexnet")):
        relus = [i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
        return f"features.{relus[-1]}"
    if arch.startswith(("mobilenet", "efficientnet", "convnext")):
        return f"features.{len(model.features) - 1}"
    if arch.startswith("maxvit"):
        return f"blocks.{len(model.blocks) - 1}"
    if arch.startswith("mnasnet"):
        return f"layers.{len(model.layers) - 1}"
    return None
