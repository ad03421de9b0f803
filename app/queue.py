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
if ARGV[10] ~= '' then
  local seen = redis.call('GET', KEYS[5])
  if seen then return {2, seen} end
end
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then return {0, depth} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[7])
local limit = tonumber(ARGV[8])
if limit > 0 then
  local active = redis.call('ZCARD', KEYS[4])
  if active >= limit then return {3, active} end
end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0', 'MKSTREAM')
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 11))
local id = redis.call('XADD', KEYS[1], '*', 'envelope', ARGV[4], 'cost', ARGV[6])
redis.call('HSET', KEYS[2], 'stream_id', id)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[4], tonumber(ARGV[7]) + tonumber(ARGV[2]), ARGV[9])
redis.call('EXPIRE', KEYS[4], ARGV[2])
if ARGV[10] ~= '' then redis.call('SET', KEYS[5], ARGV[10], 'EX', ARGV[2]) end
return {1, id}
"""
"""KEYS: stream, job, image, the owner's active set, the idempotency key. ARGV: max depth, ttl,
group, envelope, image, cost seconds, now, max active jobs (0: none), job id, idempotency
value (empty: none), then the record's field/value pairs. Returns {1, stream id} queued,
{0, depth} lane full, {2, "<job id> <digest>"} idempotent replay, {3, active} quota full."""

_REUSE = """
local source = redis.call('GET', KEYS[1])
if not source then return false end
local job = ARGV[2] .. ':job:' .. source
if redis.call('HGET', job, 'status') ~= 'succeeded' then return false end
if redis.call('COPY', job .. ':result', KEYS[3]) == 0 then return false end
if redis.call('COPY', job .. ':heatmap', KEYS[4]) == 0 then
  redis.call('DEL', KEYS[3])
  return false
end
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[1])
redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[2], ARGV[1])
if redis.call('HEXISTS', KEYS[2], 'callback_url') == 1 then
  redis.call('XADD', KEYS[6], '*', 'job_id', ARGV[4])
end
return source
"""
"""KEYS: cache key, new job, its result, its heatmap, its image, the webhooks stream. ARGV: ttl,
key prefix, image, new job id, then the record's field/value pairs. Returns the source job id,
or nil when nothing to reuse."""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0} end
local progress = redis.call('HGET', KEYS[1], 'progress') or '0'
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return {1, status, progress}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1', 'finished_at', ARGV[1])
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then redis.call('ZREM', ARGV[3] .. ':active:' .. owner, ARGV[2]) end
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then
  redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[2])
end
return {2, status, progress}
"""
"""KEYS: job, webhooks stream. ARGV: now, job id, key prefix. Returns {0} unknown, {1, status}
already final, {2, previous} cancelled now."""

WORKERS_CACHE_S = 1.0
"""How long a read of the live workers is reused (a miss on a model re-reads at once)."""


@dataclass(frozen=True)
class NewJob:
    """Everything the gateway stores for a new job."""

    envelope: JobEnvelope
    image_png: bytes
    width: int
    height: int
    owner: str = "anonymous"
    max_active: int = 0
    """The owner's limit of queued + running jobs (0: none)."""
    idempotency: tuple[str, str] | None = None
    """(hashed ``Idempotency-Key``, digest of the request) when the request sent one."""
    cache_digest: str | None = None
    """Where a success is recorded for reuse (None: the client opted out)."""
    callback_url: str | None = None

    def record(self) -> dict[str, str]:
        """The job record's fields."""
        env = self.envelope
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
            RecordField.width: str(self.width),
            RecordField.height: str(self.height),
            RecordField.owner: self.owner,
        }
        if env.cost is not None:
            record[RecordField.cost] = env.cost.model_dump_json()
        if env.request_id:
            record[RecordField.request_id] = env.request_id
        if self.callback_url:
            record[RecordField.callback_url] = self.callback_url
        return record


@dataclass(frozen=True)
class Enqueued:
    """Outcome of ``enqueue``: ``accepted``; or refused (``reason`` ``full``: the lane holds
    ``depth`` jobs; ``active``: the owner has ``depth`` active jobs); or ``replayed``: the
    ``Idempotency-Key`` was used before, for ``job_id`` with a request of ``digest``."""

    accepted: bool
    depth: int = 0
    stream_id: str = ""
    reason: str = ""
    job_id: str = ""
    digest: str = ""


@dataclass(frozen=True)
class Replay:
    """An ``Idempotency-Key`` seen before: its job and the digest of the request it came with."""

    job_id: str
    digest: str


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

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        job_ttl_s: int,
        max_queue_depth: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.job_ttl_s = job_ttl_s
        self.max_queue_depth = max_queue_depth
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.replica_shortfalls = 0
        """Enqueues that went on with fewer replicas than asked (WAIT timed out)."""
        self._enqueue = redis.register_script(_ENQUEUE)
        self._reuse = redis.register_script(_REUSE)
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
        """Store image and record and append the envelope to its lane, in one atomic step,
        unless the lane or the owner's quota is full or the idempotency key was used."""
        env = job.envelope
        record = job.record()
        if job.cache_digest is not None:
            record[RecordField.cache_key] = self.keys.cache(job.cache_digest)
        pairs = [item for kv in record.items() for item in kv]
        idem_key, idem_value = self.keys.idempotency(job.owner, "-"), ""
        if job.idempotency is not None:
            idem_key = self.keys.idempotency(job.owner, job.idempotency[0])
            idem_value = f"{env.job_id} {job.idempotency[1]}"
        keys = [
            self.keys.stream(env.lane),
            self.keys.job(env.job_id),
            self.keys.image(env.job_id),
            self.keys.active(job.owner),
            idem_key,
        ]
        args = [
            self.max_queue_depth,
            self.job_ttl_s,
            GROUP,
            env.model_dump_json(),
            job.image_png,
            repr(env.cost.seconds if env.cost is not None else 0.0),
            repr(time.time()),
            job.max_active,
            env.job_id,
            idem_value,
        ]
        outcome, value = await self._enqueue(keys=keys, args=[*args, *pairs])
        outcome = int(outcome)
        if outcome == 0:
            return Enqueued(accepted=False, depth=int(value), reason="full")
        if outcome == 3:
            return Enqueued(accepted=False, depth=int(value), reason="active")
        if outcome == 2:
            job_id, _, digest = _text(value).partition(" ")
            return Enqueued(accepted=False, reason="replayed", job_id=job_id, digest=digest)
        await self.replicated()
        return Enqueued(accepted=True, stream_id=_text(value))

    async def replicated(self) -> int:
        """``WAIT`` for the configured replicas (0: do not wait); the replicas that acked."""
        if self.wait_replicas <= 0:
            return 0
        acked = int(await self.redis.wait(self.wait_replicas, self.wait_timeout_ms))
        if acked < self.wait_replicas:
            self.replica_shortfalls += 1
        return acked

    async def reuse(self, job: NewJob, cache_digest: str) -> bool:
        """Answer ``job`` from the stored result of identical work, if there is one: a new
        succeeded job (the owner's) sharing the earlier job's result and heatmap."""
        env = job.envelope
        now = repr(time.time())
        record = {
            **job.record(),
            RecordField.status: JobStatus.succeeded.value,
            RecordField.progress: "1",
            RecordField.started_at: now,
            RecordField.first_started_at: now,
            RecordField.finished_at: now,
            RecordField.cached: "1",
        }
        pairs = [item for kv in record.items() for item in kv]
        keys = [
            self.keys.cache(cache_digest),
            self.keys.job(env.job_id),
            self.keys.result(env.job_id),
            self.keys.heatmap(env.job_id),
            self.keys.image(env.job_id),
            self.keys.webhooks,
        ]
        args = [self.job_ttl_s, self.keys.prefix, job.image_png, env.job_id, *pairs]
        return bool(await self._reuse(keys=keys, args=args))

    async def idempotent(self, owner: str, hashed_key: str) -> Replay | None:
        """The job an ``Idempotency-Key`` of ``owner`` was used for, if it was."""
        value = await self.redis.get(self.keys.idempotency(owner, hashed_key))
        if value is None:
            return None
        job_id, _, digest = _text(value).partition(" ")
        return Replay(job_id, digest)

    async def active_costs(self, owner: str) -> list[float]:
        """Estimated seconds of each of ``owner``'s queued and running jobs."""
        ids = await self.redis.zrange(self.keys.active(owner), 0, -1)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(_text(job_id)), RecordField.cost)
        costs = []
        for raw in await pipe.execute():
            try:
                costs.append(float(json.loads(raw)["seconds"]) if raw else 0.0)
            except (ValueError, KeyError, TypeError):
                costs.append(0.0)
        return costs

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
        reply = await self._cancel(
            keys=[self.keys.job(job_id), self.keys.webhooks],
            args=[repr(now), job_id, self.keys.prefix],
        )
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
