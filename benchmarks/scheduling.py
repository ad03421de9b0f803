"""Scheduling benchmark: cheap jobs next to a long one, and the worker's forward throughput.

``.venv/bin/python -m benchmarks.scheduling`` starts a stack (``redis-server``, one worker, the
gateway; :mod:`benchmarks.stack`) serving the demo model and measures, through HTTP:

1. **Idle.** Each method of the mix (``fmo``, ``occlusion``, ``gradcam``, ``lime``, ``rise``,
   all at their defaults) alone on the idle service, ``--idle`` requests each, one at a time:
   the server's ``timings.total_ms``.
2. **Under load.** One long job (RISE, 8,000 masks) is queued; then ``--clients`` clients send
   the mix round-robin, each back to back, for ``--seconds``. Per method, p50 and p95 of
   ``total_ms`` against idle. The worker's model evaluations per second over the window (rows of
   every forward pass: the finished jobs' ``meta.forward_passes`` plus the long job's progress)
   against the model's forward-pass floor (rows per second of full batches of 64, measured in
   this process on one thread, as the worker runs, before and after the stack runs: the
   better of the two, since the machine is shared). The floor ignores each method's work
   besides the model, so the same rows are also costed at each method's own rate (rows per
   second of its compute alone, from phase 1): the time they would take run one by one,
   against the window's (1.00: scheduling them side by side costs nothing).

The clients run at ``nice 10`` (the service at normal priority): on a machine of few cores
they would otherwise slow down the service they measure.

``--root DIR`` runs the gateway and worker from another source tree (a ``git worktree`` of an
older commit) with the same harness, so "before" and "after" are measured alike; their reports
go side by side in ``benchmarks/results/scheduling.md`` with ``--label``.

``--gradcam-resnet`` adds the service's Grad-CAM on torchvision ResNet-18 (random weights) at
224 px against Captum's ``LayerGradCam`` + upsample on ``layer4`` in this process, interleaved:
the job's ``compute_ms`` against the in-process call.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from benchmarks.stack import REPO, distinct, running_stack

RESULTS = REPO / "benchmarks" / "results" / "scheduling.md"
MIX = ("fmo", "occlusion", "gradcam", "lime", "rise")
CHEAP = ("fmo", "occlusion", "gradcam")
LONG = {"n_masks": 8000}


def scene_png(index: int, size: int = 112) -> bytes:
    """A held-out demo scene as PNG bytes."""
    from workers.demo.scenes import EVAL_SEED, make_scenes

    scene = make_scenes(1, seed=EVAL_SEED + index, size=size).images[0]
    pixels = (scene.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def post(
    client: httpx.Client, method: str, image: bytes, params: dict[str, Any] | None, wait: float
) -> dict[str, Any]:
    """One job through ``POST /v1/explanations``; the job JSON (after polling if needed)."""
    data = {"method": method, "model": "shapes", "wait": str(wait)}
    if params:
        data["params"] = json.dumps(params)
    response = client.post(
        "/v1/explanations",
        data=data,
        files={"file": ("scene.png", distinct(image), "image/png")},
        params={"heatmap_data": "false"},
    )
    if response.status_code not in (200, 202):
        raise RuntimeError(f"{method}: {response.status_code} {response.text[:300]}")
    return response.json()  # type: ignore[no-any-return]


def planned_passes(method: str, params: dict[str, Any] | None = None) -> int:
    """Forward passes the cost model plans for ``method`` on the demo model (112 px)."""
    from app.contract.jobs import ModelInfo
    from app.contract.methods import parse_params

    info = ModelInfo(name="shapes", input_size=(112, 112), num_classes=5, labels=[], mean=[],
                     std=[], default_layer=None, layers=[])  # fmt: skip
    return parse_params(method, params or {}).passes(info).forward


def evaluations(job: dict[str, Any], method: str, params: dict[str, Any] | None = None) -> float:
    """Rows the job put through the model so far: its reported passes once it succeeded (older
    workers did not count the prediction's), else its progress times its planned passes."""
    if job["status"] == "succeeded":
        passes = float((job.get("meta") or {}).get("forward_passes", 0))
        return passes if "cost" in job else passes + 1
    if job["status"] == "running":
        planned = (job.get("cost") or {}).get("forward_passes") or planned_passes(method, params)
        return float(job["progress"]) * planned
    return 0.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``."""
    return float(np.quantile(np.array(values), q)) if values else float("nan")


def idle_phase(url: str, count: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``total_ms`` of each method alone, ``count`` times (after one warm-up each), and each
    method's own rate: rows per second of its compute when it has the worker to itself."""
    out: dict[str, list[float]] = {}
    rates: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=600) as client:
        for method in MIX:
            post(client, method, scene_png(0), None, 300)
            jobs = [post(client, method, scene_png(i + 1), None, 300) for i in range(count)]
            out[method] = [job["timings"]["total_ms"] for job in jobs]
            rows = sum(evaluations(job, method) for job in jobs)
            rates[method] = rows / (sum(job["timings"]["compute_ms"] for job in jobs) / 1000)
    return out, rates


def load_phase(
    url: str, clients: int, seconds: float
) -> tuple[dict[str, list[float]], dict[str, list[tuple[float, float]]], dict[str, float], float]:
    """``total_ms`` and (``queued_ms``, ``compute_ms``) per method under load, the rows each
    method put through the model in the window, and the window's length in seconds.

    Clients submit (``wait=0``) and poll; at the deadline every job seen is read once, and its
    rows so far are counted (finished: all; running: by progress).
    """
    per_method: dict[str, list[float]] = {m: [] for m in MIX}
    parts: dict[str, list[tuple[float, float]]] = {m: [] for m in MIX}
    seen: list[tuple[str, str]] = []  # (method, job id)
    lock = threading.Lock()
    with httpx.Client(base_url=url, timeout=600) as control:
        long_job = post(control, "rise", scene_png(99), LONG, 0)
        location = f"/v1/jobs/{long_job['job_id']}"
        while control.get(location).json()["status"] == "queued":
            time.sleep(0.05)
        started = time.monotonic()
        deadline = started + seconds

        def client_loop(offset: int) -> None:
            with httpx.Client(base_url=url, timeout=600) as client:
                turn = offset
                while time.monotonic() < deadline:
                    method = MIX[turn % len(MIX)]
                    turn += 1
                    job = post(client, method, scene_png(turn % 16), None, 0)
                    with lock:
                        seen.append((method, job["job_id"]))
                    while job["status"] in ("queued", "running"):
                        if time.monotonic() > deadline + 5:
                            return
                        time.sleep(0.1)
                        job = client.get(f"/v1/jobs/{job['job_id']}",
                                         params={"heatmap_data": "false"}).json()  # fmt: skip
                    if job["status"] == "succeeded" and time.monotonic() <= deadline:
                        timings = job["timings"]
                        with lock:
                            per_method[method].append(timings["total_ms"])
                            parts[method].append((timings["queued_ms"], timings["compute_ms"]))

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, deadline - time.monotonic()))
        with lock:
            jobs = [*seen, ("rise", long_job["job_id"])]
        rows = dict.fromkeys(MIX, 0.0)
        for method, job_id in jobs:
            state = control.get(f"/v1/jobs/{job_id}", params={"heatmap_data": "false"}).json()
            params = LONG if job_id == long_job["job_id"] else None
            rows[method] += evaluations(state, method, params)
        elapsed = time.monotonic() - started
        for thread in threads:
            thread.join()
        control.delete(location)
    return per_method, parts, rows, elapsed


def forward_floor(threads: int) -> float:
    """Rows per second of the demo model in full batches of 64 (best of 5, this process)."""
    from workers.explainers.forward import forward_logits, prefers_channels_last
    from workers.zoo import load_models

    torch.set_num_threads(threads)
    handle = load_models(None, torch.device("cpu"))["shapes"]
    batch = torch.randn(64, 3, *handle.input_size)
    channels_last = prefers_channels_last(handle.model)
    forward_logits(handle.model, batch, "float32", channels_last)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        forward_logits(handle.model, batch, "float32", channels_last)
        best = min(best, time.perf_counter() - started)
    return 64 / best


def gradcam_resnet(root: Path, threads: int, rounds: int) -> dict[str, float]:
    """Service Grad-CAM on ResNet-18 at 224 px vs Captum LayerGradCam + upsample (ms)."""
    from captum.attr import LayerAttribution, LayerGradCam
    from torchvision.models import resnet18

    workdir = Path(tempfile.mkdtemp(prefix="xplain-resnet-"))
    models = workdir / "models.toml"
    models.write_text('[[models]]\nname = "resnet18"\ntorchvision = "resnet18"\nweights = "none"\n')
    env = {"XPLAIN_MODELS_FILE": str(models), "XPLAIN_TORCH_THREADS": str(threads)}
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = resnet18().eval()
    cam = LayerGradCam(model, model.layer4)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(224, 224, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    image = buffer.getvalue()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    service_ms, captum_ms = [], []
    with running_stack(env, root=root) as stack, httpx.Client(base_url=stack.url, timeout=300) as c:
        data = {"method": "gradcam", "model": "resnet18", "wait": "60"}
        for index in range(rounds + 2):
            files = {"file": ("x.png", distinct(image), "image/png")}
            job = c.post("/v1/explanations", data=data, files=files,
                         params={"heatmap_data": "false"}).json()  # fmt: skip
            started = time.perf_counter()
            attribution = cam.attribute(x, target=int(job["target"]["index"]))
            LayerAttribution.interpolate(attribution, (224, 224), "bilinear")
            elapsed = (time.perf_counter() - started) * 1000
            if index >= 2:  # warm-up rounds
                service_ms.append(job["timings"]["compute_ms"])
                captum_ms.append(elapsed)
    ratios = [s / c for s, c in zip(service_ms, captum_ms, strict=True)]
    return {
        "service_ms": statistics.median(service_ms),
        "captum_ms": statistics.median(captum_ms),
        "ratio": statistics.median(ratios),
    }


def report(label: str, idle: dict[str, list[float]], rates: dict[str, float],
           load: dict[str, list[float]], parts: dict[str, list[tuple[float, float]]],
           rows: dict[str, float], elapsed: float, floor: float,
           args: argparse.Namespace) -> str:  # fmt: skip
    """The markdown section of one run."""
    rate = sum(rows.values()) / elapsed
    own_seconds = sum(rows[m] / rates[m] for m in MIX)  # the same rows, each at its own rate
    lines = [
        f"### {label}",
        "",
        f"`{args.clients}` clients for {args.seconds:.0f} s beside RISE 8,000 masks; idle: "
        f"{args.idle} requests per method. Worker: 1 process, {args.threads} torch thread(s).",
        "",
        "| method | idle p50 | idle p95 | load p50 | load p95 | p50 ÷ idle | p95 ÷ idle | "
        "load: queued / compute p50 | jobs | alone: rows/s ÷ floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in MIX:
        i50, i95 = percentile(idle[method], 0.5), percentile(idle[method], 0.95)
        l50, l95 = percentile(load[method], 0.5), percentile(load[method], 0.95)
        queued = percentile([q for q, _ in parts[method]], 0.5)
        compute = percentile([c for _, c in parts[method]], 0.5)
        lines.append(
            f"| {method}{' (cheap)' if method in CHEAP else ''} | {i50:.0f} | {i95:.0f} | "
            f"{l50:.0f} | {l95:.0f} | {l50 / i50:.2f}× | {l95 / i50:.2f}× | "
            f"{queued:.0f} / {compute:.0f} | {len(load[method])} | "
            f"{rates[method] / floor:.2f} |"
        )
    lines += [
        "",
        f"Model evaluations per second under load: **{rate:.0f}**, against the floor of "
        f"{floor:.0f} rows/s (full batches of 64 on one thread): **{rate / floor:.2f}×**. "
        "(Last column: each method's own rate when it has the worker to itself; a method's "
        "work besides the model — masks, superpixels, the surrogate — keeps it under the floor "
        "whatever the scheduling.)",
        "",
        "Rows under load by method: "
        + ", ".join(f"{m} {rows[m]:.0f}" for m in MIX)
        + f". At each method's own rate (last column) they take {own_seconds:.1f} s of the "
        f"{elapsed:.1f} s window: **{own_seconds / elapsed:.2f}** of it (1.00: running the jobs "
        "side by side costs nothing against running each alone; below 1: what scheduling, "
        "the gateway and the clients on the same cores cost).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--label", default="after")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--idle", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gradcam-resnet", type=int, default=0, metavar="ROUNDS")
    parser.add_argument("--out", type=Path, default=None, help="append the section here")
    args = parser.parse_args()
    env = {"XPLAIN_TORCH_THREADS": str(args.threads), "XPLAIN_WORKER_NAME": "bench"}
    started = time.time()
    floor_before = forward_floor(args.threads)
    with running_stack(env, root=args.root) as stack:
        os.nice(10)  # the clients yield the CPU to the service they measure (2 shared cores)
        idle, rates = idle_phase(stack.url, args.idle)
        load, parts, rows, elapsed = load_phase(stack.url, args.clients, args.seconds)
    floor = max(floor_before, forward_floor(args.threads))  # the quieter of two measurements
    text = report(args.label, idle, rates, load, parts, rows, elapsed, floor, args)
    if args.gradcam_resnet:
        got = gradcam_resnet(args.root, args.threads, args.gradcam_resnet)
        text += (
            f"\nGrad-CAM, ResNet-18 at 224 px (random weights), median of {args.gradcam_resnet}: "
            f"service `compute_ms` {got['service_ms']:.1f} ms, Captum `LayerGradCam` + upsample "
            f"{got['captum_ms']:.1f} ms: **{got['ratio']:.2f}×**.\n"
        )
    text += (
        f"\n({time.time() - started:.0f} s; load average {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__})\n"
    )
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
