"""A running service for the end-to-end tests: ``uvicorn app.main:app`` plus ``python -m workers``.

Both are subprocesses configured only by ``XPLAIN_*`` variables, sharing the suite's Redis
under a key prefix of their own (so the per-test flush of other suites does not touch them).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from app.contract.keys import Keys
from tests.conftest import free_port
from tests.worker.nets import MODELS_TOML
from tests.worker.support import REPO, start_worker, stop_process, wait_for, worker_env


@dataclass
class Service:
    """The gateway URL, a Redis client, and the (replaceable) worker process."""

    url: str
    http: httpx.Client
    redis: redis.Redis
    keys: Keys
    worker_env: dict[str, str]
    log_dir: Path
    worker: subprocess.Popen[bytes] | None = None
    workers_started: int = 0

    def start_worker(self) -> str:
        """A fresh worker process (a new name each time); returns its name once it announced."""
        self.workers_started += 1
        name = f"e2e-{self.workers_started}"
        self.worker = start_worker(self.worker_env, name, self.log_dir)
        wait_for(lambda: self.redis.exists(self.keys.worker(name)), 90, f"worker {name}")
        wait_for(lambda: self.http.get("/readyz").status_code == 200, 30, "gateway readiness")
        return name

    def ensure_worker(self) -> None:
        """Restart the worker if a test killed it."""
        if self.worker is None or self.worker.poll() is not None:
            self.start_worker()


@pytest.fixture(scope="session")
def service(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Gateway and one worker serving the tiny test models (heartbeat 0.5 s, visibility 2 s),
    shared by every end-to-end module (starting them is the slow part)."""
    log_dir = tmp_path_factory.mktemp("e2e")
    models = log_dir / "models.toml"
    models.write_text(MODELS_TOML, encoding="utf-8")
    keys = Keys(f"e2e{uuid.uuid4().hex[:8]}")
    env = worker_env(redis_server, keys.prefix, models)
    port = free_port()
    gateway_log = (log_dir / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=gateway_log,
        stderr=subprocess.STDOUT,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    running = Service(
        http.base_url.__str__(), http, redis.Redis.from_url(redis_server), keys, env, log_dir
    )
    try:
        wait_for(lambda: _answers(http), 90, "the gateway to listen")
        running.start_worker()
        yield running
    finally:
        if running.worker is not None:
            stop_process(running.worker)
        gateway.terminate()
        try:
            gateway.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gateway.kill()
        http.close()
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")


@pytest.fixture
def live(service: Service) -> Service:
    """The service, with a live worker."""
    service.ensure_worker()
    return service


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
