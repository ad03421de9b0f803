"""The model zoo: which models a worker serves, loaded once at start.

A TOML file (``XPLAIN_MODELS_FILE``) names them; without one, the bundled demo model
``shapes`` alone is served. Six kinds of entry; two shown below. ``torchscript = "model.ts"``
and ``onnx = "model.onnx"`` name a file that holds its weights, with ``input_size`` and the
preprocessing as for a factory (``zoo_files.py``); ``timm = "<name>"`` (with ``weights`` a
local file or "none") and ``huggingface = "<save_pretrained folder>"`` take their input size,
preprocessing and labels from the library (``zoo_hub.py``)::

    [[models]]
    name = "resnet50"                  # the name clients use
    torchvision = "resnet50"           # a torchvision classification architecture
    weights = "IMAGENET1K_V2"          # a weights enum (local torch cache), a file path, or "none"

    [[models]]
    name = "shapes"
    factory = "mypkg.nets:build"       # an importable callable that returns an nn.Module
    weights = "/models/shapes.pt"      # a state-dict file (weights_only=True), or "none"
    input_size = [112, 112]            # height, width
    mean = [0.5, 0.5, 0.5]
    std = [0.25, 0.25, 0.25]
    labels = ["disc", "square"]        # or labels_file = "..." (JSON list or one per line)
    target_layer = "features.4"        # default layer for layer-based methods
    max_image_pixels = 4000000         # optional: largest upload for this model (the
                                       # gateway's XPLAIN_MAX_IMAGE_PIXELS otherwise)

torchvision entries take their input size, mean/std, labels and default layer from the
architecture and its weights enum (:mod:`workers.zoo_torchvision`); without an enum, labels
are ``class 0 … class N-1``. Any key above overrides them. ``num_classes`` sets the head size
of a random-init or file-weights model (a factory receives it as a keyword argument).
Relative paths (``weights``, ``labels_file``) are relative to the TOML file's folder. Enum
weights are never downloaded: a missing cache file stops the worker at start with the
expected path. Every mistake in the file is reported at start, naming the entry.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.contract.jobs import ModelInfo
from workers import zoo_torchvision as tv
from workers.explainers.base import ExplainerError, ModelHandle

ASSETS = Path(__file__).parent / "assets"
DEMO_JSON = ASSETS / "shapes.json"

KEYS = frozenset(
    {
        "name",
        "torchvision",
        "factory",
        "weights",
        "input_size",
        "mean",
        "std",
        "labels",
        "labels_file",
        "target_layer",
        "num_classes",
        "max_image_pixels",
        "torchscript",
        "onnx",
        "timm",
        "huggingface",
    }
)
SOURCES = ("torchvision", "factory", "torchscript", "onnx", "timm", "huggingface")
"""Where a model comes from (an entry names exactly one)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ModelsFileError(ValueError):
    """A models file (or one of its entries) that cannot be served; the worker does not start."""


@dataclass(frozen=True)
class ModelEntry:
    """One validated ``[[models]]`` entry; paths are absolute, ``weights`` None means random."""

    name: str
    torchvision: str | None = None
    factory: str | None = None
    weights: str | None = None
    weights_path: Path | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None
    target_layer: str | None = None
    num_classes: int | None = None
    max_image_pixels: int | None = None
    torchscript: Path | None = None
    onnx: Path | None = None
    timm: str | None = None
    huggingface: Path | None = None


# --- parsing and validation -------------------------------------------------------------------


def read_models_file(path: str | Path) -> list[ModelEntry]:
    """Parse and validate a models file; raises :class:`ModelsFileError` naming the problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ModelsFileError(f"models file {str(path)!r} does not exist") from error
    except tomllib.TOMLDecodeError as error:
        raise ModelsFileError(f"models file {str(path)!r} is not valid TOML: {error}") from error
    return parse_models(data, base_dir=path.resolve().parent, source=str(path))


def parse_models(
    data: Mapping[str, Any], base_dir: Path, source: str = "models file"
) -> list[ModelEntry]:
    """Validate the parsed TOML document (a ``models`` array of tables, nothing else)."""
    extra = sorted(set(data) - {"models"})
    if extra:
        raise ModelsFileError(f"{source}: unknown top-level key(s) {extra}; expected [[models]]")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise ModelsFileError(f"{source}: no [[models]] entries")
    entries: list[ModelEntry] = []
    for index, raw in enumerate(models):
        where = f"{source}: models[{index}]"
        if not isinstance(raw, Mapping):
            raise ModelsFileError(f"{where}: expected a table")
        if isinstance(raw.get("name"), str):
            where += f" ({raw['name']})"
        try:
            entries.append(parse_entry(raw, base_dir))
        except ModelsFileError as error:
            raise ModelsFileError(f"{where}: {error}") from error
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelsFileError(f"{source}: duplicate model name(s) {duplicates}")
    return entries


def _string(raw: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise ModelsFileError(f"missing key {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise ModelsFileError(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _numbers(raw: Mapping[str, Any], key: str) -> tuple[float, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ModelsFileError(f"{key!r} must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _input_size(raw: Mapping[str, Any]) -> tuple[int, int] | None:
    value = raw.get("input_size")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ModelsFileError(
            f"'input_size' must be [height, width] (positive integers), got {value!r}"
        )
    return int(value[0]), int(value[1])


def _labels(raw: Mapping[str, Any], base_dir: Path) -> tuple[str, ...] | None:
    labels, labels_file = raw.get("labels"), _string(raw, "labels_file")
    if labels is not None and labels_file is not None:
        raise ModelsFileError("give 'labels' or 'labels_file', not both")
    if labels_file is not None:
        path = base_dir / labels_file
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ModelsFileError(f"cannot read labels_file {str(path)!r}: {error}") from error
        labels = json.loads(text) if path.suffix == ".json" else text.strip("\n").splitlines()
    if labels is None:
        return None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelsFileError("labels must be a non-empty list of strings")
    return tuple(label.strip() for label in labels)


def _weights(
    raw: Mapping[str, Any], arch: str | None, base_dir: Path
) -> tuple[str | None, Path | None]:
    """(enum name, None), (None, file path) or (None, None) for "none"."""
    weights = _string(raw, "weights", required=True)
    assert weights is not None
    if weights.lower() == "none":
        return None, None
    if arch is not None and tv.find_weights(arch, weights) is not None:
        return weights, None
    looks_like_file = "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))
    if arch is not None and not looks_like_file:
        raise ModelsFileError(
            f"weights {weights!r} is neither a weights enum of {arch} "
            f"({', '.join(tv.weights_names(arch))}), a file path, nor 'none'"
        )
    return None, (base_dir / weights).resolve()


def parse_entry(raw: Mapping[str, Any], base_dir: Path) -> ModelEntry:
    """Validate one entry (errors do not name the entry: :func:`parse_models` adds it)."""
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ModelsFileError(f"unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    name = _string(raw, "name", required=True)
    assert name is not None
    if not _NAME.match(name):
        raise ModelsFileError(
            f"name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    source = _source(raw)
    if source in ("torchscript", "onnx", "huggingface"):
        return _file_entry(raw, base_dir, name, source)
    if source == "timm":
        return _timm_entry(raw, base_dir, name)
    return _module_entry(raw, base_dir, name)


def _module_entry(raw: Mapping[str, Any], base_dir: Path, name: str) -> ModelEntry:
    """A torchvision architecture or a factory, with weights from an enum, a file or none."""
    arch, factory = _string(raw, "torchvision"), _string(raw, "factory")
    if arch is not None:
        try:
            tv.check_architecture(arch)
        except tv.TorchvisionError as error:
            raise ModelsFileError(str(error)) from error
    if factory is not None and not _FACTORY.match(factory):
        raise ModelsFileError(f"factory {factory!r} must look like 'package.module:callable'")
    enum_name, weights_path = _weights(raw, arch, base_dir)
    input_size = _input_size(raw)
    if factory is not None and input_size is None:
        raise ModelsFileError("a factory model needs 'input_size' = [height, width]")
    return ModelEntry(
        **_common(raw, base_dir, name),
        torchvision=arch,
        factory=factory,
        weights=enum_name,
        weights_path=weights_path,
        input_size=input_size,
    )


def _source(raw: Mapping[str, Any]) -> str:
    """Which of the four model sources the entry names (exactly one)."""
    sources = [key for key in SOURCES if key in raw]
    if len(sources) != 1:
        raise ModelsFileError(
            "give exactly one of 'torchvision' or 'timm' (an architecture), 'factory', "
            f"'torchscript' or 'onnx' (a file), 'huggingface' (a folder); got {sources or 'none'}"
        )
    return sources[0]


def _file_entry(raw: Mapping[str, Any], base_dir: Path, name: str, source: str) -> ModelEntry:
    """A TorchScript, ONNX or Hugging Face entry: the file (folder) holds the weights."""
    file_name = _string(raw, source, required=True)
    if raw.get("weights") not in (None, "none"):
        raise ModelsFileError(f"a {source} model holds its weights: drop 'weights'")
    input_size = _input_size(raw)
    if input_size is None and source != "huggingface":
        raise ModelsFileError(f"a {source} model needs 'input_size' = [height, width]")
    path = (base_dir / str(file_name)).resolve()
    exists = path.is_dir() if source == "huggingface" else path.is_file()
    if not exists:
        what = "folder" if source == "huggingface" else "file"
        raise ModelsFileError(f"model {what} {str(path)!r} does not exist")
    return ModelEntry(
        **_common(raw, base_dir, name),
        input_size=input_size,
        torchscript=path if source == "torchscript" else None,
        onnx=path if source == "onnx" else None,
        huggingface=path if source == "huggingface" else None,
    )


def _timm_entry(raw: Mapping[str, Any], base_dir: Path, name: str) -> ModelEntry:
    """A timm architecture: ``weights`` a local file or "none"."""
    arch = _string(raw, "timm", required=True)
    _, weights_path = _weights(raw, None, base_dir)
    return ModelEntry(
        **_common(raw, base_dir, name),
        input_size=_input_size(raw),
        timm=arch,
        weights_path=weights_path,
    )


def _common(raw: Mapping[str, Any], base_dir: Path, name: str) -> dict[str, Any]:
    """The keys every model source takes: name, preprocessing, labels, layer, limits."""
    mean, std = _numbers(raw, "mean"), _numbers(raw, "std")
    if mean is not None and std is not None and len(mean) != len(std):
        raise ModelsFileError("'mean' and 'std' must have the same length")
    if std is not None and min(std) <= 0:
        raise ModelsFileError("'std' must be positive")
    num_classes = _positive_int(raw, "num_classes")
    labels = _labels(raw, base_dir)
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise ModelsFileError(f"{len(labels)} labels but num_classes = {num_classes}")
    return {
        "name": name,
        "mean": mean,
        "std": std,
        "labels": labels,
        "target_layer": _string(raw, "target_layer"),
        "num_classes": num_classes,
        "max_image_pixels": _positive_int(raw, "max_image_pixels"),
    }


def _positive_int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ModelsFileError(f"'{key}' must be a positive integer, got {value!r}")
    return value


def demo_entry() -> ModelEntry:
    """The bundled demo model, described by ``workers/assets/shapes.json``."""
    try:
        facts = json.loads(DEMO_JSON.read_text(encoding="utf-8"))
    except OSError as error:
        raise ModelsFileError(
            f"the demo model's description {str(DEMO_JSON)!r} is missing "
            "(train it with scripts/train_demo.py)"
        ) from error
    raw = {key: facts[key] for key in KEYS if key in facts}
    return parse_entry(raw, base_dir=ASSETS)


# --- building -------------------------------------------------------------------------------


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelsFileError(f"cannot import factory module {module_name!r}: {error}") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelsFileError(f"factory {spec!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelsFileError(f"factory {spec!r} is not callable")
    return target


def _build_factory(entry: ModelEntry) -> nn.Module:
    assert entry.factory is not None
    factory = _import_factory(entry.factory)
    kwargs = {} if entry.num_classes is None else {"num_classes": entry.num_classes}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelsFileError(f"factory {entry.factory!r} returned {type(model).__name__}")
    if entry.weights_path is not None:
        state_dict = tv.load_state_dict_file(entry.weights_path)
        tv.load_into(model, state_dict, f"file {str(entry.weights_path)!r}")
    return model


def build_handle(entry: ModelEntry) -> ModelHandle:
    """The entry's model on CPU, with its preprocessing facts (not yet in eval mode/warmed)."""
    return replace(_build_handle(entry), max_image_pixels=entry.max_image_pixels)


def _build_handle(entry: ModelEntry) -> ModelHandle:
    if entry.torchscript is not None or entry.onnx is not None:
        return _file_handle(entry)
    if entry.timm is not None or entry.huggingface is not None:
        return _hub_handle(entry)
    if entry.torchvision is not None:
        arch = entry.torchvision
        enum = tv.find_weights(arch, entry.weights) if entry.weights else None
        num_classes = entry.num_classes
        if num_classes is None and enum is None and entry.labels is not None:
            num_classes = len(entry.labels)
        model = tv.build(arch, enum if enum is not None else entry.weights_path, num_classes)
        facts = tv.preprocessing(arch, enum, model)
        return ModelHandle(
            name=entry.name,
            model=model,
            input_size=entry.input_size or facts.input_size,
            mean=entry.mean or facts.mean,
            std=entry.std or facts.std,
            labels=entry.labels or facts.labels or (),
            default_layer=entry.target_layer or tv.default_layer(arch, model),
            architecture=f"torchvision:{arch}" + (f" ({enum!r})" if enum is not None else ""),
        )
    model = _build_factory(entry)
    assert entry.input_size is not None
    return ModelHandle(
        name=entry.name,
        model=model,
        input_size=entry.input_size,
        mean=entry.mean or tv.IMAGENET_MEAN,
        std=entry.std or tv.IMAGENET_STD,
        labels=entry.labels or (),
        default_layer=entry.target_layer,
        architecture=f"{entry.factory}:{type(model).__name__}",
    )


def _file_handle(entry: ModelEntry) -> ModelHandle:
    """A TorchScript or ONNX model (``zoo_files.py``)."""
    from workers import zoo_files

    path = entry.torchscript or entry.onnx
    assert path is not None and entry.input_size is not None
    kind = "torchscript" if entry.torchscript is not None else "onnx"
    try:
        model = (
            zoo_files.load_torchscript(path) if kind == "torchscript" else zoo_files.load_onnx(path)
        )
    except zoo_files.ModelFileError as error:
        raise ModelsFileError(str(error)) from error
    return ModelHandle(
        name=entry.name,
        model=model,
        input_size=entry.input_size,
        mean=entry.mean or tv.IMAGENET_MEAN,
        std=entry.std or tv.IMAGENET_STD,
        labels=entry.labels or (),
        architecture=f"{kind}:{path.name}",
    )


def _hub_handle(entry: ModelEntry) -> ModelHandle:
    """A timm or Hugging Face model (``zoo_hub.py``), the entry's keys over the library's."""
    from workers import zoo_hub

    try:
        if entry.timm is not None:
            built = zoo_hub.build_timm(entry.timm, entry.weights_path, entry.num_classes)
        else:
            assert entry.huggingface is not None
            built = zoo_hub.build_huggingface(entry.huggingface)
    except zoo_hub.HubError as error:
        raise ModelsFileError(str(error)) from error
    return ModelHandle(
        name=entry.name,
        model=built.model,
        input_size=entry.input_size or built.input_size,
        mean=entry.mean or built.mean,
        std=entry.std or built.std,
        labels=entry.labels or built.labels or (),
        default_layer=entry.target_layer,
        architecture=built.architecture,
    )


def prepare(handle: ModelHandle, device: torch.device, find_layer: bool = True) -> ModelHandle:
    """Eval mode on ``device`` (channels-last on CUDA), one warm-up forward, labels checked,
    default layer checked, or found when ``find_layer`` (the last module with a spatial
    output). ``requires_grad`` is left as it is."""
    model = handle.model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if len(handle.mean) != len(handle.std):
        raise ModelsFileError("mean and std differ in length")
    probe = torch.zeros(1, len(handle.mean), *handle.input_size, device=device)
    try:
        with torch.inference_mode():
            logits = model(probe)
    except Exception as error:  # any failure of the warm-up is a configuration error
        raise ModelsFileError(
            f"warm-up forward on a {tuple(probe.shape)} input failed: {error}"
        ) from error
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ModelsFileError(
            "the model must return logits (batch, classes); got "
            f"{getattr(logits, 'shape', type(logits).__name__)}"
        )
    classes = int(logits.shape[1])
    labels = handle.labels or tuple(f"class {i}" for i in range(classes))
    if len(labels) != classes:
        raise ModelsFileError(f"the model has {classes} outputs but {len(labels)} labels")
    handle = replace(handle, model=model, labels=labels)
    if handle.default_layer is None and not find_layer:
        return handle
    try:
        layer, _ = handle.resolve_layer(None)
    except ExplainerError as error:
        if handle.default_layer is not None:
            raise ModelsFileError(
                f"target_layer {handle.default_layer!r} does not exist"
            ) from error
        layer = None  # no spatial layer: layer-based methods will refuse with a clear error
    return replace(handle, default_layer=layer)


def load_models(models_file: str | None, device: torch.device) -> dict[str, ModelHandle]:
    """Every model of ``models_file`` (the demo model alone when None), ready to serve.

    Raises :class:`ModelsFileError` (a ValueError) with a message naming the entry at fault.
    """
    entries = read_models_file(models_file) if models_file else [demo_entry()]
    handles: dict[str, ModelHandle] = {}
    for entry in entries:
        try:
            handle = build_handle(entry)
            handles[entry.name] = prepare(handle, device)
        except (ModelsFileError, tv.TorchvisionError) as error:
            raise ModelsFileError(f"model {entry.name!r}: {error}") from error
    return handles


def model_info(handle: ModelHandle) -> ModelInfo:
    """What a worker announces about ``handle`` (``layers``: every named submodule)."""
    return ModelInfo(
        name=handle.name,
        input_size=handle.input_size,
        num_classes=len(handle.labels),
        labels=list(handle.labels),
        mean=list(handle.mean),
        std=list(handle.std),
        default_layer=handle.default_layer,
        layers=[] if handle.opaque else [n for n, _ in handle.model.named_modules() if n],
        architecture=handle.architecture,
        layer_channels=layer_channels(handle),
        max_image_pixels=handle.max_image_pixels,
    )


def layer_channels(handle: ModelHandle) -> dict[str, int]:
    """Channels of every module whose output is a spatial map (``layouts.py``: convolution
    maps, channels-last maps, transformer tokens), from one probe forward."""
    from workers.explainers.layouts import infer_layout, prefix_tokens

    channels: dict[str, int] = {}
    if handle.opaque:
        return channels
    prefix = prefix_tokens(handle.model)
    hooks = []
    for name, module in handle.model.named_modules():
        if not name:
            continue

        def record(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                layout = infer_layout(tuple(out.shape), handle.input_size, prefix)
                if layout is not None:
                    channels[name] = int(out.shape[1 if layout.kind == "nchw" else -1])

        hooks.append(module.register_forward_hook(record))
    try:
        probe = torch.zeros(1, len(handle.mean), *handle.input_size, device=handle.device)
        with torch.inference_mode():
            handle.model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return channels
