"""The worker's side of the queue protocol (docs/PROTOCOL.md), over a synchronous Redis client.

Every state change of a job record that races with the gateway (admission, success, failure,
progress) is one Lua script, so it is atomic: a cancelled job is never set running again, and a
result is written only while the record still says ``running``. Entries claimed from a lane
stream stay *in flight* until they are acknowledged (or released at shutdown); the heartbeat
resets their idle time so that only a dead worker's entries are ever taken over.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from app.contract.jobs import JobEvent, JobStatus, RecordField, WorkerAnnouncement
from app.contract.keys import GROUP, Keys

JOB_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', 0} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' or status == 'succeeded' or status == 'failed' then
  return {status, 0}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[1]) then return {'dead', attempts} end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2], 'worker', ARGV[3],
           'progress', '0')
redis.call('HSETNX', KEYS[1], 'first_started_at', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {'running', attempts}
"""

_ENDED = """
local function ended(job_key, job_id, prefix, webhooks)
  local owner = redis.call('HGET', job_key, 'owner')
  if owner then redis.call('ZREM', prefix .. ':active:' .. owner, job_id) end
  if redis.call('HEXISTS', job_key, 'callback_url') == 1 then
    redis.call('XADD', webhooks, '*', 'job_id', job_id)
  end
end
"""
"""What every final transition does: the job leaves its owner's active set, and a job with a
``callback_url`` gets a webhook delivery queued (in the same atomic step, so none is lost)."""

_COMPLETE = (
    _ENDED
    + """
local written = 0
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'progress', '1', 'finished_at', ARGV[4])
  local cache = redis.call('HGET', KEYS[1], 'cache_key')
  if cache then redis.call('SET', cache, ARGV[9], 'EX', ARGV[3]) end
  ended(KEYS[1], ARGV[9], ARGV[10], KEYS[5])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  written = 1
end
redis.call('XACK', KEYS[4], ARGV[7], ARGV[8])
redis.call('XDEL', KEYS[4], ARGV[8])
return written
"""
)

_FAIL = (
    _ENDED
    + """
local written = 0
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[1])
  ended(KEYS[1], ARGV[7], ARGV[8], KEYS[3])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  written = 1
end
if ARGV[6] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[5], ARGV[6])
  redis.call('XDEL', KEYS[2], ARGV[6])
end
return written
"""
)

_PROGRESS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return status
"""

_RELEASE = """
local status = redis.call('HGET', KEYS[1], 'status')
local id = false
if status == 'queued' or status == 'running' then
  id = redis.call('XADD', KEYS[2], '*', 'envelope', ARGV[1], 'cost', ARGV[6])
  redis.call('HSET', KEYS[1], 'stream_id', id)
  if status == 'running' then
    redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '0')
    redis.call('HDEL', KEYS[1], 'started_at', 'worker')
    if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then
      redis.call('HINCRBY', KEYS[1], 'attempts', -1)
    end
    redis.call('PUBLISH', ARGV[4], ARGV[5])
  end
end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
return id
"""
"""Give a job back: a fresh entry at the stream's end; a running job is queued again with its
attempt uncounted (it stopped nobody). A cancelled, finished or expired job is only acked."""


@dataclass(frozen=True)
class Entry:
    """One stream entry claimed by this worker."""

    lane: str
    entry_id: str
    envelope: str | None
    """The ``envelope`` field, or None if the entry has none."""
    deliveries: int = 1


@dataclass(frozen=True)
class Admission:
    """What the record said when a job was admitted: ``running``, ``dead``, or why to skip."""

    outcome: str
    """``running``, ``dead`` (too many attempts), ``gone``, or a final status."""
    attempts: int
    image: bytes | None = None
    """The upload (PNG bytes), fetched in the same round trip; None if expired."""


@dataclass(frozen=True)
class Finished:
    """A job's outcome to write: a result and its heatmap, or a problem."""

    lane: str
    entry_id: str | None
    job_id: str
    result_json: str | None = None
    heatmap: bytes | None = None
    problem: dict[str, Any] | None = None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class WorkerQueue:
    """Claims, admits, completes and fails jobs; announces the worker; counts metrics."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        consumer: str,
        *,
        claim_count: int,
        visibility_timeout_s: float,
        max_attempts: int,
        job_ttl_s: int,
        heartbeat_ttl_s: float,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.claim_count = claim_count
        self.visibility_timeout_ms = max(1, int(visibility_timeout_s * 1000))
        self.max_attempts = max_attempts
        self.job_ttl_s = job_ttl_s
        self.heartbeat_ttl_ms = max(1, int(heartbeat_ttl_s * 1000))
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._in_flight: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._admit = client.register_script(_ADMIT)
        self._complete = client.register_script(_COMPLETE)
        self._fail = client.register_script(_FAIL)
        self._progress = client.register_script(_PROGRESS)
        self._release = client.register_script(_RELEASE)

    # --- streams ------------------------------------------------------------------------------

    def ensure_groups(self, lanes: Iterable[str]) -> None:
        """``XGROUP CREATE stream workers 0 MKSTREAM`` for each lane (BUSYGROUP ignored)."""
        for lane in lanes:
            try:
                self.client.xgroup_create(self.keys.stream(lane), GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def claim(
        self, lanes: list[str], block_ms: int | None, count: int | None = None
    ) -> list[Entry]:
        """New entries of ``lanes`` (``XREADGROUP ... >``), up to ``count`` (default
        ``claim_count``) per lane.

        ``block_ms=None`` returns at once; otherwise it waits on all lanes at once.
        """
        streams = {self.keys.stream(lane): ">" for lane in lanes}
        try:
            reply = self.client.xreadgroup(
                GROUP, self.consumer, streams, count=count or self.claim_count, block=block_ms
            )
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self.ensure_groups(lanes)  # the streams were deleted (e.g. FLUSHALL): start over
            return []
        by_stream = {self.keys.stream(lane): lane for lane in lanes}
        entries: list[Entry] = []
        for stream, messages in reply or []:
            lane = by_stream[_text(stream)]
            entries.extend(self._entry(lane, entry_id, fields) for entry_id, fields in messages)
        entries.sort(key=lambda entry: lanes.index(entry.lane))
        self._track(entries)
        return entries

    def recover(self, lane: str, count: int | None = None) -> list[Entry]:
        """Entries idle longer than the visibility timeout (a silent worker's), now ours."""
        try:
            reply = self.client.xautoclaim(
                self.keys.stream(lane),
                GROUP,
                self.consumer,
                self.visibility_timeout_ms,
                start_id="0-0",
                count=count or self.claim_count,
            )
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self.ensure_groups([lane])
            return []
        messages = reply[1] if len(reply) > 1 else []
        entries = [
            self._entry(lane, entry_id, fields, deliveries=2)
            for entry_id, fields in messages
            if fields is not None
        ]
        self._track(entries)
        return entries

    def refresh_in_flight(self) -> int:
        """Reset the idle time of every entry this worker holds (``XCLAIM ... JUSTID``)."""
        with self._lock:
            held = {lane: sorted(ids) for lane, ids in self._in_flight.items() if ids}
        for lane, ids in held.items():
            self.client.xclaim(self.keys.stream(lane), GROUP, self.consumer, 0, ids, justid=True)
        return sum(len(ids) for ids in held.values())

    def forget(self, entries: Iterable[Entry]) -> None:
        """Stop refreshing these entries (left unfinished by an error)."""
        for entry in entries:
            self._untrack(entry.lane, entry.entry_id)

    def forget_in_flight(self) -> None:
        """Stop refreshing every held entry (after an error left them unfinished)."""
        with self._lock:
            self._in_flight.clear()

    def in_flight(self) -> dict[str, set[str]]:
        """A copy of the entries this worker holds, by lane."""
        with self._lock:
            return {lane: set(ids) for lane, ids in self._in_flight.items() if ids}

    def ack(self, lane: str, entry_id: str) -> None:
        """Acknowledge and delete one entry (a job that is done with, whatever the outcome)."""
        stream = self.keys.stream(lane)
        pipe = self.client.pipeline()
        pipe.xack(stream, GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()
        self._untrack(lane, entry_id)

    def release(
        self, lane: str, entry_id: str, envelope: str, job_id: str, cost_s: float = 0.0
    ) -> str | None:
        """Give a claimed job back (never admitted, or handed back at shutdown): a fresh entry
        at the stream's end, the record ``queued`` again; the new entry id (None: only acked)."""
        event = JobEvent(job_id=job_id, status=JobStatus.queued).model_dump_json()
        new_id = self._release(
            keys=[self.keys.job(job_id), self.keys.stream(lane)],
            args=[envelope, GROUP, entry_id, self.keys.events(job_id), event, repr(cost_s)],
        )
        self._untrack(lane, entry_id)
        return _text(new_id) if new_id else None

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Copy an entry to the dead-letter stream with the reason it was given up on."""
        self.client.xadd(
            self.keys.dead_letter,
            {"envelope": entry.envelope or "", "reason": reason, "lane": entry.lane},
        )

    # --- job records --------------------------------------------------------------------------

    def admit(self, job_ids: list[str]) -> list[Admission]:
        """Count an attempt and mark each job running, unless it is gone, final, or dead.

        One round trip, which also fetches the uploads.
        """
        now = repr(time.time())
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            event = JobEvent(job_id=job_id, status=JobStatus.running).model_dump_json()
            self._admit(
                keys=[self.keys.job(job_id)],
                args=[self.max_attempts, now, self.consumer, self.keys.events(job_id), event],
                client=pipe,
            )
        pipe.mget([self.keys.image(job_id) for job_id in job_ids])
        *replies, images = pipe.execute()
        return [
            Admission(_text(outcome), int(attempts), image)
            for (outcome, attempts), image in zip(replies, images, strict=True)
        ]

    def complete(
        self, lane: str, entry_id: str, job_id: str, result_json: str, heatmap: bytes
    ) -> bool:
        """Store the result and heatmap if the job is still running; acknowledge the entry."""
        (written,) = self.finish([Finished(lane, entry_id, job_id, result_json, heatmap)])
        return written

    def fail(self, lane: str, entry_id: str | None, job_id: str, problem: dict[str, Any]) -> bool:
        """Mark the job failed with a problem+json ``error`` unless it already ended; ack."""
        (written,) = self.finish([Finished(lane, entry_id, job_id, problem=problem)])
        return written

    def finish(self, jobs: list[Finished]) -> list[bool]:
        """Write every outcome of a group in one round trip; True where it was written.

        A result is written only while the record says ``running``, a failure only while it
        says ``queued`` or ``running``; every entry is acknowledged and deleted either way.
        """
        now = repr(time.time())
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            if job.result_json is not None and job.heatmap is not None:
                self._queue_complete(pipe, job, now)
            else:
                self._queue_fail(pipe, job, now)
        written = [bool(reply) for reply in pipe.execute()]
        if self.wait_replicas > 0:  # a failover must not lose a result a client may have seen
            self.client.wait(self.wait_replicas, self.wait_timeout_ms)
        for job in jobs:
            if job.entry_id:
                self._untrack(job.lane, job.entry_id)
        return written

    def _queue_complete(self, pipe: redis.client.Pipeline, job: Finished, now: str) -> None:
        event = JobEvent(job_id=job.job_id, status=JobStatus.succeeded, progress=1.0)
        self._complete(
            keys=[
                self.keys.job(job.job_id),
                self.keys.result(job.job_id),
                self.keys.heatmap(job.job_id),
                self.keys.stream(job.lane),
                self.keys.webhooks,
            ],
            args=[
                job.result_json,
                job.heatmap,
                self.job_ttl_s,
                now,
                self.keys.events(job.job_id),
                event.model_dump_json(),
                GROUP,
                job.entry_id,
                job.job_id,
                self.keys.prefix,
            ],
            client=pipe,
        )

    def _queue_fail(self, pipe: redis.client.Pipeline, job: Finished, now: str) -> None:
        event = JobEvent(job_id=job.job_id, status=JobStatus.failed)
        self._fail(
            keys=[self.keys.job(job.job_id), self.keys.stream(job.lane), self.keys.webhooks],
            args=[
                json.dumps(job.problem or {}),
                now,
                self.keys.events(job.job_id),
                event.model_dump_json(),
                GROUP,
                job.entry_id or "",
                job.job_id,
                self.keys.prefix,
            ],
            client=pipe,
        )

    def progress(self, job_ids: list[str], done: int, total: int) -> dict[str, str | None]:
        """Publish progress of running jobs; returns every job's status (None: record gone)."""
        fraction = min(1.0, done / total) if total > 0 else 0.0
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            event = JobEvent(
                job_id=job_id, status=JobStatus.running, progress=fraction, done=done, total=total
            ).model_dump_json()
            self._progress(
                keys=[self.keys.job(job_id)],
                args=[repr(fraction), self.keys.events(job_id), event],
                client=pipe,
            )
        return {
            job_id: (None if status is None else _text(status))
            for job_id, status in zip(job_ids, pipe.execute(), strict=True)
        }

    def poll(self, jobs: dict[str, tuple[int, int] | None]) -> dict[str, str | None]:
        """Publish the progress ``(done, total)`` of the jobs that have one and read every
        job's status (None: the record is gone), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for job_id, progress in jobs.items():
            if progress is None:
                pipe.hget(self.keys.job(job_id), RecordField.status)
                continue
            done, total = progress
            fraction = min(1.0, done / total) if total > 0 else 0.0
            event = JobEvent(
                job_id=job_id, status=JobStatus.running, progress=fraction, done=done, total=total
            ).model_dump_json()
            self._progress(
                keys=[self.keys.job(job_id)],
                args=[repr(fraction), self.keys.events(job_id), event],
                client=pipe,
            )
        replies = pipe.execute() if jobs else []
        return {
            job_id: (None if status is None else _text(status))
            for job_id, status in zip(jobs, replies, strict=True)
        }

    def statuses(self, job_ids: list[str]) -> dict[str, str | None]:
        """The ``status`` field of each job record (None: the record is gone)."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), RecordField.status)
        return {
            job_id: (None if status is None else _text(status))
            for job_id, status in zip(job_ids, pipe.execute(), strict=True)
        }

    # --- heartbeat and metrics -----------------------------------------------------------------

    def announce(self, announcement: WorkerAnnouncement) -> None:
        """``SET worker(id) <json> PX ttl`` and ``ZADD workers now id``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(
            self.keys.worker(announcement.worker_id),
            announcement.model_dump_json(),
            px=self.heartbeat_ttl_ms,
        )
        pipe.zadd(self.keys.workers, {announcement.worker_id: time.time()})
        pipe.execute()

    def withdraw(self, worker_id: str) -> None:
        """Remove this worker's announcement (clean shutdown)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.worker(worker_id))
        pipe.zrem(self.keys.workers, worker_id)
        pipe.execute()

    def record_jobs(
        self, outcomes: Iterable[tuple[str, str, float]], batch_size: int | None = None
    ) -> None:
        """Count finished jobs, (method, final status, seconds) each, and the explainer call
        over ``batch_size`` jobs that produced them (if any); one round trip."""
        pipe = self.client.pipeline(transaction=False)
        key = self.keys.metrics
        for method, status, seconds in outcomes:
            pipe.hincrbyfloat(key, f"jobs_total:{method}:{status}", 1)
            for le in (*JOB_SECONDS_BUCKETS, "+Inf"):
                if le == "+Inf" or seconds <= float(le):
                    pipe.hincrbyfloat(key, f"job_seconds_bucket:{method}:{le}", 1)
            pipe.hincrbyfloat(key, f"job_seconds_sum:{method}", seconds)
            pipe.hincrbyfloat(key, f"job_seconds_count:{method}", 1)
        if batch_size is not None:
            for le in (*BATCH_SIZE_BUCKETS, "+Inf"):
                if le == "+Inf" or batch_size <= int(le):
                    pipe.hincrbyfloat(key, f"batch_size_bucket:{le}", 1)
            pipe.hincrbyfloat(key, "batch_size_sum", batch_size)
            pipe.hincrbyfloat(key, "batch_size_count", 1)
        if len(pipe):
            pipe.execute()

    def record_forwards(self, passes: int, rows: int, shared: int) -> None:
        """Count the batcher's packed forward passes, their rows, and the passes shared by
        several tasks."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrbyfloat(self.keys.metrics, "forward_passes_total", passes)
        pipe.hincrbyfloat(self.keys.metrics, "forward_rows_total", rows)
        pipe.hincrbyfloat(self.keys.metrics, "forward_shared_passes_total", shared)
        pipe.execute()

    def record_batch(self, size: int) -> None:
        """Count one explainer call over ``size`` jobs."""
        self.record_jobs([], batch_size=size)

    # --- helpers ------------------------------------------------------------------------------

    def _entry(self, lane: str, entry_id: Any, fields: Any, deliveries: int = 1) -> Entry:
        envelope = None
        for name, value in (fields or {}).items():
            if _text(name) == "envelope":
                envelope = _text(value)
        return Entry(lane, _text(entry_id), envelope, deliveries)

    def _track(self, entries: list[Entry]) -> None:
        with self._lock:
            for entry in entries:
                self._in_flight.setdefault(entry.lane, set()).add(entry.entry_id)

    def _untrack(self, lane: str, entry_id: str) -> None:
        with self._lock:
            self._in_flight.get(lane, set()).discard(entry_id)
