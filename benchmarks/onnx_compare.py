"""The same network in PyTorch and in ONNX Runtime, through the gradient-free methods.

``.venv/bin/python -m benchmarks.onnx_compare --out benchmarks/results/onnx.md`` exports a
torchvision model (random weights; ResNet-18 by default) to ONNX with a dynamic batch axis,
loads it the way a worker does (a models.toml ``onnx`` entry) beside the PyTorch model, and
runs occlusion, FMO, RISE and LIME on the same images (held-out synthetic scenes) with the
same parameters on both: the largest difference between the maps (as a share of the map's
range) and the seconds of each, best of ``--repeats``, one torch / ONNX Runtime thread each by
default.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision

from workers.demo.scenes import EVAL_SEED, make_scenes
from workers.explainers import get_explainer
from workers.explainers.base import ModelHandle
from workers.zoo import load_models

METHODS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 32, "stride": 16},
    "fmo": {},
    "rise": {"n_masks": 500},
    "lime": {"num_samples": 300},
}


def export(model: torch.nn.Module, size: int, folder: Path) -> Path:
    """``model`` as ONNX with a dynamic batch axis, and a models.toml naming it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 3, size, size),),
            str(folder / "model.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    toml = folder / "models.toml"
    toml.write_text(f'[[models]]\nname = "m"\nonnx = "model.onnx"\ninput_size = [{size}, {size}]\n')
    return toml


def best_of(repeats: int, call: Any) -> tuple[float, Any]:
    """Fastest wall time of ``call()`` and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    pytorch = ModelHandle("pytorch", model, (args.size, args.size))
    with tempfile.TemporaryDirectory() as work:
        onnx = load_models(str(export(model, args.size, Path(work))), torch.device("cpu"))["m"]
        scenes = make_scenes(args.images, seed=EVAL_SEED, size=args.size)
        x = pytorch.from_display(scenes.images)  # noise would give SLIC a single superpixel
        targets = torch.tensor([-1] * args.images)
        rows = []
        for method, params in METHODS.items():
            explain = partial(get_explainer(method), inputs=x, targets=targets, **params)
            torch_s, ours = best_of(args.repeats, partial(explain, pytorch))
            onnx_s, theirs = best_of(args.repeats, partial(explain, onnx))
            a, b = ours.saliency, theirs.saliency
            spread = (a.amax(dim=(1, 2)) - a.amin(dim=(1, 2))).clamp(min=1e-12)
            difference = float(((a - b).abs().amax(dim=(1, 2)) / spread).max())
            rows.append((method, params, torch_s, onnx_s, difference))
    lines = [
        "# The same network in PyTorch and in ONNX Runtime",
        "",
        f"Command: `.venv/bin/python -m benchmarks.onnx_compare --out benchmarks/results/onnx.md` "
        f"(`benchmarks/onnx_compare.py`). {args.model} (random weights), {args.size} px, "
        f"{args.images} synthetic scenes per call, best of {args.repeats}, "
        f"{args.threads} thread(s); "
        f"{platform.machine()} CPU, torch {torch.__version__}, onnxruntime "
        f"{__import__('onnxruntime').__version__}.",
        "",
        "| method | parameters | PyTorch s | ONNX Runtime s | ONNX ÷ PyTorch "
        "| max map difference |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, params, torch_s, onnx_s, difference in rows:
        lines.append(
            f"| {method} | `{params or 'defaults'}` | {torch_s:.2f} | {onnx_s:.2f} "
            f"| {onnx_s / torch_s:.2f}× | {difference:.1e} of the range |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
