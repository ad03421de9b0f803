"""Explain the held-out scenes with each method and score the maps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from app.contract.methods import method_specs
from benchmarks.quality.config import REQUIRED_METHODS, Settings
from workers.explainers import ModelHandle, get_explainer
from workers.explainers.metrics import (
    boxes_to_masks,
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    layers_from,
    pointing_game,
    randomised_handle,
    spearman,
)

Status = Literal["ok", "missing", "error", "reference"]
Log = Callable[[str], None]


@dataclass
class Scored:
    """Per-scene scores of one set of maps, ``(n,)`` each."""

    pointing: Tensor
    energy: Tensor
    deletion: Tensor
    insertion: Tensor


@dataclass
class Row:
    """One line of the table: a method (or a reference map) and its scores."""

    name: str
    family: str
    status: Status
    message: str = ""
    changed: dict[str, Any] = field(default_factory=dict)
    scores: Scored | None = None
    sanity: Tensor | None = None
    seconds_per_image: float | None = None
    forward_passes: float | None = None
    backward_passes: float | None = None
    maps: Tensor | None = None


@dataclass
class Bench:
    """The model, the scenes as model inputs, and what the metrics need about them."""

    handle: ModelHandle
    inputs: Tensor
    targets: Tensor
    masks: Tensor
    boxes: Tensor
    images: Tensor
    randomised: ModelHandle
    randomised_layers: list[str]
    settings: Settings


def method_list() -> list[tuple[str, str]]:
    """(name, family) of every catalogue method, then required methods not in the catalogue."""
    specs = method_specs()
    names = [(name, spec.family) for name, spec in specs.items()]
    names += [(name, fam) for name, fam in REQUIRED_METHODS.items() if name not in specs]
    return names


def effective_params(name: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(all keyword parameters, the ones changed from the defaults) of a catalogue method."""
    model = method_specs()[name].params
    wanted = settings.reduced.get(name, {})
    changed = {key: value for key, value in wanted.items() if key in model.model_fields}
    return model.model_validate(changed).model_dump(), changed


def score_maps(bench: Bench, maps: Tensor) -> Scored:
    """Pointing game (object mask), energy pointing game (box), deletion and insertion AUC."""
    size = (bench.inputs.shape[-2], bench.inputs.shape[-1])
    maps = maps.to(bench.inputs.device).float()
    common = {"step": bench.settings.step, "max_batch_size": 64}
    return Scored(
        pointing=pointing_game(maps, bench.masks).cpu(),
        energy=energy_pointing_game(maps, boxes_to_masks(bench.boxes, size)).cpu(),
        deletion=deletion_auc(bench.handle, bench.inputs, bench.targets, maps, **common).cpu(),
        insertion=insertion_auc(bench.handle, bench.inputs, bench.targets, maps, **common).cpu(),
    )


def explain_groups(
    explainer: Callable[..., Any],
    handle: ModelHandle,
    bench: Bench,
    params: dict[str, Any],
    total: int | None = None,
) -> tuple[Tensor, list[dict[str, Any]], float]:
    """Maps for the first ``total`` scenes (all by default), their metadata, and the seconds
    spent in the explainer calls."""
    maps, meta, seconds = [], [], 0.0
    total = bench.inputs.shape[0] if total is None else min(total, bench.inputs.shape[0])
    for start in range(0, total, bench.settings.group):
        rows = slice(start, min(start + bench.settings.group, total))
        began = time.perf_counter()
        result = explainer(handle, bench.inputs[rows], bench.targets[rows], **params)
        seconds += time.perf_counter() - began
        maps.append(result.saliency.detach().float().cpu())
        meta.extend(result.meta)
    return torch.cat(maps), meta, seconds


def mean_meta(meta: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a numeric metadata entry over rows, None when absent."""
    values = [float(m[key]) for m in meta if isinstance(m.get(key), int | float)]
    return sum(values) / len(values) if values else None


def run_method(name: str, family: str, bench: Bench, log: Log) -> Row:
    """Explain, time and score one method; 'missing' or 'error' rows instead of raising."""
    try:
        explainer = get_explainer(name)
    except KeyError:
        return Row(name, family, "missing", "not registered in workers.explainers")
    if name not in method_specs():
        return Row(name, family, "missing", "registered but not in the method catalogue")
    params, changed = effective_params(name, bench.settings)
    try:
        explainer(bench.handle, bench.inputs[:1], bench.targets[:1], **params)  # warm-up
        maps, meta, seconds = explain_groups(explainer, bench.handle, bench, params)
        subset = bench.settings.sanity_scenes
        random_maps, _, _ = explain_groups(explainer, bench.randomised, bench, params, subset)
        scores = score_maps(bench, maps)
    except Exception as error:  # a benchmark reports failures, it does not stop on them
        log(f"  {name}: error {type(error).__name__}: {error}")
        return Row(name, family, "error", f"{type(error).__name__}: {error}", changed)
    return Row(
        name,
        family,
        "ok",
        changed=changed,
        scores=scores,
        sanity=spearman(maps[: random_maps.shape[0]], random_maps),
        seconds_per_image=seconds / maps.shape[0],
        forward_passes=mean_meta(meta, "forward_passes"),
        backward_passes=mean_meta(meta, "backward_passes"),
        maps=maps,
    )


def reference_rows(bench: Bench) -> list[Row]:
    """Maps that need no method: a constant map (chance), a centre prior, the object's mask."""
    n, _, height, width = bench.inputs.shape
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32).view(1, -1) - (width - 1) / 2
    sigma = min(height, width) / 4
    centre = torch.exp(-(ys**2 + xs**2) / (2 * sigma**2)).expand(n, -1, -1)
    maps = {
        "constant map (chance)": torch.zeros(n, height, width),
        "centre prior (Gaussian, σ = ¼ side)": centre,
        "object mask (oracle)": bench.masks.float().cpu(),
    }
    return [
        Row(name, "reference", "reference", scores=score_maps(bench, m), maps=m)
        for name, m in maps.items()
    ]


def load_bench(settings: Settings) -> Bench:
    """The model from the zoo and the held-out scenes as its inputs."""
    from workers.demo.scenes import EVAL_SEED, make_scenes
    from workers.zoo import load_models

    device = torch.device(settings.device)
    handle = load_models(settings.models_file, device)[settings.model]
    size = handle.input_size
    if size[0] != size[1]:
        raise SystemExit(f"the scenes are square; model {handle.name!r} takes {size}")
    scenes = make_scenes(settings.scenes, seed=EVAL_SEED, size=size[0], style=settings.style)
    images = scenes.images.to(device)
    layer = handle.default_layer or handle.resolve_layer(None)[0]
    layers = layers_from(handle.model, layer)
    return Bench(
        handle=handle,
        inputs=handle.from_display(images),
        targets=scenes.labels.to(device),
        masks=scenes.masks.to(device),
        boxes=scenes.boxes.to(device),
        images=scenes.images,
        randomised=randomised_handle(handle, layers, settings.sanity_seed),
        randomised_layers=layers,
        settings=settings,
    )


def accuracy(bench: Bench) -> float:
    """Top-1 accuracy of the model on the scenes."""
    with torch.inference_mode():
        predicted = bench.handle.model(bench.inputs).argmax(dim=1)
    return float((predicted == bench.targets).float().mean())


def run_all(settings: Settings, log: Log) -> tuple[Bench, list[Row], list[Row]]:
    """(the bench, one row per method, the reference rows)."""
    bench = load_bench(settings)
    rows = []
    for name, family in method_list():
        if settings.only and name not in settings.only:
            continue
        began, cpu = time.perf_counter(), time.process_time()
        row = run_method(name, family, bench, log)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        log(f"{name:>24}: {row.status} in {wall:.1f} s ({cpu:.1f} s of CPU)")
        rows.append(row)
    return bench, rows, reference_rows(bench)


def standard_error(values: Tensor) -> float:
    """Standard error of the mean of ``values``."""
    n = values.numel()
    return float(values.float().std() / math.sqrt(n)) if n > 1 else float("nan")
