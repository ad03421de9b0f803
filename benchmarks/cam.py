"""CAM family: our batched explainers against pytorch-grad-cam and Captum, side by side.

For ResNet-18 and ResNet-50 (random weights: this is a speed benchmark) at 224 px, batch 1
and batch 32, each with its own target per image, one run times:

* our ``gradcam``, ``gradcam_pp``, ``xgradcam``, ``layercam``, ``scorecam`` against
  pytorch-grad-cam's ``GradCAM``, ``GradCAMPlusPlus``, ``XGradCAM``, ``LayerCAM``,
  ``ScoreCAM`` (layer ``layer4``, the same forward batch size for Score-CAM);
* our ``gradcam`` against Captum ``LayerGradCam`` followed by ``LayerAttribution.interpolate``
  to the input size (ours returns maps at the input size too);
* the floor: one forward plus one backward pass of the model for the batch (the gradient of
  the summed target logits with respect to the input).

Every timing covers the whole call a service would make (hooks registered and removed, maps
up-sampled), and the runs of one setting are interleaved (each rep in a new order), so machine
noise hits all of them alike; the best of the runs is reported (after one warm-up run). The ``r``
column is the mean Pearson correlation between our map and the reference's for the same
images (a check that both compute the same thing; Score-CAM's weighting differs on purpose:
ours uses the target probability as in the authors' code, pytorch-grad-cam a softmax of the
logits over channels).

Score-CAM costs 1 + K forwards per image (K = 512 channels for ResNet-18 ``layer4``, 2048 for
ResNet-50), so on a CPU it is run only where ``--scorecam`` says (default ``resnet18:1``).

    nice -n 10 .venv/bin/python -m benchmarks.cam --models resnet18 --threads 1  # ~9 min CPU
    nice -n 10 .venv/bin/python -m benchmarks.cam --models resnet50 --threads 1 --scorecam \
        --reps-large 2                                                          # ~10 min CPU
    .venv/bin/python -m benchmarks.cam --device cuda --scorecam resnet18:1 resnet18:32 \
        resnet50:1 resnet50:32                                                  # on a GPU

Prints a Markdown table (results: ``benchmarks/results/cam.md``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM prints progress bars

import numpy as np
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from pytorch_grad_cam import (
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from workers.explainers import ModelHandle, get_explainer

LAYER = "layer4"
SIZE = 224
FORWARD_BATCH = 64
REFERENCES: dict[str, Any] = {
    "gradcam": GradCAM,
    "gradcam_pp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
}

Runner = Callable[[], Any]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor(model: nn.Module, x: Tensor, targets: Tensor) -> Runner:
    """One forward + one backward pass to the input."""

    def run() -> Tensor:
        inputs = x.detach().clone().requires_grad_(True)
        score = model(inputs).gather(1, targets.view(-1, 1)).sum()
        return torch.autograd.grad(score, inputs)[0]

    return run


def ours(method: str, handle: ModelHandle, x: Tensor, targets: Tensor) -> Runner:
    """Our explainer on the whole batch."""
    explain = get_explainer(method)
    kwargs = {"max_batch_size": FORWARD_BATCH} if method == "scorecam" else {}
    return lambda: explain(handle, x, targets, layer=LAYER, **kwargs).saliency


def grad_cam_lib(method: str, model: nn.Module, x: Tensor, targets: Tensor) -> Runner:
    """pytorch-grad-cam, used as its README shows (context manager, one target per image)."""
    layer = model.get_submodule(LAYER)
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]

    def run() -> np.ndarray:
        with REFERENCES[method](model=model, target_layers=[layer]) as cam:
            cam.batch_size = FORWARD_BATCH
            return cam(input_tensor=x, targets=wanted)

    return run


def captum_gradcam(model: nn.Module, x: Tensor, targets: Tensor) -> Runner:
    """Captum ``LayerGradCam`` + bilinear interpolation to the input size."""
    explainer = LayerGradCam(model, model.get_submodule(LAYER))

    def run() -> Tensor:
        attribution = explainer.attribute(x, target=targets.tolist(), relu_attributions=True)
        return LayerAttribution.interpolate(attribution, (SIZE, SIZE), "bilinear")[:, 0]

    return run


def pearson(a: Any, b: Any) -> float:
    """Mean over rows of the Pearson correlation of two ``(B, H, W)`` map stacks.

    Rows where either map is constant (an all-zero Grad-CAM: every position has negative
    evidence, frequent with random weights) have no correlation and are left out.
    """
    left = torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a))
    right = torch.as_tensor(np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b))
    values = []
    for u, v in zip(left.flatten(1).double(), right.flatten(1).double(), strict=True):
        u, v = u - u.mean(), v - v.mean()
        denominator = float(u.norm() * v.norm())
        if denominator > 0:
            values.append(float(u @ v) / denominator)
    return statistics.fmean(values) if values else float("nan")


def time_all(runners: dict[str, Runner], reps: int, device: torch.device) -> dict[str, float]:
    """Best (minimum) seconds of each runner; every rep runs all of them in a new order.

    On CPU the clock is this process's CPU time (with ``--threads 1``, the compute time of the
    call), which other processes on a shared machine do not inflate the way they inflate wall
    time; on CUDA it is wall time after a synchronisation. The minimum is the estimate least
    disturbed by the rest of the machine.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for rep in range(reps):
        random.Random(rep).shuffle(names)  # a different order (and neighbours) every rep
        for name in names:
            run = runners[name]
            sync(device)
            start = clock()
            run()
            sync(device)
            times[name].append(clock() - start)
    return {name: min(values) for name, values in times.items()}


def setting(
    arch: str, batch: int, methods: list[str], reps: int, device: torch.device
) -> list[str]:
    """Markdown rows for one model at one batch size."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    handle = ModelHandle(arch, model, (SIZE, SIZE), default_layer=LAYER, architecture=arch)
    x = torch.randn(batch, 3, SIZE, SIZE, device=device)
    targets = torch.randint(0, 1000, (batch,), device=device)
    runners: dict[str, Runner] = {"floor": floor(model, x, targets)}
    for method in methods:
        runners[f"ours:{method}"] = ours(method, handle, x, targets)
        runners[f"grad-cam:{method}"] = grad_cam_lib(method, model, x, targets)
    if "gradcam" in methods:
        runners["captum:gradcam"] = captum_gradcam(model, x, targets)
    outputs = {name: run() for name, run in runners.items()}  # warm-up, and the maps
    seconds = time_all(runners, reps if "scorecam" not in methods else 1, device)
    rows = []
    pairs = [(m, f"grad-cam:{m}", "pytorch-grad-cam") for m in methods]
    if "gradcam" in methods:
        pairs.append(("gradcam", "captum:gradcam", "Captum LayerGradCam"))
    for method, reference, label in pairs:
        mine = seconds[f"ours:{method}"]
        rows.append(
            f"| {arch} | {batch} | {method} | {mine * 1e3:.0f} | {label} | "
            f"{seconds[reference] * 1e3:.0f} | {seconds[reference] / mine:.2f}× | "
            f"{mine / seconds['floor']:.2f} | "
            f"{pearson(outputs[f'ours:{method}'], outputs[reference]):.3f} |"
        )
    rows.append(
        f"| {arch} | {batch} | floor (F + B) | {seconds['floor'] * 1e3:.0f} | | | | 1.00 | |"
    )
    return rows


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--reps", type=int, default=10, help="timed runs at batches up to 8")
    parser.add_argument(
        "--reps-large", type=int, default=3, help="timed runs at batches over 8 (after a warm-up)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--scorecam",
        nargs="*",
        default=["resnet18:1"],
        help="model:batch settings where Score-CAM runs too (it costs 1 + K forwards/image)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["gradcam", "gradcam_pp", "xgradcam", "layercam"],
        help="fast methods to compare (Score-CAM is chosen by --scorecam)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        "| model | batch | method | ours ms | reference | reference ms | speed-up | "
        "ours / floor | r |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    fast = args.methods
    for arch in args.models:
        for batch in args.batches:
            reps = args.reps if batch <= 8 else args.reps_large
            with torch.inference_mode(False):
                for row in setting(arch, batch, fast, reps, device):
                    print(row, flush=True)
                if f"{arch}:{batch}" in args.scorecam:
                    for row in setting(arch, batch, ["scorecam"], reps, device)[:1]:
                        print(row, flush=True)


if __name__ == "__main__":
    main()
