"""A local cluster behind a real load balancer, and a load test with a rolling update and a crash.

``.venv/bin/python -m benchmarks.cluster --seconds 60`` starts ``redis-server``, two workers,
two gateways (``python -m app``) and Debian's nginx in front of them (round robin; a gateway that
refuses connections is skipped: ``proxy_next_upstream error timeout``), then runs ``--clients``
clients against nginx for ``--seconds``: each sends a job of the method mix (``POST
/v1/explanations`` with ``wait``), polls it until it ends if it got 202, and sends the next one.
Meanwhile, at a third of the run, gateway 1 gets SIGTERM (it drains: readiness fails, waiting
requests answer 202, the process exits) and is started again — a rolling update — and at half
the run worker 1 is killed (SIGKILL): its jobs are taken over by the other worker after the
visibility timeout. The report counts failed requests (anything but 200/202, or a transport
error) and lost jobs (submitted, never finished), and gives requests per second and latency
percentiles. Results: ``benchmarks/results/cluster.md`` with ``--out``.

The load generator is a few lines of asyncio + httpx rather than locust: it needs exactly this
submit-then-poll client, per-request accounting of the jobs, and the fault schedule in the same
process, and adds no dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from PIL import Image

from benchmarks.stack import REPO, free_port, wait_until

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  client_max_body_size 25m;
  upstream gateways {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_next_upstream error timeout;
      proxy_connect_timeout 2s;
      proxy_read_timeout 300s;
      proxy_buffering off;
    }}
  }}
}}
"""
"""A gateway that refuses connections (stopped, or draining) is skipped for 10 s; a POST is
passed on only when it was never sent (connection refused), so no job is created twice."""


def nginx_binary() -> str | None:
    """Debian's nginx, if installed."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


@dataclass
class Cluster:
    """The running processes."""

    url: str
    redis_url: str
    work: Path
    env: dict[str, str]
    gateway_ports: list[int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> None:
        """Start (or restart) process ``name``."""
        log = (self.work / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            args, cwd=REPO, env={**self.env, **(extra or {})}, stdout=log, stderr=subprocess.STDOUT
        )

    def start_gateway(self, index: int) -> None:
        """Gateway ``index`` on its fixed port."""
        port = self.gateway_ports[index]
        self.spawn(f"gateway{index}", [sys.executable, "-m", "app", "--port", str(port),
                                       "--graceful-s", "10"])  # fmt: skip

    def start_worker(self, index: int) -> None:
        """Worker ``index``."""
        name = f"worker{index}"
        self.spawn(name, [sys.executable, "-m", "workers"], {"XPLAIN_WORKER_NAME": name})

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal ``name`` and wait for it to exit; its exit code."""
        process = self.processes[name]
        process.send_signal(sig)
        return process.wait(timeout=timeout)

    def gateway_ready(self, index: int) -> bool:
        """Whether gateway ``index`` answers /readyz with 200."""
        try:
            url = f"http://127.0.0.1:{self.gateway_ports[index]}/readyz"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False


@contextmanager
def running_cluster(
    env: dict[str, str] | None = None, *, gateways: int = 2, workers: int = 2
) -> Iterator[Cluster]:
    """Redis, ``workers`` workers, ``gateways`` gateways and nginx; all stopped on exit."""
    nginx = nginx_binary()
    redis_bin = shutil.which("redis-server")
    if nginx is None or redis_bin is None:
        raise RuntimeError("the cluster needs nginx and redis-server (scripts/test-deps.sh)")
    work = Path(tempfile.mkdtemp(prefix="xplain-cluster-"))
    work.chmod(0o755)  # nginx's workers run unprivileged when it is started as root
    for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / folder).mkdir()
        (work / folder).chmod(0o777)
    redis_port, nginx_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XPLAIN_REDIS_URL": redis_url,
        "XPLAIN_MAX_QUEUE_DEPTH": "10000",
        **(env or {}),
    }
    cluster = Cluster(f"http://127.0.0.1:{nginx_port}", redis_url, work, full_env,
                      [free_port() for _ in range(gateways)])  # fmt: skip
    servers = "\n".join(
        f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;"
        for port in cluster.gateway_ports
    )
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, servers=servers, port=nginx_port))
    try:
        cluster.spawn("redis", [redis_bin, "--port", str(redis_port), "--save", "",
                                "--appendonly", "no", "--dir", str(work)])  # fmt: skip
        wait_until(redis.Redis(port=redis_port).ping, 10, "redis")
        for index in range(workers):
            cluster.start_worker(index)
        for index in range(gateways):
            cluster.start_gateway(index)
        cluster.spawn("nginx", [nginx, "-c", str(conf), "-e", str(work / "nginx-error.log")])
        for index in range(gateways):
            wait_until(lambda index=index: cluster.gateway_ready(index), 120, f"gateway {index}")
        wait_until(lambda: httpx.get(f"{cluster.url}/readyz").status_code == 200, 30, "nginx")
        yield cluster
    finally:
        for process in reversed(cluster.processes.values()):
            if process.poll() is None:
                process.terminate()
        for process in cluster.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class Tally:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)
    """job id -> its last known status."""
    events: list[str] = field(default_factory=list)


def image_png(seed: int, size: int) -> bytes:
    """A noise image (one per seed: no two jobs are identical work, which the gateway would
    answer from the stored result)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def one_job(
    client: httpx.AsyncClient, mix: list[dict[str, Any]], turn: int, size: int, tally: Tally
) -> None:
    """Submit one job, poll it to its end; record latency, failures and the job."""
    job = mix[turn % len(mix)]
    data = {"wait": "10", **{k: v if isinstance(v, str) else json.dumps(v) for k, v in job.items()}}
    files = {"file": ("x.png", image_png(turn, size), "image/png")}
    started = time.perf_counter()
    try:
        response = await client.post("/v1/explanations", data=data, files=files,
                                     params={"heatmap_data": "false"})  # fmt: skip
        if response.status_code not in (200, 202):
            tally.failures.append(f"POST {response.status_code}: {response.text[:200]}")
            return
        body = response.json()
        tally.jobs[body["job_id"]] = body["status"]
        while body["status"] in ("queued", "running"):
            await asyncio.sleep(0.2)
            polled = await client.get(f"/v1/jobs/{body['job_id']}",
                                      params={"heatmap_data": "false"})  # fmt: skip
            if polled.status_code != 200:
                tally.failures.append(f"GET {polled.status_code}: {polled.text[:200]}")
                return
            body = polled.json()
            tally.jobs[body["job_id"]] = body["status"]
        if body["status"] != "succeeded":
            tally.failures.append(f"job {body['job_id']} {body['status']}: {body.get('error')}")
        tally.latencies.append(time.perf_counter() - started)
    except httpx.HTTPError as error:
        tally.failures.append(f"transport: {type(error).__name__}: {error}")


async def faults(
    cluster: Cluster, seconds: float, tally: Tally, rolling: bool, crash: bool
) -> None:
    """A rolling update of gateway 1 at a third of the run, a SIGKILL of worker 1 at half."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if rolling:
        await asyncio.sleep(seconds / 3)
        code = await asyncio.to_thread(cluster.stop, "gateway1", signal.SIGTERM)
        # uvicorn re-raises SIGTERM once its graceful shutdown is done: -15 is a clean drain
        how = "by SIGTERM after its drain" if code == -signal.SIGTERM else f"with code {code}"
        tally.events.append(f"{loop.time() - start:.1f} s: gateway 1 drained, exited {how}")
        cluster.start_gateway(1)
        await asyncio.to_thread(wait_until, lambda: cluster.gateway_ready(1), 60, "gateway 1")
        tally.events.append(f"{loop.time() - start:.1f} s: gateway 1 back")
    if crash:
        await asyncio.sleep(max(0.0, start + seconds / 2 - loop.time()))
        await asyncio.to_thread(cluster.stop, "worker1", signal.SIGKILL)
        tally.events.append(f"{loop.time() - start:.1f} s: worker 1 killed (SIGKILL)")


async def load(
    cluster: Cluster,
    mix: list[dict[str, Any]],
    clients: int,
    seconds: float,
    size: int,
    rolling: bool = True,
    crash: bool = True,
) -> tuple[Tally, float]:
    """Run the clients and the faults; (tally, elapsed seconds of the load)."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    async def client_loop(offset: int) -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=120) as client:
            turn = offset
            while time.monotonic() < deadline:
                await one_job(client, mix, turn, size, tally)
                turn += clients

    started = time.monotonic()
    await asyncio.gather(faults(cluster, seconds, tally, rolling, crash),
                         *(client_loop(i) for i in range(clients)))  # fmt: skip
    return tally, time.monotonic() - started


def lost_jobs(cluster: Cluster, tally: Tally, timeout: float) -> list[str]:
    """Jobs submitted but not finished ``timeout`` seconds after the load stopped."""
    deadline = time.monotonic() + timeout
    pending = [job for job, status in tally.jobs.items() if status in ("queued", "running")]
    with httpx.Client(base_url=cluster.url, timeout=10) as client:
        while pending and time.monotonic() < deadline:
            time.sleep(0.5)
            still = []
            for job_id in pending:
                response = client.get(f"/v1/jobs/{job_id}", params={"heatmap_data": "false"})
                status = response.json().get("status") if response.status_code == 200 else None
                if status in ("queued", "running", None):
                    still.append(job_id)
            pending = still
    return pending


DEMO_MIX: list[dict[str, Any]] = [
    {"method": "gradcam"},
    {"method": "fmo"},
    {"method": "occlusion", "params": {"window": 16, "stride": 8}},
    {"method": "rise", "params": {"n_masks": 500}},
    {"method": "lime", "params": {"num_samples": 200}},
]


def report(tally: Tally, lost: list[str], elapsed: float, args: argparse.Namespace) -> str:
    """The markdown section of a run."""
    latencies = np.array(tally.latencies) * 1000 if tally.latencies else np.array([np.nan])
    lines = [
        f"### {args.clients} clients, {args.seconds:.0f} s, demo model, 2 gateways + 2 workers",
        "",
        f"* requests: {len(tally.latencies) + len(tally.failures)} "
        f"({len(tally.latencies) / elapsed:.1f} completed jobs/s)",
        f"* job latency (submit to result, polling included) p50 "
        f"{np.percentile(latencies, 50):.0f} ms, p95 {np.percentile(latencies, 95):.0f} ms",
        f"* failed requests: **{len(tally.failures)}**; lost jobs: **{len(lost)}**",
        *(f"* {event}" for event in tally.events),
        *(f"* failure: {failure}" for failure in tally.failures[:10]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {"XPLAIN_TORCH_THREADS": str(args.threads), "XPLAIN_VISIBILITY_TIMEOUT_S": "10",
           "XPLAIN_HEARTBEAT_INTERVAL_S": "1", "XPLAIN_HEARTBEAT_TTL_S": "5"}  # fmt: skip
    with running_cluster(env) as cluster:
        os.nice(10)  # the load generator yields the CPU to the cluster it measures
        tally, elapsed = asyncio.run(load(cluster, DEMO_MIX, args.clients, args.seconds, 112))
        lost = lost_jobs(cluster, tally, 60)
    text = report(tally, lost, elapsed, args)
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
