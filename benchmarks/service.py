"""Service benchmark: what HTTP + Redis + the worker loop add to a Grad-CAM, and what batching buys.

``.venv/bin/python -m benchmarks.service`` starts its own stack (``redis-server`` on a free port,
one ``python -m workers`` process, ``uvicorn app.main:app``), all configured by ``XPLAIN_*``
variables, then measures:

1. **Overhead.** Requests one at a time (``POST /v1/explanations`` with ``wait``, keep-alive),
   interleaved with the same explanation computed in this process by the worker's own handler
   (decode the same PNG, resize, normalise, predict, Grad-CAM, normalise, build the result).
   Overhead of request i = its latency - the in-process compute measured right before it;
   p50 and p95 for 112x112 uploads (the demo scenes' size) answered as JSON without heatmap
   rows (``?heatmap_data=false``), JSON with the rows, and PNG (``Accept: image/png``), and
   for 640x480 uploads answered as JSON without rows.
2. **Throughput.** 1, 8 and 32 concurrent clients (``httpx`` async) send requests back to back
   for a fixed time; requests per second and the mean group size the worker ran.

The model is the bundled demo model ``shapes`` when it exists, else the tiny test CNN of
``tests/worker/nets.py`` (the report says which). Results go to ``benchmarks/results/service.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.stack import Stack, running_stack

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "service.md"
DEMO_JSON = REPO / "workers" / "assets" / "shapes.json"


@dataclass
class Service:
    """The running stack and the model it serves."""

    stack: Stack
    models_file: str | None
    model: str

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.stack.url

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of redis, worker and gateway."""
        return self.stack.pids

    @property
    def workdir(self) -> Path:
        """Where the logs go."""
        return self.stack.workdir


def choose_model(workdir: Path, wanted: str) -> tuple[str, str | None, str]:
    """(model name, models file or None for the demo default, description)."""
    if wanted in ("auto", "shapes") and DEMO_JSON.exists():
        return "shapes", None, "bundled demo model `shapes` (112x112 input)"
    if wanted == "shapes":
        raise SystemExit("the demo model is not trained yet (workers/assets/shapes.json missing)")
    from tests.worker.nets import MODELS_TOML

    path = workdir / "models.toml"
    path.write_text(MODELS_TOML, encoding="utf-8")
    return "tiny", str(path), "tiny test CNN of tests/worker/nets.py (32x32 input; no demo model)"


@contextmanager
def running_service(model: str, threads: int) -> Iterator[Service]:
    """redis-server, one worker and the gateway as subprocesses; stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="xplain-bench-models-"))
    name, models_file, _ = choose_model(workdir, model)
    env = {"XPLAIN_TORCH_THREADS": str(threads), "XPLAIN_WORKER_NAME": "bench"}
    if models_file:
        env["XPLAIN_MODELS_FILE"] = models_file
    with running_stack(env) as stack:
        yield Service(stack, models_file, name)


def test_image(width: int = 112, height: int = 112) -> bytes:
    """A PNG upload of ``width`` x ``height``: a held-out demo scene (a shape on clutter)."""
    from workers.demo.scenes import EVAL_SEED, make_scenes

    scene = make_scenes(1, seed=EVAL_SEED, size=min(width, height)).images[0]
    pixels = (scene.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


UPLOADS = {"small": (112, 112), "photo": (640, 480)}
"""Upload sizes: the demo scenes' own size, and a typical photo."""


class InProcess:
    """The worker's handler on one job, in this process: the compute an ideal service adds."""

    def __init__(self, models_file: str | None, model: str, threads: int) -> None:
        import torch

        from app.contract.jobs import JobEnvelope
        from workers.grouping import Job, effective_params
        from workers.zoo import load_models, model_info

        if threads > 0:
            torch.set_num_threads(threads)
        self.handle = load_models(models_file, torch.device("cpu"))[model]
        self.classes = model_info(self.handle).num_classes
        envelope = JobEnvelope(
            job_id="bench", lane="fast", model=model, method="gradcam", params={}, enqueued_at=0
        )
        self.job = Job(envelope, "fast", "0-0", "", effective_params("gradcam", {}, 64), 1)

    def cpu_ms(self, image: bytes, n: int = 50) -> float:
        """Median CPU time (ms) of one explanation in this process."""
        times = []
        for _ in range(n):
            started = time.process_time()
            self.run(image)
            times.append((time.process_time() - started) * 1000)
        return statistics.median(times)

    def run(self, image: bytes) -> float:
        """Seconds for one explanation, bytes to result."""
        from workers.handler import GroupContext, run_group

        started = time.perf_counter()
        (outcome,) = run_group(GroupContext(self.handle, self.classes, 64), [self.job], [image])
        assert outcome.result is not None
        return time.perf_counter() - started


def sync_client(stack: Service) -> httpx.Client:
    """A keep-alive client with ``TCP_NODELAY``, as the async client has by default.

    Without it a multipart POST (headers and body written separately) waits for the server's
    delayed ACK: about 40 ms per request that belong to neither the client nor the service.
    """
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.HTTPTransport(socket_options=nodelay)
    return httpx.Client(base_url=stack.url, timeout=60, transport=transport)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(stack: Service) -> dict[str, float]:
    """CPU seconds of every part of the stack, and of this process (the clients)."""
    snapshot = {name: cpu_seconds(pid) for name, pid in stack.pids.items()}
    snapshot["clients"] = sum(os.times()[:2])
    return snapshot


RETRIES: list[str] = []
"""503 answers that were retried (their problem details), reported with the results."""


def post(client: httpx.Client, model: str, image: bytes, form: str) -> httpx.Response:
    """One synchronous explanation request in response form ``form`` (503s retried)."""
    params = {"heatmap_data": "false"} if form == "json" else {}
    headers = {"Accept": "image/png"} if form == "png" else {}
    for _ in range(10):
        response = client.post(
            "/v1/explanations",
            params=params,
            headers=headers,
            data={"method": "gradcam", "model": model, "wait": "30", "cache": "false"},
            files={"file": ("scene.png", image, "image/png")},
        )
        if response.status_code != 503:
            break
        RETRIES.append(response.text)
        time.sleep(min(1.0, float(response.headers.get("retry-after", 1))))
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text}")
    return response


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values), q))


FORMS = (("small", "json"), ("small", "json+rows"), ("small", "png"), ("photo", "json"))
"""(upload, response form) pairs measured for the overhead."""


def measure_overhead(
    stack: Service, local: InProcess, n: int
) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, float]]:
    """Per (upload, response form): latency, in-process compute and overhead percentiles
    (ms); and, from the small JSON answers' timings, p50 of where a request's time goes."""
    images = {name: test_image(*size) for name, size in UPLOADS.items()}
    out: dict[tuple[str, str], dict[str, float]] = {}
    parts: dict[str, list[float]] = {"gateway": [], "queued": [], "compute": [], "finish": []}
    with sync_client(stack) as client:
        for _ in range(20):  # warm-up: connections, caches, allocator
            for image in images.values():
                local.run(image)
                post(client, stack.model, image, "json")
        for upload, form in FORMS:
            image = images[upload]
            latencies, computes, overheads = [], [], []
            for _ in range(n):
                compute = local.run(image)
                started = time.perf_counter()
                response = post(client, stack.model, image, form)
                latency = time.perf_counter() - started
                latencies.append(latency * 1000)
                computes.append(compute * 1000)
                overheads.append((latency - compute) * 1000)
                if (upload, form) == ("small", "json"):
                    timings = response.json()["timings"]
                    parts["gateway"].append(latency * 1000 - timings["total_ms"])
                    parts["queued"].append(timings["queued_ms"])
                    parts["compute"].append(timings["compute_ms"])
                    parts["finish"].append(
                        timings["total_ms"] - timings["queued_ms"] - timings["compute_ms"]
                    )
            out[upload, form] = {
                "latency_p50": percentile(latencies, 50),
                "latency_p95": percentile(latencies, 95),
                "compute_p50": percentile(computes, 50),
                "overhead_p50": percentile(overheads, 50),
                "overhead_p95": percentile(overheads, 95),
            }
    return out, {name: percentile(values, 50) for name, values in parts.items()}


def gateway_intake(stack: Service, image: bytes, n: int) -> float:
    """p50 (ms) of ``POST`` with ``wait=0``: the gateway's intake alone (answers 202)."""
    times = []
    with sync_client(stack) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = client.post(
                "/v1/explanations",
                data={"method": "gradcam", "model": stack.model, "wait": "0", "cache": "false"},
                files={"file": ("scene.png", image, "image/png")},
            )
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code in (200, 202), response.text
            time.sleep(0.02)  # let the worker finish it: measure intake on an idle service
    return percentile(times, 50)


async def client_loop(
    client: httpx.AsyncClient, model: str, image: bytes, deadline: float, sizes: list[int]
) -> int:
    """Requests back to back until ``deadline``; returns how many succeeded."""
    done = 0
    while time.perf_counter() < deadline:
        response = await client.post(
            "/v1/explanations",
            params={"heatmap_data": "false"},
            data={"method": "gradcam", "model": model, "wait": "60", "cache": "false"},
            files={"file": ("scene.png", image, "image/png")},
        )
        if response.status_code == 200:
            done += 1
            sizes.append(int(response.json()["meta"]["group_size"]))
        elif response.status_code == 503:
            RETRIES.append(response.text)
            await asyncio.sleep(1.0)
        else:
            raise RuntimeError(f"{response.status_code}: {response.text}")
    return done


async def throughput(
    stack: Service, image: bytes, clients: int, seconds: float
) -> dict[str, float]:
    """Requests per second with ``clients`` concurrent clients, and the mean group size."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=stack.url, timeout=120, limits=limits) as client:
        warm = time.perf_counter() + 1.0
        await asyncio.gather(
            *(client_loop(client, stack.model, image, warm, []) for _ in range(clients))
        )
        sizes: list[int] = []
        cpu_before = cpu_snapshot(stack)
        started = time.perf_counter()
        deadline = started + seconds
        counts = await asyncio.gather(
            *(client_loop(client, stack.model, image, deadline, sizes) for _ in range(clients))
        )
        elapsed = time.perf_counter() - started
        cpu_after = cpu_snapshot(stack)
    done = max(1, sum(counts))
    cpu = {f"cpu_{k}": (cpu_after[k] - cpu_before[k]) * 1000 / done for k in cpu_before}
    return {
        "rps": sum(counts) / elapsed,
        "requests": float(sum(counts)),
        "group_mean": statistics.fmean(sizes) if sizes else 0.0,
        **cpu,
    }


def report(
    description: str,
    overhead: dict[tuple[str, str], dict[str, float]],
    parts: dict[str, float],
    intake: float,
    compute_cpu: float,
    rates: dict[int, dict[str, float]],
    args: argparse.Namespace,
) -> str:
    """The results as Markdown."""
    base = rates[min(rates)]["rps"]
    sizes = {
        name: f"{w}x{h} ({len(test_image(w, h)) // 1024} KiB)" for name, (w, h) in UPLOADS.items()
    }
    lines = [
        "# Service benchmark",
        "",
        f"Command: `nice -n 10 .venv/bin/python -m benchmarks.service --requests {args.requests} "
        f"--seconds {args.seconds:g} --threads {args.threads}`",
        "",
        f"Model: {description}. Method: `gradcam` (default layer). Uploads: PNG demo scenes "
        f"(held-out seed), {sizes['small']} and, as a photo-sized upload, {sizes['photo']}. "
        "One worker process and one gateway process (uvicorn) with one redis-server, on this "
        f"machine: CPU only, {os.cpu_count()} cores shared with other work (load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run), torch threads {args.threads} in the "
        "worker and in the in-process reference. Compare ratios, not absolute times.",
        "",
        "## Overhead of the service over the in-process compute (ms)",
        "",
        "Requests one at a time (keep-alive, `wait=30`); each is paired with the same "
        "explanation computed in this process just before it by the worker's own handler "
        "(PNG bytes to result: decode, resize, normalise, predict, Grad-CAM, normalise). "
        "Overhead = latency - that compute.",
        "",
        "| upload | response | latency p50 | latency p95 | in-process p50 | overhead p50 | "
        "overhead p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "json": "JSON, no heatmap rows (`?heatmap_data=false`)",
        "json+rows": "JSON with heatmap rows",
        "png": "PNG at upload size (`Accept: image/png`)",
    }
    for (upload, form), row in overhead.items():
        lines.append(
            f"| {UPLOADS[upload][0]}x{UPLOADS[upload][1]} | {names[form]} | "
            f"{row['latency_p50']:.1f} | {row['latency_p95']:.1f} | {row['compute_p50']:.1f} | "
            f"{row['overhead_p50']:.1f} | {row['overhead_p95']:.1f} |"
        )
    lines += [
        "",
        "Where a request's time goes (p50 over the 112x112 JSON requests, from their `timings`):",
        "",
        "| part | ms |",
        "|---|---|",
        "| gateway: HTTP, upload check and PNG re-encode, enqueue; wake-up, read, answer "
        f"| {parts['gateway']:.1f} |",
        f"| queued: enqueue to worker admission | {parts['queued']:.1f} |",
        "| worker compute (`compute_ms`: decode, resize, predict, Grad-CAM, normalise) "
        f"| {parts['compute']:.1f} |",
        f"| worker finish: atomic result write and completion event | {parts['finish']:.1f} |",
        f"| (gateway intake alone: `POST` with `wait=0`, answered 202) | {intake:.1f} |",
        "",
        "## Throughput (112x112 uploads, JSON without heatmap rows)",
        "",
        "CPU ms per request: CPU time each process used during the run divided by the "
        "requests served (insensitive to how much of the machine others took).",
        "",
        "| concurrent clients | requests/s | vs 1 client | mean group size | requests | "
        "CPU ms/request: worker | gateway | redis | clients |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for clients, row in rates.items():
        lines.append(
            f"| {clients} | {row['rps']:.1f} | {row['rps'] / base:.2f}x | "
            f"{row['group_mean']:.1f} | {int(row['requests'])} | {row['cpu_worker']:.1f} | "
            f"{row['cpu_gateway']:.1f} | {row['cpu_redis']:.1f} | {row['cpu_clients']:.1f} |"
        )
    one = rates[min(rates)]
    service_cpu = one["cpu_worker"] + one["cpu_gateway"] + one["cpu_redis"]
    lines += [
        "",
        f"CPU the service spends per request beyond the explanation itself ({min(rates)} "
        f"client): worker + gateway + redis {service_cpu:.1f} ms - in-process compute "
        f"{compute_cpu:.1f} ms = **{service_cpu - compute_cpu:.1f} ms**. On an idle machine "
        "the steps of one request run one after the other, so this is about the overhead "
        "latency such a machine would show (plus a few process wake-ups); the latencies above "
        "also hold the time the processes waited for a core.",
        "",
    ]
    if RETRIES:
        lines += [f"503 answers retried during the run: {len(RETRIES)} (first: {RETRIES[0]})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/service.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential samples per form")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (worker and here)")
    parser.add_argument("--model", default="auto", choices=["auto", "shapes", "tiny"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with running_service(args.model, args.threads) as stack:
        _, _, description = choose_model(stack.workdir, args.model)
        image = test_image(*UPLOADS["small"])
        local = InProcess(stack.models_file, stack.model, args.threads)
        overhead, parts = measure_overhead(stack, local, args.requests)
        intake = gateway_intake(stack, image, max(20, args.requests // 4))
        compute_cpu = local.cpu_ms(image)
        rates = {
            clients: asyncio.run(throughput(stack, image, clients, args.seconds))
            for clients in (int(c) for c in args.clients.split(","))
        }
    text = report(description, overhead, parts, intake, compute_cpu, rates, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
