"""The service behind a real load balancer (Debian's nginx): a rolling update of a gateway and a
killed worker lose no job and fail no request; a draining gateway answers what it holds.

nginx is installed by ``scripts/test-deps.sh`` (``make test``); without it these tests skip.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.cluster import load as run_load
from benchmarks.cluster import lost_jobs, nginx_binary, running_cluster
from tests.conftest import free_port
from tests.e2e.test_http import noise
from tests.worker.nets import MODELS_TOML
from tests.worker.support import REPO, start_worker, stop_process, wait_for, worker_env

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (scripts/test-deps.sh installs it)"
)

MIX = [
    {"method": "gradcam", "model": "tiny"},
    {"method": "occlusion", "model": "tiny_slow", "params": {"window": 8, "stride": 8}},
    {"method": "rise", "model": "tiny", "params": {"n_masks": 64}},
]


@pytest.fixture
def models_toml(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS_TOML)
    return path


def test_rolling_update_and_a_killed_worker_lose_nothing(models_toml: Path) -> None:
    env = {
        "XPLAIN_MODELS_FILE": str(models_toml),
        "XPLAIN_TORCH_THREADS": "1",
        "XPLAIN_HEARTBEAT_INTERVAL_S": "0.5",
        "XPLAIN_HEARTBEAT_TTL_S": "3",
        "XPLAIN_VISIBILITY_TIMEOUT_S": "2",
    }
    with running_cluster(env) as cluster:
        tally, _ = asyncio.run(run_load(cluster, MIX, clients=6, seconds=12, size=32))
        lost = lost_jobs(cluster, tally, timeout=30)
    assert tally.failures == [], tally.failures[:5]
    assert lost == []
    assert len(tally.jobs) > 30
    assert any("gateway 1 back" in event for event in tally.events), tally.events
    assert any("worker 1 killed" in event for event in tally.events)


@pytest.fixture
def lone_gateway(
    redis_url: str, models_toml: Path, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    env = worker_env(redis_url, f"d{time.time_ns()}", models_toml)
    worker = start_worker(env, "drain-worker", tmp_path)
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port), "--graceful-s", "10"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "the gateway")
        yield url, gateway
    finally:
        stop_process(worker)
        if gateway.poll() is None:
            gateway.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_draining_gateway_answers_waiting_requests_and_closes_event_streams(
    lone_gateway: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, gateway = lone_gateway
    long = {"model": "tiny_slow", "method": "occlusion",
            "params": '{"window": 4, "stride": 1, "max_batch_size": 1}'}  # fmt: skip
    files = {"file": ("x.png", noise(32, 32, 1), "image/png")}
    job = httpx.post(url + "/v1/explanations", data={**long, "wait": "0"}, files=files).json()
    answers: dict[str, object] = {}

    def waiting_post() -> None:
        files = {"file": ("x.png", noise(32, 32, 2), "image/png")}
        started = time.monotonic()
        response = httpx.post(url + "/v1/explanations", data={**long, "wait": "60"},
                              files=files, timeout=70)  # fmt: skip
        answers["post"] = (response.status_code, time.monotonic() - started)

    def event_stream() -> None:
        lines = []
        with httpx.stream("GET", f"{url}/v1/jobs/{job['job_id']}/events", timeout=70) as stream:
            lines.extend(stream.iter_lines())
        answers["events"] = lines

    threads = [threading.Thread(target=waiting_post), threading.Thread(target=event_stream)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # both are waiting on the gateway
    sent = time.monotonic()
    gateway.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=20)
    gateway.wait(timeout=20)
    assert time.monotonic() - sent < 10  # it did not sit out its 10 s of grace
    status, waited = answers["post"]  # type: ignore[misc]
    assert status == 202 and waited < 10  # answered with the job's URL, not cut off
    events = answers["events"]
    assert any(line.startswith("event: state") for line in events)  # type: ignore[union-attr]
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz", timeout=2)  # it no longer listens
