"""Fixtures of the worker tests: a test models.toml, in-process runtimes and queues."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from app.contract.keys import Keys
from tests.worker.nets import MODELS_TOML
from workers.loop import Worker
from workers.queue import WorkerQueue
from workers.runtime import Runtime, describe


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models.toml naming the tiny test networks (random seeded weights)."""
    path = tmp_path_factory.mktemp("models") / "models.toml"
    path.write_text(MODELS_TOML, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def runtime(models_file: Path) -> Runtime:
    """The tiny models loaded once, in this process, as a worker would load them."""
    from workers.zoo import load_models

    models = load_models(str(models_file), torch.device("cpu"))
    return Runtime(
        worker_id="in-process",
        device=torch.device("cpu"),
        models=models,
        infos={name: describe(handle, 64) for name, handle in models.items()},
        lanes=("fast", "slow"),
        max_batch_size=64,
    )


@pytest.fixture
def keys() -> Keys:
    """Keys under a prefix of this test's own."""
    return Keys(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the suite's Redis (emptied before the test)."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def make_queue(
    client: redis.Redis, keys: Keys, consumer: str = "in-process", **kw: float
) -> WorkerQueue:
    """A WorkerQueue with test-friendly timings."""
    options = {
        "claim_count": 16,
        "visibility_timeout_s": 2.0,
        "max_attempts": 3,
        "job_ttl_s": 600,
        "heartbeat_ttl_s": 3.0,
    }
    options.update(kw)
    return WorkerQueue(client, keys, consumer, **options)  # type: ignore[arg-type]


@pytest.fixture
def queue(client: redis.Redis, keys: Keys) -> WorkerQueue:
    """The worker side of the protocol for this test's keys."""
    return make_queue(client, keys)


@pytest.fixture
def worker(runtime: Runtime, queue: WorkerQueue) -> Worker:
    """An in-process worker over the tiny models (``run(max_groups=n)`` to drive it)."""
    return Worker(runtime, queue, threading.Event(), block_ms=200)
