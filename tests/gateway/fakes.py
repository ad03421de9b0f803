"""A stand-in for the worker side of docs/PROTOCOL.md, for gateway tests.

The gateway tests are about the gateway, so the worker is played by this module: it announces
models, claims envelopes from the lane streams, and writes results, failures and events exactly
as the protocol says. Heatmaps are a known ramp so the tests can check the numbers end to end.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis
from PIL import Image

from app.contract.jobs import (
    JobEnvelope,
    JobEvent,
    JobStatus,
    ModelInfo,
    Prediction,
    RecordField,
    WorkerAnnouncement,
    WorkerResult,
)
from app.contract.keys import GROUP, LANES, Keys

LABELS = ["disc", "square", "triangle"]


def model_info(
    name: str = "shapes",
    size: tuple[int, int] = (8, 8),
    forward_ms: float = 1.0,
    gradient_ms: float = 3.0,
    unsupported: dict[str, str] | None = None,
) -> ModelInfo:
    """A small announced model: 3 classes, two layers, measured pass times."""
    return ModelInfo(
        name=name,
        input_size=size,
        num_classes=len(LABELS),
        labels=list(LABELS),
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        default_layer="features.4",
        layers=["features.0", "features.4"],
        architecture="tiny-cnn",
        layer_channels={"features.0": 8, "features.4": 16},
        forward_ms=forward_ms,
        gradient_ms=gradient_ms,
        unsupported=unsupported or {},
    )


def announce(
    client: redis.Redis,
    keys: Keys,
    models: Sequence[ModelInfo],
    *,
    worker_id: str = "fake-1",
    lanes: Sequence[str] = LANES,
    ttl_s: float = 10.0,
) -> None:
    """Heartbeat as a worker does: the announcement key with a TTL, and the workers zset."""
    announcement = WorkerAnnouncement(
        worker_id=worker_id,
        lanes=list(lanes),
        device="cpu",
        models=list(models),
        started_at=time.time(),
    )
    client.set(keys.worker(worker_id), announcement.model_dump_json(), px=int(ttl_s * 1000))
    client.zadd(keys.workers, {worker_id: time.time()})


def ramp(height: int, width: int) -> np.ndarray:
    """The known heatmap: values 0..1 in row-major order."""
    n = height * width
    return (np.arange(n, dtype=np.float32) / max(n - 1, 1)).reshape(height, width)


def envelope_of(client: redis.Redis, keys: Keys, job_id: str) -> JobEnvelope:
    """The envelope of a queued job, read from its lane stream."""
    record = client.hgetall(keys.job(job_id))
    lane = record[b"lane"].decode()
    stream_id = record[b"stream_id"].decode()
    entries = client.xrange(keys.stream(lane), stream_id, stream_id)
    return JobEnvelope.model_validate_json(entries[0][1][b"envelope"])


def start_running(client: redis.Redis, keys: Keys, job_id: str, worker: str = "fake-1") -> None:
    """Mark a job running and publish the event."""
    client.hset(
        keys.job(job_id),
        mapping={
            RecordField.status: "running",
            RecordField.started_at: time.time(),
            RecordField.worker: worker,
        },
    )
    event = JobEvent(job_id=job_id, status=JobStatus.running, progress=0.0)
    client.publish(keys.events(job_id), event.model_dump_json())


def publish_progress(client: redis.Redis, keys: Keys, job_id: str, done: int, total: int) -> None:
    """A progress update: record field and event."""
    progress = done / total
    client.hset(keys.job(job_id), RecordField.progress, progress)
    event = JobEvent(
        job_id=job_id, status=JobStatus.running, progress=progress, done=done, total=total
    )
    client.publish(keys.events(job_id), event.model_dump_json())


def write_success(
    client: redis.Redis,
    keys: Keys,
    envelope: JobEnvelope,
    info: ModelInfo,
    heatmap: np.ndarray | None = None,
) -> np.ndarray:
    """Store a result the way a worker does; returns the heatmap written."""
    height, width = info.input_size
    heatmap = ramp(height, width) if heatmap is None else heatmap.astype(np.float32)
    top = envelope.target if envelope.target is not None else 1
    scores = [0.1, 0.2, 0.3]
    scores[top] = 0.7
    predictions = sorted(
        (Prediction(index=i, label=LABELS[i], score=s) for i, s in enumerate(scores)),
        key=lambda p: -p.score,
    )
    result = WorkerResult(
        job_id=envelope.job_id,
        model=envelope.model,
        method=envelope.method,
        params=envelope.params,
        target=Prediction(index=top, label=LABELS[top], score=scores[top]),
        predictions=predictions,
        heatmap_height=height,
        heatmap_width=width,
        meta={"layer": envelope.params.get("layer") or info.default_layer, "forward_passes": 1},
        evaluation=dict.fromkeys(envelope.evaluate, 0.5),
        compute_ms=12.5,
        group_size=1,
        worker="fake-1",
    )
    ttl = 3600
    pipe = client.pipeline()
    pipe.set(keys.result(envelope.job_id), result.model_dump_json(), ex=ttl)
    pipe.set(keys.heatmap(envelope.job_id), heatmap.astype("<f4").tobytes(), ex=ttl)
    pipe.hset(
        keys.job(envelope.job_id),
        mapping={
            RecordField.status: "succeeded",
            RecordField.progress: 1,
            RecordField.finished_at: time.time(),
        },
    )
    final = JobEvent(job_id=envelope.job_id, status=JobStatus.succeeded, progress=1.0)
    pipe.publish(keys.events(envelope.job_id), final.model_dump_json())
    pipe.execute()
    return heatmap


def write_failure(
    client: redis.Redis, keys: Keys, job_id: str, status: int = 422, detail: str = "bad layer"
) -> None:
    """Fail a job the way a worker does."""
    error = {
        "type": "/problems/invalid-request",
        "title": "Invalid request",
        "status": status,
        "detail": detail,
    }
    client.hset(
        keys.job(job_id),
        mapping={
            RecordField.status: "failed",
            RecordField.finished_at: time.time(),
            RecordField.error: json.dumps(error),
        },
    )
    final = JobEvent(job_id=job_id, status=JobStatus.failed)
    client.publish(keys.events(job_id), final.model_dump_json())


@dataclass
class Claimed:
    """A job the fake worker took: its envelope and the image it found."""

    envelope: JobEnvelope
    image: Image.Image


@dataclass
class FakeWorker:
    """A thread that claims jobs and answers them: ``succeed``, ``fail`` or ``hold``."""

    redis_url: str
    keys: Keys
    models: list[ModelInfo]
    behaviour: str = "succeed"
    progress_steps: int = 0
    lanes: Sequence[str] = LANES
    claimed: list[Claimed] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.redis_url)

    def start(self) -> FakeWorker:
        """Announce and start claiming."""
        for lane in self.lanes:
            try:
                self.client.xgroup_create(self.keys.stream(lane), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        announce(self.client, self.keys, self.models, lanes=self.lanes)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        streams = {self.keys.stream(lane): ">" for lane in self.lanes}
        last_beat = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_beat > 1.0:
                announce(self.client, self.keys, self.models, lanes=self.lanes)
                last_beat = time.monotonic()
            replies = self.client.xreadgroup(GROUP, "fake-1", streams, count=8, block=50)
            for stream, entries in replies or []:
                for entry_id, fields in entries:
                    self._handle(fields)
                    self.client.xack(stream, GROUP, entry_id)
                    self.client.xdel(stream, entry_id)

    def _handle(self, fields: dict[bytes, bytes]) -> None:
        envelope = JobEnvelope.model_validate_json(fields[b"envelope"])
        job_key = self.keys.job(envelope.job_id)
        self.client.hincrby(job_key, RecordField.attempts, 1)
        if self.client.hget(job_key, RecordField.status) != b"queued":
            return
        png = self.client.get(self.keys.image(envelope.job_id))
        self.claimed.append(Claimed(envelope, Image.open(io.BytesIO(png))))
        start_running(self.client, self.keys, envelope.job_id)
        for step in range(self.progress_steps):
            time.sleep(0.05)
            publish_progress(self.client, self.keys, envelope.job_id, step + 1, self.progress_steps)
        if self.behaviour == "succeed":
            info = next(m for m in self.models if m.name == envelope.model)
            write_success(self.client, self.keys, envelope, info)
        elif self.behaviour == "fail":
            write_failure(self.client, self.keys, envelope.job_id)
