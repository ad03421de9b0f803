"""Propagation family: our LRP against Zennit's own attributor, side by side, and the floor.

For ResNet-18 and ResNet-50 (random weights: this is a speed benchmark) at 224 px, batch 1
and batch 32, each image with its own target, one run times:

* our ``lrp`` (default composite ``epsilon_plus_flat``: the whole call a worker makes,
  including the per-call layer replacement and the channel sum);
* Zennit's ``Gradient`` attributor with the same composite (``EpsilonPlusFlat``; others with
  ``--composites``) and its ``ResNetCanonizer``, registered and removed around each call (a
  service must leave the model unchanged between jobs), output relevance
  ``onehot(target) · logits``;
* the floor: one forward plus one backward pass of the model for the batch (the gradient of the
  summed target logits with respect to the input);
* our ``gradcam_lrp`` and ``gradual_extrapolation`` (defaults), for their ratio to the floor.

Runs of one setting are interleaved round-robin (after one warm-up call each), so machine noise
hits all of them alike; the median is reported. ``agreement`` is the largest absolute difference
between our pixel map and Zennit's channel-summed relevance, relative to Zennit's largest value
and ``r`` their mean Pearson correlation (the difference comes from Zennit's merged batch norm
computing ``x / sqrt(1 + eps)`` instead of the identity, and from its 1e-6 stabiliser on sums;
see ``lrp.py`` and the tests, where both are removed and the maps agree to 1e-9).

    nice -n 10 .venv/bin/python -m benchmarks.propagation --threads 1 --models resnet18
    nice -n 10 .venv/bin/python -m benchmarks.propagation --threads 1 --models resnet50
    .venv/bin/python -m benchmarks.propagation --device cuda     # on a GPU, all in one run

Prints a Markdown table (results: ``benchmarks/results/propagation.md``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from zennit.attribution import Gradient
from zennit.torchvision import ResNetCanonizer

from workers.explainers import ModelHandle, get_explainer
from workers.explainers.propagation.lrp_plan import zennit_composite

SIZE = 224
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


def ours(method: str, handle: ModelHandle, x: Tensor, targets: Tensor, **kw: Any) -> Runner:
    """Our explainer on the whole batch."""
    explain = get_explainer(method)
    return lambda: explain(handle, x, targets, **kw).saliency


def zennit_lrp(name: str, handle: ModelHandle, x: Tensor, targets: Tensor) -> Runner:
    """Zennit's attributor as its documentation shows, composite registered per call."""
    mean = torch.tensor(handle.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(handle.std, device=x.device).view(1, -1, 1, 1)

    def seed(output: Tensor) -> Tensor:
        return F.one_hot(targets, output.shape[1]).to(output) * output

    def run() -> Tensor:
        composite = zennit_composite(name, 1e-6, (0 - mean) / std, (1 - mean) / std)
        composite.canonizers = [ResNetCanonizer()]
        with Gradient(model=handle.model, composite=composite) as attributor:
            _, relevance = attributor(x, seed)
        return relevance.sum(dim=1)

    return run


def pearson(a: Tensor, b: Tensor) -> float:
    """Mean over rows of the Pearson correlation of two ``(B, H, W)`` map stacks."""
    values = []
    for u, v in zip(a.flatten(1).double(), b.flatten(1).double(), strict=True):
        u, v = u - u.mean(), v - v.mean()
        values.append(float(u @ v / (u.norm() * v.norm())))
    return statistics.fmean(values)


def time_all(runners: dict[str, Runner], reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each runner, the runs interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def setting(
    arch: str,
    batch: int,
    reps: int,
    device: torch.device,
    composites: list[str],
    hybrids: bool,
) -> list[str]:
    """Markdown rows for one model at one batch size."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    handle = ModelHandle(arch, model, (SIZE, SIZE), default_layer="layer4", architecture=arch)
    x = torch.randn(batch, 3, SIZE, SIZE, device=device)
    targets = torch.randint(0, 1000, (batch,), device=device)
    runners: dict[str, Runner] = {"floor": floor(model, x, targets)}
    for name in composites:
        runners[f"lrp:{name}"] = ours("lrp", handle, x, targets, composite=name)
        runners[f"zennit:{name}"] = zennit_lrp(name, handle, x, targets)
    if hybrids:
        runners["gradcam_lrp"] = ours("gradcam_lrp", handle, x, targets)
        runners["gradual_extrapolation"] = ours("gradual_extrapolation", handle, x, targets)
    outputs = {name: run() for name, run in runners.items()}  # warm-up, and the maps
    seconds = time_all(runners, reps, device)
    base = seconds["floor"]
    rows = []
    for name in composites:
        mine, theirs = seconds[f"lrp:{name}"], seconds[f"zennit:{name}"]
        reference = outputs[f"zennit:{name}"].detach()
        agreement = float((outputs[f"lrp:{name}"] - reference).abs().max() / reference.abs().max())
        r = pearson(outputs[f"lrp:{name}"], reference)
        rows.append(
            f"| {arch} | {batch} | lrp {name} | {mine * 1e3:.0f} | Zennit Gradient | "
            f"{theirs * 1e3:.0f} | {theirs / mine:.2f}× | {mine / base:.2f} | "
            f"{agreement:.1e} | {r:.5f} |"
        )
    for name in ("gradcam_lrp", "gradual_extrapolation"):
        if name in seconds:
            rows.append(
                f"| {arch} | {batch} | {name} | {seconds[name] * 1e3:.0f} | | | | "
                f"{seconds[name] / base:.2f} | | |"
            )
    rows.append(f"| {arch} | {batch} | floor (F + B) | {base * 1e3:.0f} | | | | 1.00 | | |")
    return rows


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--reps", type=int, default=5, help="timed runs at batch <= 8")
    parser.add_argument("--reps-large", type=int, default=2, help="timed runs at larger batches")
    parser.add_argument(
        "--composites", nargs="+", default=["epsilon_plus_flat"], help="LRP composites to time"
    )
    parser.add_argument("--no-hybrids", action="store_true", help="time LRP and the floor only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        "| model | batch | method | ours ms | reference | reference ms | speed-up | "
        "ours / floor | agreement | r |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch in args.models:
        for batch in args.batches:
            reps = args.reps if batch <= 8 else args.reps_large
            with torch.inference_mode(False):
                rows = setting(arch, batch, reps, device, args.composites, not args.no_hybrids)
                for row in rows:
                    print(row, flush=True)


if __name__ == "__main__":
    main()
