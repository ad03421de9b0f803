"""Gateway fixtures: a real uvicorn server on a free port (in a thread) against real Redis."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from PIL import Image

from app.contract.keys import Keys
from app.main import create_app
from app.settings import Settings
from tests.conftest import free_port
from tests.gateway.fakes import FakeWorker, announce, model_info


@dataclass
class Gateway:
    """A running gateway and handles on its Redis."""

    url: str
    app: FastAPI
    settings: Settings
    keys: Keys
    redis: redis.Redis
    http: httpx.Client
    workers: list[FakeWorker] = field(default_factory=list)

    def announce(self, *names: str, **kwargs: Any) -> None:
        """Make models served by a fake worker's heartbeat."""
        announce(self.redis, self.keys, [model_info(n) for n in names or ("shapes",)], **kwargs)

    def worker(self, *names: str, **kwargs: Any) -> FakeWorker:
        """Start a fake worker thread serving ``names`` (stopped with the test)."""
        models = [model_info(n) for n in names or ("shapes",)]
        worker = FakeWorker(self.settings.redis_url, self.keys, models, **kwargs).start()
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """Stop the fake workers started so far."""
        while self.workers:
            self.workers.pop().stop()


@contextmanager
def running_gateway(redis_url: str, **overrides: Any) -> Iterator[Gateway]:
    """Serve ``create_app(Settings(...))`` on a free port until the block ends."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": f"t{uuid.uuid4().hex[:8]}",
        "default_wait_s": 5.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings)
    app.state.sse_keepalive_s = 0.2
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (server.started and app.state.hub.connected.is_set()):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    http = httpx.Client(base_url=url, timeout=10)
    gateway = Gateway(url, app, settings, Keys(settings.key_prefix), client, http)
    try:
        yield gateway
    finally:
        gateway.stop_workers()
        http.close()
        server.should_exit = True
        thread.join(timeout=10)
        client.close()


@pytest.fixture(scope="session")
def shared_gateway(redis_server: str) -> Iterator[Gateway]:
    """One default gateway for the session (starting one per test costs ~0.3 s)."""
    with running_gateway(redis_server) as gw:
        yield gw


@pytest.fixture
def gateway(redis_url: str, shared_gateway: Gateway) -> Iterator[Gateway]:
    """The default gateway (5 s default wait) on a freshly emptied Redis."""
    shared_gateway.app.state.queue.forget_workers()
    try:
        yield shared_gateway
    finally:
        shared_gateway.stop_workers()


@pytest.fixture
def make_gateway(redis_url: str) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with settings overrides; all stop at the end of the test."""
    stack: list[Any] = []

    def make(**overrides: Any) -> Gateway:
        manager = running_gateway(redis_url, **overrides)
        stack.append(manager)
        return manager.__enter__()

    yield make
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


def png_bytes(width: int = 40, height: int = 30, mode: str = "RGB", color: Any = None) -> bytes:
    """A small image encoded as PNG."""
    if color is None:
        color = (200, 30, 30) if mode == "RGB" else 128
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def post_image(
    gateway: Gateway,
    data: bytes | None = None,
    *,
    content_type: str = "image/png",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    """POST a multipart explanation request (``fields`` are form fields, ``query`` the URL's)."""
    files = {"file": ("image.png", png_bytes() if data is None else data, content_type)}
    return gateway.http.post(
        "/v1/explanations", files=files, data=fields, headers=headers, params=query
    )


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json with ``status``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body
