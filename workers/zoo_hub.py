"""Models from the hub libraries, always from local files: timm and Hugging Face transformers.

* ``timm = "<model name>"`` builds the architecture with ``timm.create_model`` (never
  ``pretrained=True``: nothing is downloaded) and loads ``weights`` from a local file
  (a state dict, ``.safetensors`` or a torch file) unless ``weights = "none"``. Input size,
  mean and std come from the model's pretrained config (``model.pretrained_cfg``).
* ``huggingface = "<folder>"`` loads an image classifier saved with ``save_pretrained``
  (``AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)``). Its
  output object is turned into logits, labels come from ``config.id2label``, input size and
  mean/std from the folder's ``preprocessor_config.json`` (else ``config.image_size`` and
  ImageNet's statistics).

Any key of the entry (``input_size``, ``mean``, ``std``, ``labels``, ``target_layer``)
overrides what the library says. The default CAM layer is found by the worker's probe
(``layer_choice.py``), which handles the transformers among them (token grids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HubError(ValueError):
    """A hub model that cannot be built from the local files."""


@dataclass(frozen=True)
class HubModel:
    """A built model and what its library says about its input."""

    model: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...] | None
    architecture: str


def _state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise HubError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise HubError(f"weights file {str(path)!r} does not hold a state dict")
    return loaded


def build_timm(name: str, weights: Path | None, num_classes: int | None) -> HubModel:
    """A timm architecture, random or with weights from a local file."""
    try:
        import timm
    except ImportError as error:
        raise HubError("timm models need the timm package") from error
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as error:  # unknown model name
        raise HubError(f"timm has no model {name!r}: {error}") from error
    if weights is not None:
        try:
            model.load_state_dict(_state_dict(weights))
        except RuntimeError as error:
            raise HubError(f"weights {str(weights)!r} do not fit timm {name}: {error}") from error
    config = getattr(model, "pretrained_cfg", {}) or {}
    size = config.get("input_size", (3, 224, 224))
    return HubModel(
        model=model,
        input_size=(int(size[1]), int(size[2])),
        mean=tuple(float(v) for v in config.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in config.get("std", IMAGENET_STD)),
        labels=None,
        architecture=f"timm:{name}",
    )


class HuggingFaceClassifier(nn.Module):
    """A transformers image classifier as a module from pixels to logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` of the classifier's output object."""
        return self.inner(pixel_values=x).logits


def _preprocessor(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HubError(f"{str(path)!r} is not valid JSON: {error}") from error
    return loaded if isinstance(loaded, dict) else {}


def _hf_size(preprocessor: dict[str, Any], config: Any) -> tuple[int, int]:
    for key in ("crop_size", "size"):
        size = preprocessor.get(key)
        if isinstance(size, dict) and "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if isinstance(size, dict) and "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        if isinstance(size, int):
            return size, size
    image_size = getattr(config, "image_size", 224)
    if isinstance(image_size, list | tuple):
        return int(image_size[0]), int(image_size[-1])
    return int(image_size), int(image_size)


def build_huggingface(folder: Path) -> HubModel:
    """A transformers image classifier saved with ``save_pretrained`` in ``folder``."""
    if not (folder / "config.json").is_file():
        raise HubError(f"{str(folder)!r} holds no config.json (a save_pretrained folder)")
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as error:
        raise HubError("Hugging Face models need the transformers package") from error
    try:
        inner = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise HubError(f"cannot load the classifier in {str(folder)!r}: {error}") from error
    config = inner.config
    preprocessor = _preprocessor(folder)
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(str(id2label[i]) for i in sorted(id2label, key=int)) if id2label else None
    return HubModel(
        model=HuggingFaceClassifier(inner),
        input_size=_hf_size(preprocessor, config),
        mean=tuple(float(v) for v in preprocessor.get("image_mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in preprocessor.get("image_std", IMAGENET_STD)),
        labels=labels,
        architecture=f"huggingface:{type(inner).__name__}",
    )
