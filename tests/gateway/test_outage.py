"""Redis goes away and comes back: 503 problems meanwhile, then the service resumes by itself."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.gateway.conftest import post_image, problem, running_gateway
from tests.gateway.test_operations import samples


class OwnRedis:
    """A redis-server this test can stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_outage_gives_503_and_the_gateway_recovers(own_redis: OwnRedis) -> None:
    with running_gateway(own_redis.url) as gateway:
        gateway.announce()
        assert gateway.http.get("/readyz").status_code == 200

        own_redis.stop()
        response = gateway.http.get("/readyz")
        assert problem(response, 503)["type"] == "/problems/not-ready"
        down = post_image(gateway)
        assert problem(down, 503)["type"] == "/problems/redis-unavailable"
        assert down.headers["retry-after"]
        problem(gateway.http.get("/v1/jobs/" + "0" * 32), 503)
        problem(gateway.http.get("/v1/models"), 503)
        assert gateway.http.get("/healthz").status_code == 200
        metrics = samples(gateway.http.get("/metrics").text)
        assert metrics[("xplain_redis_up", ())] == 0

        own_redis.start()  # same port, empty (no persistence)
        hub = gateway.app.state.hub
        deadline = time.monotonic() + 10
        while not hub.connected.is_set():
            assert time.monotonic() < deadline, "the event subscription did not come back"
            time.sleep(0.02)
        gateway.worker()
        assert gateway.http.get("/readyz").status_code == 200
        start = time.monotonic()
        response = post_image(gateway, wait="10")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        # woken by the event (the safety re-read comes only after 5 s)
        assert time.monotonic() - start < 3
