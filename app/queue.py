"""The gateway's side of the queue protocol (docs/PROTOCOL.md), over an async Redis client.

Enqueue and cancel are Lua scripts, so each is one atomic round trip: the back-pressure check,
the image, the record, the stream entry and the record's ``stream_id`` go in together, and a
cancel cannot interleave with a worker's compare-and-set of a result.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.contract.jobs import (
    JobEnvelope,
    JobEvent,
    JobStatus,
    ModelInfo,
    RecordField,
    WorkerAnnouncement,
    WorkerResult,
)
from app.contract.keys import GROUP, LANES, Keys
from app.render import heatmap_from_bytes

_ENQUEUE = """
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then return {0, depth} end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0', 'MKSTREAM')
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
local id = redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[4], 'cost', ARGV[6])
redis.call('HSET', KEYS[2], 'stream_id', id)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {1, id}
"""
"""KEYS: stream, job, image. ARGV: max depth, ttl, group, envelope, image, cost seconds,
field/value pairs."""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0} end
local progress = redis.call('HGET', KEYS[1], 'progress') or '0'
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return {1, status, progress}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1', 'finished_at', ARGV[1])
return {2, status, progress}
"""
"""KEYS: job. ARGV: now. Returns {0} unknown, {1, status} already final, {2, previous} done."""

WORKERS_CACHE_S = 1.0
"""How long a read of the live workers is reused (a miss on a model re-reads at once)."""


def make_redis(url: str) -> Redis:
    """The gateway's command client: short timeouts, one immediate retry (a stale pooled
    connection after a Redis restart), then the error surfaces as a 503."""
    return Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


@dataclass(frozen=True)
class NewJob:
    """Everything the gateway stores for a new job."""

    envelope: JobEnvelope
    image_png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Enqueued:
    """Outcome of ``enqueue``: ``accepted`` or refused because the lane holds ``depth`` jobs."""

    accepted: bool
    depth: int = 0
    stream_id: str = ""


@dataclass(frozen=True)
class Cancellation:
    """Outcome of ``cancel``: ``found``; ``cancelled`` now; else the final ``status`` it had."""

    found: bool
    cancelled: bool = False
    status: JobStatus | None = None


@dataclass
class JobState:
    """A job as stored: the record hash and, when present, the result and heatmap."""

    job_id: str
    record: dict[str, str]
    result: WorkerResult | None = None
    heatmap: np.ndarray | None = None

    @property
    def status(self) -> JobStatus:
        """The record's status (``failed`` if the record holds garbage)."""
        try:
            return JobStatus(self.record.get(RecordField.status, ""))
        except ValueError:
            return JobStatus.failed

    def number(self, name: str) -> float | None:
        """A float field of the record, or None."""
        raw = self.record.get(name)
        try:
            return float(raw) if raw not in (None, "") else None
        except ValueError:
            return None

    def json_field(self, name: str, default: Any = None) -> Any:
        """A JSON field of the record, or ``default``."""
        raw = self.record.get(name)
        if not raw:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            return default


@dataclass(frozen=True)
class ServedModel:
    """A model and the live workers that serve it."""

    info: ModelInfo
    lanes: frozenset[str]
    workers: int
    devices: tuple[str, ...]


@dataclass
class Snapshot:
    """What ``/metrics`` exports from Redis."""

    depths: dict[str, int]
    metrics: dict[str, float]
    live_workers: int


@dataclass
class _WorkersCache:
    at: float = -math.inf
    workers: list[WorkerAnnouncement] = field(default_factory=list)


class JobQueue:
    """Async facade over Redis for the gateway: enqueue, read, cancel, workers, metrics."""

    def __init__(self, redis: Redis, keys: Keys, *, job_ttl_s: int, max_queue_depth: int) -> None:
        self.redis = redis
        self.keys = keys
        self.job_ttl_s = job_ttl_s
        self.max_queue_depth = max_queue_depth
        self._enqueue = redis.register_script(_ENQUEUE)
        self._cancel = redis.register_script(_CANCEL)
        self._workers = _WorkersCache()
        self.seen_models: set[str] = set()
        """Models some live worker announced since this gateway started."""

    def forget_workers(self) -> None:
        """Drop what this gateway remembers about workers (cache and seen models)."""
        self._workers = _WorkersCache()
        self.seen_models.clear()

    async def ping(self) -> bool:
        """Whether Redis answers (exceptions propagate)."""
        return bool(await self.redis.ping())

    async def enqueue(self, job: NewJob) -> Enqueued:
        """Store image and record and append the envelope to its lane, unless the lane is full."""
        env = job.envelope
        record = {
            RecordField.status: JobStatus.queued.value,
            RecordField.model: env.model,
            RecordField.method: env.method,
            RecordField.lane: env.lane,
            RecordField.params: json.dumps(env.params, sort_keys=True),
            RecordField.target: json.dumps(env.target),
            RecordField.created_at: repr(env.enqueued_at),
            RecordField.progress: "0",
            RecordField.attempts: "0",
            RecordField.width: str(job.width),
            RecordField.height: str(job.height),
        }
        if env.cost is not None:
            record[RecordField.cost] = env.cost.model_dump_json()
        pairs = [item for kv in record.items() for item in kv]
        keys = [self.keys.stream(env.lane), self.keys.job(env.job_id), self.keys.image(env.job_id)]
        seconds = repr(env.cost.seconds if env.cost is not None else 0.0)
        args = [
            self.max_queue_depth,
            self.job_ttl_s,
            GROUP,
            env.model_dump_json(),
            job.image_png,
            seconds,
        ]
        accepted, value = await self._enqueue(keys=keys, args=[*args, *pairs])
        if not accepted:
            return Enqueued(accepted=False, depth=int(value))
        return Enqueued(accepted=True, stream_id=_text(value))

    async def backlog(self, lane: str) -> tuple[float, int]:
        """Estimated seconds of work in ``lane`` (queued and running entries) and their count."""
        entries = await self.redis.xrange(self.keys.stream(lane), count=self.max_queue_depth * 2)
        total = 0.0
        for _, fields in entries:
            raw = fields.get(b"cost", fields.get("cost"))
            try:
                total += max(0.0, float(_text(raw))) if raw is not None else 0.0
            except ValueError:
                continue
        return total, len(entries)

    async def read(self, job_id: str, *, heatmap: bool = True) -> JobState | None:
        """The job's record, result and (optionally) heatmap, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(job_id))
        pipe.get(self.keys.result(job_id))
        if heatmap:
            pipe.get(self.keys.heatmap(job_id))
        replies = await pipe.execute()
        raw_record, raw_result = replies[0], replies[1]
        if not raw_record:
            return None
        state = JobState(job_id, {_text(k): _text(v) for k, v in raw_record.items()})
        if raw_result and state.status == JobStatus.succeeded:
            state.result = WorkerResult.model_validate_json(raw_result)
            if heatmap and replies[2] is not None:
                state.heatmap = heatmap_from_bytes(
                    replies[2], state.result.heatmap_height, state.result.heatmap_width
                )
        return state

    async def read_image(self, job_id: str) -> bytes | None:
        """The RGB PNG the gateway stored for the job."""
        data = await self.redis.get(self.keys.image(job_id))
        return bytes(data) if data is not None else None

    async def cancel(self, job_id: str) -> Cancellation:
        """Mark a queued or running job cancelled and publish its final event."""
        now = time.time()
        reply = await self._cancel(keys=[self.keys.job(job_id)], args=[repr(now)])
        if int(reply[0]) == 0:
            return Cancellation(found=False)
        status, progress = JobStatus(_text(reply[1])), float(_text(reply[2]) or 0)
        if int(reply[0]) == 1:
            return Cancellation(found=True, status=status)
        event = JobEvent(job_id=job_id, status=JobStatus.cancelled, progress=progress)
        await self.redis.publish(self.keys.events(job_id), event.model_dump_json())
        return Cancellation(found=True, cancelled=True, status=JobStatus.cancelled)

    async def live_workers(self, *, fresh: bool = False) -> list[WorkerAnnouncement]:
        """Announcements of live workers (their key exists); members without one are pruned."""
        now = time.monotonic()
        if not fresh and now - self._workers.at < WORKERS_CACHE_S:
            return self._workers.workers
        ids = [_text(member) for member in await self.redis.zrange(self.keys.workers, 0, -1)]
        raws = await self.redis.mget([self.keys.worker(i) for i in ids]) if ids else []
        workers, stale = [], []
        for worker_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                stale.append(worker_id)
                continue
            try:
                workers.append(WorkerAnnouncement.model_validate_json(raw))
            except ValidationError:
                stale.append(worker_id)
        if stale:
            await self.redis.zrem(self.keys.workers, *stale)
        self._workers = _WorkersCache(at=now, workers=workers)
        self.seen_models.update(m.name for w in workers for m in w.models)
        return workers

    async def served_models(self, *, fresh: bool = False) -> dict[str, ServedModel]:
        """Models of the live workers by name (the most recent announcement's info wins; the
        pass timings are the slowest worker's, so a cost estimate holds on any of them)."""
        workers = sorted(await self.live_workers(fresh=fresh), key=lambda w: w.started_at)
        served: dict[str, ServedModel] = {}
        for worker in workers:
            for info in worker.models:
                old = served.get(info.name)
                if old is not None:
                    slowest = {
                        "forward_ms": max(old.info.forward_ms, info.forward_ms),
                        "gradient_ms": max(old.info.gradient_ms, info.gradient_ms),
                    }
                    info = info.model_copy(update=slowest)
                served[info.name] = ServedModel(
                    info=info,
                    lanes=frozenset(worker.lanes) | (old.lanes if old else frozenset()),
                    workers=(old.workers if old else 0) + 1,
                    devices=(*(old.devices if old else ()), worker.device),
                )
        return served

    async def snapshot(self) -> Snapshot:
        """Queue depth per lane, the workers' metrics hash, and the live worker count."""
        pipe = self.redis.pipeline(transaction=False)
        for lane in LANES:
            pipe.xlen(self.keys.stream(lane))
        pipe.hgetall(self.keys.metrics)
        replies = await pipe.execute()
        depths = {lane: int(n) for lane, n in zip(LANES, replies[: len(LANES)], strict=True)}
        metrics = {}
        for key, value in replies[-1].items():
            try:
                metrics[_text(key)] = float(_text(value))
            except ValueError:
                continue
        return Snapshot(depths, metrics, len(await self.live_workers(fresh=True)))


def _text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
