"""Redis high availability: a primary, a replica and three sentinels; the primary dies; the
gateway and the worker carry on with the promoted replica, with no restart, and no job the
gateway acknowledged is lost (enqueues and results wait for the replica: ``WAIT``).

Sentinels are ``redis-server --sentinel`` (the same binary as the server).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port
from tests.e2e.test_http import noise
from tests.worker.nets import MODELS_TOML
from tests.worker.support import REPO, start_worker, stop_process, wait_for, worker_env

MASTER = "xplain"
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@dataclass
class Replicated:
    """Primary, replica and sentinels on local ports."""

    work: Path
    primary: int = field(default_factory=free_port)
    replica: int = field(default_factory=free_port)
    sentinels: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        binary = shutil.which("redis-server")
        assert binary is not None
        self.processes[name] = subprocess.Popen([binary, *args], stdout=log, stderr=log)

    def start(self) -> None:
        common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
                  "--dir", str(self.work)]  # fmt: skip
        self.spawn("primary", ["--port", str(self.primary), *common])
        wait_for(lambda: _pings(self.primary), 10, "the primary")
        self.spawn("replica", ["--port", str(self.replica), *common,
                               "--replicaof", "127.0.0.1", str(self.primary)])  # fmt: skip
        wait_for(lambda: _replicas(self.primary) == 1, 20, "the replica to sync")
        for index, port in enumerate(self.sentinels):
            conf = self.work / f"sentinel{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.work}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.spawn(f"sentinel{index}", [str(conf), "--sentinel"])
        wait_for(lambda: all(_pings(p) for p in self.sentinels), 10, "the sentinels")
        wait_for(lambda: self.master_port() == self.primary, 10, "the sentinels to agree")

    def master_port(self) -> int | None:
        try:
            host_port = redis.Redis(port=self.sentinels[0]).execute_command(
                "SENTINEL", "get-master-addr-by-name", MASTER
            )
        except redis.RedisError:
            return None
        return int(host_port[1]) if host_port else None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _replicas(port: int) -> int:
    return int(redis.Redis(port=port).info("replication")["connected_slaves"])


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Replicated]:
    cluster = Replicated(tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def submit(url: str, seed: int) -> str:
    files = {"file": ("x.png", noise(32, 32, seed), "image/png")}
    data = {"model": "tiny", "method": "gradcam", "wait": "0"}
    response = httpx.post(url + "/v1/explanations", data=data, files=files, timeout=30)
    assert response.status_code in (200, 202), response.text  # 200: it was done already
    return str(response.json()["job_id"])


def status(url: str, job_id: str) -> str | None:
    try:
        response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    except httpx.TransportError:
        return None
    return response.json().get("status") if response.status_code == 200 else None


def test_the_service_carries_on_after_a_failover_and_loses_no_acknowledged_job(
    replicated: Replicated, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(MODELS_TOML)
    env = worker_env("redis://127.0.0.1:1/0", f"s{time.time_ns()}", models)  # only db + auth
    env.update({
        "XPLAIN_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in replicated.sentinels),
        "XPLAIN_REDIS_SENTINEL_MASTER": MASTER,
        "XPLAIN_REDIS_WAIT_REPLICAS": "1",
        "XPLAIN_REDIS_WAIT_TIMEOUT_MS": "500",
    })  # fmt: skip
    worker = start_worker(env, "ha-worker", tmp_path)
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port)], cwd=REPO, env=env,
        stdout=(tmp_path / "gateway.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "the gateway to be ready")
        before = [submit(url, seed) for seed in range(5)]
        wait_for(lambda: all(status(url, j) == "succeeded" for j in before), 30, "jobs")
        acknowledged = [submit(url, seed) for seed in range(5, 15)]  # then the primary dies
        replicated.processes["primary"].send_signal(signal.SIGKILL)
        wait_for(lambda: replicated.master_port() == replicated.replica, 30, "the failover")
        wait_for(lambda: _ready(url), 30, "the gateway on the new primary")
        after = [submit(url, seed) for seed in range(15, 20)]
        wait_for(
            lambda: all(status(url, j) == "succeeded" for j in before + acknowledged + after),
            60,
            "every acknowledged job to finish on the new primary",
        )
        assert gateway.poll() is None and worker.poll() is None  # nothing was restarted
    finally:
        stop_process(worker)
        gateway.terminate()
        gateway.wait(timeout=15)
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-1500:]}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
