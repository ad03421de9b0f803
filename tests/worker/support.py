"""Test helpers: the gateway's side of the queue protocol (sync), images, worker processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import redis
from PIL import Image

from app.contract.jobs import JobEnvelope, RecordField
from app.contract.keys import GROUP, LANES, Keys
from app.contract.methods import method_specs

REPO = Path(__file__).resolve().parents[2]


def png(pixels: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def random_png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """A reproducible noise image of ``size`` (height, width)."""
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, size=(*size, 3)))


def solid_png(value: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """A one-colour grey image."""
    return png(np.full((*size, 3), value))


def ensure_groups(client: redis.Redis, keys: Keys) -> None:
    """``XGROUP CREATE ... MKSTREAM`` for every lane (BUSYGROUP ignored)."""
    for lane in LANES:
        try:
            client.xgroup_create(keys.stream(lane), GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


def enqueue(client: redis.Redis, keys: Keys, **job: Any) -> str:
    """Queue one job exactly as docs/PROTOCOL.md's gateway does; returns its id."""
    (job_id,) = enqueue_many(client, keys, [job])
    return job_id


def enqueue_many(client: redis.Redis, keys: Keys, jobs: list[dict[str, Any]]) -> list[str]:
    """Queue several jobs in one transaction (a blocked worker wakes up to all of them).

    Each dict: ``image`` (bytes), optional ``model`` (tiny), ``method`` (gradcam), ``params``,
    ``target``, ``evaluate``, ``envelope_override`` (raw envelope text).
    """
    ensure_groups(client, keys)
    pipe = client.pipeline(transaction=True)
    ids = []
    for job in jobs:
        job_id = uuid.uuid4().hex
        ids.append(job_id)
        _queue_job(pipe, keys, job_id, **job)
    replies = pipe.execute()
    stream_ids = [reply for reply in replies if isinstance(reply, bytes)]
    for job_id, stream_id in zip(ids, stream_ids, strict=True):
        client.hset(keys.job(job_id), RecordField.stream_id, stream_id)
    return ids


def _queue_job(
    pipe: redis.client.Pipeline,
    keys: Keys,
    job_id: str,
    *,
    image: bytes,
    model: str = "tiny",
    method: str = "gradcam",
    params: Mapping[str, Any] | None = None,
    target: int | None = None,
    evaluate: list[str] | None = None,
    envelope_override: str | None = None,
    ttl: int = 600,
) -> None:
    lane = method_specs()[method].lane
    envelope = (
        envelope_override
        or JobEnvelope(
            job_id=job_id,
            lane=lane,
            model=model,
            method=method,
            params=dict(params or {}),
            target=target,
            evaluate=list(evaluate or []),
            enqueued_at=time.time(),
        ).model_dump_json()
    )
    pipe.set(keys.image(job_id), image, ex=ttl)
    pipe.hset(
        keys.job(job_id),
        mapping={
            RecordField.status: "queued",
            RecordField.model: model,
            RecordField.method: method,
            RecordField.lane: lane,
            RecordField.params: json.dumps(dict(params or {})),
            RecordField.target: json.dumps(target),
            RecordField.created_at: time.time(),
            RecordField.progress: 0,
            RecordField.attempts: 0,
            RecordField.width: 32,
            RecordField.height: 32,
        },
    )
    pipe.expire(keys.job(job_id), ttl)
    pipe.xadd(keys.stream(lane), {"envelope": envelope})


def cancel(client: redis.Redis, keys: Keys, job_id: str) -> None:
    """What ``DELETE /v1/jobs/{id}`` does to a non-final job."""
    client.hset(
        keys.job(job_id),
        mapping={"status": "cancelled", "cancel_requested": 1, "finished_at": time.time()},
    )


def record(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, str]:
    """The job record, decoded."""
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.job(job_id)).items()}


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_status(
    client: redis.Redis, keys: Keys, job_id: str, statuses: set[str], timeout: float = 20.0
) -> dict[str, str]:
    """The record once its status is one of ``statuses``."""

    def reached() -> dict[str, str] | None:
        rec = record(client, keys, job_id)
        return rec if rec.get("status") in statuses else None

    return wait_for(reached, timeout, f"job {job_id} to reach {sorted(statuses)}")


def heatmap(client: redis.Redis, keys: Keys, job_id: str, size: tuple[int, int]) -> np.ndarray:
    """The stored heatmap as ``(H, W)`` float32."""
    data = client.get(keys.heatmap(job_id))
    assert data is not None, "no heatmap stored"
    return np.frombuffer(data, dtype="<f4").reshape(size)


def result(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any] | None:
    """The stored WorkerResult JSON, parsed (None if absent)."""
    data = client.get(keys.result(job_id))
    return None if data is None else json.loads(data)


def worker_env(redis_url: str, prefix: str, models_file: Path, **overrides: Any) -> dict[str, str]:
    """Environment of a test worker: quick heartbeats, short visibility timeout, one thread."""
    env = dict(os.environ)
    env.update(
        {
            "XPLAIN_REDIS_URL": redis_url,
            "XPLAIN_KEY_PREFIX": prefix,
            "XPLAIN_MODELS_FILE": str(models_file),
            "XPLAIN_TORCH_THREADS": "1",
            "XPLAIN_HEARTBEAT_INTERVAL_S": "0.5",
            "XPLAIN_HEARTBEAT_TTL_S": "3",
            "XPLAIN_VISIBILITY_TIMEOUT_S": "2",
            "XPLAIN_MAX_ATTEMPTS": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"XPLAIN_{key.upper()}": str(value) for key, value in overrides.items()})
    return env


def start_worker(env: dict[str, str], name: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """``python -m workers`` named ``name``, its output in ``log_dir/name.log``."""
    env = {**env, "XPLAIN_WORKER_NAME": name}
    log = (log_dir / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "workers"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_worker(client: redis.Redis, keys: Keys, name: str, timeout: float = 60.0) -> None:
    """Until the worker's announcement is in Redis (its models are loaded)."""
    wait_for(lambda: client.exists(keys.worker(name)), timeout, f"worker {name} to announce")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Kill a test worker if it still runs."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
