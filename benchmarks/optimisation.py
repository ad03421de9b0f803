"""Optimisation family: cost per image alone and in a group, against the floor and TorchRay.

On ResNet-18 (random weights: a speed benchmark) at 224 px, side by side in one run and at the
*same number of iterations* for every method and implementation:

* each of ``meaningful_perturbation``, ``extremal_perturbation`` (one area, 0.1) and
  ``neuromask`` on one image, then on a group of ``--group`` images optimised together;
* the floor: one forward + one backward (w.r.t. the input) of a batch of the same number of
  rows, measured in the same run, × iterations. "× floor" is the method's time over that;
* TorchRay's ``extremal_perturbation`` (same iterations, one area), which takes one image at a
  time, so a group costs ``group`` calls. TorchRay is CC BY-NC 4.0: installed only to be
  measured (``pip install --no-deps torchray``), never imported by the service.

Meaningful perturbation runs with ``init="random"`` so that only iterations are timed;
``--disc-search`` adds a row with its default initialisation (36 forwards per image, once).
The machine may be shared: every configuration is timed in each of ``--rounds`` interleaved
rounds and the best kept, wall-clock and CPU time (``time.process_time``, all threads) apart;
ratios are given for both.

    nice -n 10 .venv/bin/python -m benchmarks.optimisation               # ~5 min on 2 CPU cores
    .venv/bin/python -m benchmarks.optimisation --iterations 5 --group 2  # smoke run

Prints a Markdown report (results: ``benchmarks/results/optimisation.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from workers.explainers import get_explainer
from workers.explainers.base import ModelHandle
from workers.explainers.optimisation.filters import gaussian_blur

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
METHODS: dict[str, dict[str, Any]] = {
    "meaningful_perturbation": {"init": "random"},
    "extremal_perturbation": {"areas": (0.1,)},
    "neuromask": {},
}


@dataclass
class Job:
    """One configuration to time: best wall-clock (and its CPU time) over the rounds."""

    method: str
    impl: str
    images: int
    run: Callable[[], object]
    floor_of: int | None = None  # rows per forward+backward (the floor is per that batch)
    note: str = ""
    wall: float = float("inf")
    cpu: float = float("nan")

    def measure(self) -> None:
        """Time one call; keep the fastest wall-clock and the least CPU time seen."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.wall = min(self.wall, wall)
        self.cpu = cpu if math.isnan(self.cpu) else min(self.cpu, cpu)


def images(count: int, size: int, seed: int = 0) -> Tensor:
    """``(count, 3, size, size)`` normalised inputs: smooth colour fields with a bright box."""
    generator = torch.Generator().manual_seed(seed)
    fields = gaussian_blur(torch.rand(count, 3, size, size, generator=generator), size / 16)
    fields = (fields - fields.amin(dim=(2, 3), keepdim=True)) * 4
    for index in range(count):
        y, x = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        fields[index, :, y : y + size // 3, x : x + size // 3] = torch.rand(3, 1, 1) + 0.5
    mean = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    return (fields.clamp(0, 1) - mean) / std


def forward_backward(model: nn.Module, rows: Tensor, targets: Tensor) -> Callable[[], None]:
    """One forward and one backward w.r.t. the input: a mask optimiser's per-step floor."""

    def run() -> None:
        with torch.enable_grad():
            x = rows.clone().requires_grad_(True)
            score = model(x).gather(1, targets.view(-1, 1)).sum()
            torch.autograd.grad(score, x)

    return run


def our_jobs(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    iterations: int,
    group: int,
    disc_search: bool,
) -> list[Job]:
    """Every method on one image and on ``group`` images."""
    runs = [(name, count, params, "") for name, params in METHODS.items() for count in (1, group)]
    if disc_search:
        runs.append(("meaningful_perturbation", group, {}, "default init: disc search, 36 F/image"))
    return [
        Job(
            name, "xplain", count,
            partial(
                get_explainer(name), handle, inputs[:count], targets[:count],
                iterations=iterations, **params,
            ),
            floor_of=count, note=note,
        )
        for name, count, params, note in runs
    ]  # fmt: skip


def torchray_jobs(
    model: nn.Module, inputs: Tensor, targets: Tensor, iterations: int, group: int
) -> list[Job]:
    """TorchRay's extremal perturbation, one image per call (its only mode)."""
    try:
        from torchray.attribution.extremal_perturbation import extremal_perturbation
    except ImportError as error:  # not installed: say so in the report
        return [Job("extremal_perturbation", "TorchRay", 1, lambda: None, note=str(error))]
    flags = [p.requires_grad for p in model.parameters()]

    def run(count: int) -> None:
        try:
            for index in range(count):
                extremal_perturbation(
                    model, inputs[index : index + 1], int(targets[index]), areas=[0.1],
                    max_iter=iterations,
                )  # fmt: skip
        finally:  # TorchRay switches requires_grad off on every parameter and leaves it so
            for parameter, flag in zip(model.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)

    return [
        Job("extremal_perturbation", "TorchRay", n, partial(run, n), floor_of=1) for n in (1, group)
    ]


def report(jobs: list[Job], floors: dict[int, Job], args: argparse.Namespace) -> str:
    """Markdown: the settings, the floors, then one line per run."""
    lines = [
        f"ResNet-18 (random weights), {args.size} px, {args.iterations} iterations, "
        f"group of {args.group}, best of {args.rounds} interleaved rounds; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({platform.machine()}).",
        "",
        "Floor, one forward + backward (wall / CPU s): "
        + ", ".join(
            f"{n} row(s) {job.wall:.3f} / {job.cpu:.3f}" for n, job in sorted(floors.items())
        )
        + ".",
        "",
        "| method | impl | images | wall s / image | CPU s / image | group ÷ one, wall "
        "| group ÷ one, CPU | × floor, CPU | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    one = {(j.method, j.impl): j for j in jobs if j.images == 1}
    for j in jobs:
        base = one.get((j.method, j.impl))
        wall = f"{j.wall / base.wall:.2f}" if base and j.images > 1 else "–"
        cpu = f"{j.cpu / base.cpu:.2f}" if base and j.images > 1 else "–"
        floor = "–"
        if j.floor_of:  # `images / floor_of` batches of `floor_of` rows, every iteration
            cost = floors[j.floor_of].cpu * args.iterations * j.images / j.floor_of
            floor = f"{j.cpu / cost:.2f}"
        lines.append(
            f"| {j.method} | {j.impl} | {j.images} | {j.wall / j.images:.3f} | "
            f"{j.cpu / j.images:.3f} | {wall} | {cpu} | {floor} | {j.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run everything once, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-torchray", action="store_true")
    parser.add_argument(
        "--disc-search", action="store_true", help="also time MP's default initialisation"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="torch.meshgrid")  # from TorchRay
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    handle = ModelHandle("resnet18", model, (args.size, args.size), **IMAGENET)
    inputs = images(args.group, args.size)
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1)
    floors = {
        n: Job("floor", "torch", n, forward_backward(model, inputs[:n], targets[:n]))
        for n in (1, args.group)
    }
    jobs = our_jobs(handle, inputs, targets, args.iterations, args.group, args.disc_search)
    if not args.no_torchray:
        jobs += torchray_jobs(model, inputs, targets, args.iterations, args.group)
    for floor in floors.values():
        floor.run()  # warm-up
    for _ in range(args.rounds):
        for job in [*floors.values(), *jobs, *floors.values()]:
            job.measure()
    print(report(jobs, floors, args))


if __name__ == "__main__":
    main()
