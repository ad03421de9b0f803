"""Peak memory of each method at its largest allowed parameters (run in a fresh process).

``python -m tests.explainers.memory_probe SIZE NAME...`` prints one JSON line per method:
``{"method", "peak_mb", "calls", "outcome"}``. Each method runs on one ``SIZE``-px image
through a small CNN at the worker's default batch of 64 rows, with its largest allowed
parameters (RISE's cells and LIME's segments capped by the image), and
is cancelled at its third progress report (the work it sets up before its first chunk, where
memory blew up before, is all done by then). ``peak_mb`` is the rise of the process's
resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before each
method) over its resident size before the call. Large blocks are returned to the system when
freed (``MALLOC_MMAP_THRESHOLD_``, set by the caller), so one method's garbage does not hide
the next one's peak.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import nn

from app.contract.methods import method_specs
from workers.explainers import Cancelled, ModelHandle, get_explainer
from workers.explainers.metrics import evaluate
from workers.explainers.perturbation.lime import RidgeMoments

BATCH = 64

LARGEST: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 1, "stride": 1, "fill": "local_mean"},
    "fmo": {
        "grids": [4, 8, 16, 32, 64, 112, 224],
        "min_cell": 1,
        "window": 8,
        "select": "all",
        "combine": "depth",
        "smoothing": 8,
        "fill": "local_mean",
    },
    "rise": {"n_masks": 100_000, "cells": 256},
    "lime": {"num_samples": 100_000, "segmentation": "slic", "segments": 2000},
    "scorecam": {"layer": "features.4"},
    "integrated_gradcam": {"steps": 1000},
    "smooth_gradcam_pp": {"n_samples": 1000},
    "layercam": {"layers": ["features.1", "features.3", "features.5"]},
    "meaningful_perturbation": {
        "iterations": 20_000,
        "mask_scale": 1,
        "mask_blur": 100,
        "blur_sigma": 100,
        "jitter": 64,
    },
    "extremal_perturbation": {
        "iterations": 20_000,
        "areas": [0.1],  # more areas are more rows: time, not a higher peak (bands)
        "step": 1,
        "sigma": 21,
        "levels": 64,
        "max_blur": 256,
    },
    "neuromask": {"iterations": 20_000},
    "gradual_extrapolation": {"base": "smooth_gradcam_pp"},
}


class SmallCnn(nn.Module):
    """A 224-px CNN whose own activations are small (stride-4 stem), 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resident_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Set the resident high-water mark to the current resident size."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


STOP_AT = {"extremal_perturbation": 1}
"""Progress reports before the cancellation, where 3 take long (extremal perturbation at step
1 spends seconds of mask arithmetic per iteration; its first iteration holds the peak)."""


def largest(name: str, size: int) -> dict[str, Any]:
    """The largest allowed parameters of ``name`` for a ``size``-px input."""
    params = dict(LARGEST.get(name, {}))
    if name == "rise":
        params["cells"] = size
    if name == "fmo":
        params["grids"] = [g for g in params["grids"] if g <= size]
    return params


def probe(name: str, handle: ModelHandle, image: torch.Tensor) -> dict[str, Any]:
    """Run ``name`` at its largest parameters until its third progress report."""
    calls = [0]

    def progress(done: int, total: int) -> None:
        calls[0] += 1
        if calls[0] >= STOP_AT.get(name, 3):
            raise Cancelled

    reset_peak()
    before = resident_mb("VmRSS")
    outcome = "finished"
    try:
        if name == "evaluate":
            size = image.shape[-1]
            evaluate(handle, image, torch.tensor([0]), torch.rand(1, size, size),
                     ["deletion", "insertion"], max_batch_size=BATCH)  # fmt: skip
        elif name == "lime_solve":
            RidgeMoments(1, 2000, torch.device("cpu")).solve(1.0)
        else:
            spec = method_specs()[name]
            raw = largest(name, image.shape[-1])
            params = spec.params.model_validate(raw).model_dump(mode="json")
            if "max_batch_size" in params:
                params["max_batch_size"] = BATCH
            get_explainer(name)(handle, image, torch.tensor([-1]), **params, progress=progress)
    except Cancelled:
        outcome = "cancelled"
    return {
        "method": name,
        "peak_mb": round(resident_mb("VmHWM") - before, 1),
        "calls": calls[0],
        "outcome": outcome,
    }


def main(size: int, names: list[str]) -> None:
    """Probe each method in turn, one JSON line each."""
    torch.set_num_threads(1)
    model = SmallCnn().eval()
    handle = ModelHandle("small", model, (size, size), labels=tuple("abcdefghij"),
                         default_layer="features.4")  # fmt: skip
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    probe("gradcam", handle, image)  # warm-up: one-time allocations of torch itself
    for name in names:
        print(json.dumps(probe(name, handle, image)), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
