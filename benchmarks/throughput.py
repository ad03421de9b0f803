"""What one worker does per second, per method: the figures that size a deployment.

``.venv/bin/python -m benchmarks.throughput --model resnet50 --device cuda --jobs 16`` loads the
model the way a worker does (a models.toml entry: torchvision architecture, random weights, the
worker's warm-up and timing), builds the worker's scheduler and handles (forward passes through
the per-model batcher, shared between jobs), and for each method, with its default parameters,
hands it ``--jobs`` jobs at once (fewer where they would take much longer than ``--budget-s``),
as a worker does after claiming that many entries, then times until every one has finished.
It reports jobs per second, model rows per second, and the cost model's estimate of the same
work against the measured seconds (the estimate is what the gateway's cost quota,
``Retry-After`` and the scheduler use). No Redis: this is the worker's compute alone;
``benchmarks/redis_protocol.py`` measures the queue's side.

Results: ``benchmarks/results/throughput.md`` with ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.contract.cost import job_cost
from app.contract.jobs import JobEnvelope
from app.contract.methods import method_specs, parse_params
from workers.explainers import ModelHandle, explainer_names
from workers.grouping import Job, effective_params, group_jobs
from workers.handler import GroupContext, Outcome, run_group
from workers.runtime import choose_device, describe
from workers.scheduler import Scheduler, Task
from workers.zoo import load_models

FAST_FIRST = [
    "gradcam", "gradcam_pp", "xgradcam", "layercam", "integrated_gradcam", "scorecam",
    "smooth_gradcam_pp", "lrp", "gradcam_lrp", "excitation_backprop", "gradual_extrapolation",
    "fmo", "occlusion", "rise", "lime", "extremal_perturbation", "meaningful_perturbation",
    "neuromask",
]  # fmt: skip
"""Methods in the order of the table (the ones this worker does not know are left out)."""


def images(count: int, size: int, seed: int) -> list[bytes]:
    """``count`` PNG uploads: smooth random colour fields with a bright square each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        picture = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        array = np.array(picture)
        x, y = rng.integers(0, size * 3 // 4, 2)
        array[y : y + size // 4, x : x + size // 4] = 255
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class Bench:
    """The worker's compute path without its queue: scheduler, handles, groups, cost model."""

    def __init__(self, handle: ModelHandle, batch_size: int) -> None:
        self.info = describe(handle, batch_size)
        self.batch_size = batch_size
        self.scheduler = Scheduler(batch_size, pass_budget_s=float("inf"))
        self.handle = replace(
            handle,
            evaluator=partial(self.scheduler.evaluate, handle.model),
            offloader=self.scheduler.offload,
        )
        self.specs = method_specs()

    def jobs(self, method: str, uploads: list[bytes]) -> list[Job]:
        """One job per upload, with the method's defaults, as a worker prepares them."""
        params = effective_params(method, {}, self.batch_size)
        passes = parse_params(method, params).passes(self.info)
        cost_s = job_cost(passes, self.info, []).seconds
        out = []
        for data in uploads:
            envelope = JobEnvelope(
                job_id=uuid.uuid4().hex, lane="fast", model=self.handle.name, method=method,
                params=params, enqueued_at=time.time(),
            )  # fmt: skip
            job = Job(envelope, "fast", "0-0", envelope.model_dump_json(), params, image=data)
            job.cost_s = cost_s
            out.append(job)
        return out

    def run(self, jobs: list[Job]) -> tuple[float, list[Outcome]]:
        """Seconds until every job has finished; their outcomes."""
        if self.handle.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for group in group_jobs(jobs):
            groups = [group] if self.specs[group[0].method].grouped else [[j] for j in group]
            for members in groups:
                self._submit(members)
        outcomes: list[Outcome] = []
        while self.scheduler.busy:
            for task in self.scheduler.step():
                if task.error is not None:
                    raise task.error
                outcomes.extend(task.result)
        if self.handle.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, outcomes

    def _submit(self, group: list[Job]) -> None:
        task = Task(
            name=f"{group[0].method}:{group[0].job_id[:8]}",
            body=lambda: None,
            cost_s=sum(job.cost_s for job in group),
            pure=self.specs[group[0].method].family == "perturbation",
        )
        ctx = GroupContext(
            self.handle, self.info.num_classes, self.batch_size,
            progress=lambda done, total: self.scheduler.pause(done / total if total else None),
        )  # fmt: skip
        task.body = partial(run_group, ctx, group, [job.image for job in group])
        self.scheduler.submit(task)


def measure(
    bench: Bench, method: str, uploads: list[bytes], warm: list[bytes], budget_s: float
) -> dict[str, Any]:
    """One method's row: a warm-up round on ``warm``, then the timed round, on as many of
    ``uploads`` as fit in about ``budget_s`` at the warm-up's pace (at least two)."""
    warm_s, _ = bench.run(bench.jobs(method, warm))
    fits = int(budget_s / max(warm_s / len(warm), 1e-6))
    count = max(2, min(len(uploads), fits))
    rows_before = bench.scheduler.stats()["rows"]
    jobs = bench.jobs(method, uploads[:count])
    seconds, outcomes = bench.run(jobs)
    failed = [o.problem for o in outcomes if o.problem is not None]
    if failed:
        raise RuntimeError(f"{method}: {failed[0]}")
    rows = bench.scheduler.stats()["rows"] - rows_before
    passes = [o.result.meta.get("forward_passes", 0) for o in outcomes if o.result is not None]
    estimate = sum(job.cost_s for job in jobs)
    return {
        "method": method,
        "jobs": count,
        "jobs_per_s": count / seconds,
        "ms_per_job": seconds * 1000 / count,
        "rows_per_s": rows / seconds,
        "passes_per_job": float(np.mean(passes)) if passes else 0.0,
        "estimate_ratio": estimate / seconds,
    }


def report(rows: list[dict[str, Any]], args: argparse.Namespace, bench: Bench) -> str:
    """The markdown section of a run."""
    device = bench.handle.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    lines = [
        f"### {bench.handle.name}, {device.type} ({name or 'cpu'}), up to {args.jobs} jobs at once",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); "
        f"batch size {args.batch_size}; measured by the worker at start: forward "
        f"{bench.info.forward_ms:.3f} ms per image, forward + backward "
        f"{bench.info.gradient_ms:.2f} ms per image.",
        "",
        "| method (defaults) | jobs at once | jobs/s | ms per job | model rows/s "
        "| passes per job | cost model ÷ measured |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['jobs']} | {row['jobs_per_s']:.2f} "
            f"| {row['ms_per_job']:.1f} "
            f"| {row['rows_per_s']:.0f} | {row['passes_per_job']:.0f} "
            f"| {row['estimate_ratio']:.2f} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help='a torchvision architecture, or "demo"')
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="about this long per method (≥ 2 jobs)"
    )
    parser.add_argument("--methods", default="", help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    known = set(explainer_names())
    chosen = args.methods.split(",") if args.methods else [m for m in FAST_FIRST if m in known]
    device = choose_device(args.device)
    if args.model == "demo":
        (handle,) = load_models(None, device).values()
    else:
        with tempfile.TemporaryDirectory() as work:
            models = Path(work) / "models.toml"
            models.write_text(
                f'[[models]]\nname = "{args.model}"\ntorchvision = "{args.model}"\n'
                'weights = "none"\n'
            )
            handle = load_models(str(models), device)[args.model]
    bench = Bench(handle, args.batch_size)
    size = handle.input_size[0] if handle.input_size else 224
    uploads, warm = images(args.jobs, size, 0), images(2, size, 1)
    rows = []
    for method in chosen:
        row = measure(bench, method, uploads, warm, args.budget_s)
        print(json.dumps(row), flush=True)
        rows.append(row)
    text = report(rows, args, bench)
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
