"""The worker's main loop: claim -> admit -> schedule -> write, every claimed job interleaved.

* Claim: while it has room (at most ``claim_count`` active jobs per lane), the worker takes new
  entries of every lane it serves, without blocking while it has work (every
  ``claim_interval_s``) and blocking on all lanes at once when idle; entries of a silent worker
  are taken over with ``XAUTOCLAIM`` every ``recover_interval_s``.
* Admit: claimed jobs are admitted at once (attempt counted, record ``running``) and become
  :class:`~workers.scheduler.Task` s: one per group of compatible jobs for methods of gradient
  passes (one batched call), one per job for methods of gradient-free passes (their passes are
  packed with every other job's by the batcher). A job taken over from a silent worker is a
  suspect: the worker claims nothing new until it has run its suspects one at a time, alone,
  admitting each only when it starts, so a job that kills workers uses up only its own
  attempts.
* Schedule: :class:`~workers.scheduler.Scheduler` runs the tasks' chunks, most urgent first
  (shortest remaining estimated work, with ageing), so a job's latency depends on its own cost.
* Every ``progress_interval_s`` one round trip publishes the tasks' progress and reads their
  jobs' statuses: a task whose jobs were all cancelled is interrupted at its next chunk
  boundary and its pending rows dropped at once.
* Write: a finished task's outcomes are written in one round trip (Lua, atomic per job).

Stop (first SIGTERM): nothing new is claimed; a task whose remaining estimated work fits in
``drain_s`` finishes, the others are interrupted at their next chunk boundary and their jobs
handed back to the stream (queued again, the attempt not counted) for another worker.
Redis trouble does not stop the computing: claims and polls pause for a second, and results
that could not be written are kept and written when Redis answers again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from app.contract.cost import job_cost
from app.contract.jobs import SCHEMA_VERSION, JobEnvelope
from app.contract.methods import method_specs, parse_params
from app.contract.metrics import EVALUATIONS
from app.logs import request_id_var
from workers.batcher import is_out_of_memory
from workers.explainers import Cancelled, ModelHandle, explainer_names
from workers.grouping import Job, effective_params, group_jobs
from workers.handler import GroupContext, Outcome, Problem, internal, invalid, run_group
from workers.queue import Entry, Finished, WorkerQueue
from workers.runtime import Runtime
from workers.scheduler import Scheduler, Task

log = logging.getLogger("workers.loop")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class HandBack(Cancelled):
    """Interrupts a task at shutdown: its jobs go back to the stream for another worker."""


class Worker:
    """One worker's loop over a :class:`WorkerQueue` with the models of a :class:`Runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        queue: WorkerQueue,
        stop: threading.Event,
        *,
        block_ms: int = 1000,
        recover_interval_s: float = 2.0,
        claim_interval_s: float = 0.01,
        progress_interval_s: float = 0.2,
        drain_s: float = 10.0,
        ageing: float = 0.1,
        pass_budget_s: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.stop = stop
        self.block_ms = block_ms
        self.recover_interval_s = recover_interval_s
        self.claim_interval_s = claim_interval_s
        self.progress_interval_s = progress_interval_s
        self.drain_s = drain_s
        self.clock = clock
        self.scheduler = Scheduler(
            runtime.max_batch_size, ageing=ageing, pass_budget_s=pass_budget_s, clock=clock
        )
        self.handles: dict[str, ModelHandle] = {
            name: replace(
                handle,
                evaluator=partial(self.scheduler.evaluate, handle.model),
                offloader=self.scheduler.offload,
            )
            for name, handle in runtime.models.items()
        }
        self.jobs_done = 0
        self.tasks_done = 0
        self._last_recover: dict[str, float] = {}
        self._last_claim = self._last_poll = float("-inf")
        self._redis_back_at = float("-inf")
        self._stopping_since: float | None = None
        self._unwritten: list[Outcome] = []
        self._suspects: list[Job] = []
        """Jobs taken over from a silent worker: admitted and run one at a time, alone."""
        self._counted = {"passes": 0, "rows": 0, "shared_passes": 0}
        self._explainers = set(explainer_names())
        self._specs = method_specs()

    # --- the loop -----------------------------------------------------------------------------

    def run(self, max_tasks: int | None = None, *, until_idle: bool = False) -> int:
        """Serve until ``stop`` is set (then drain), or until ``max_tasks`` more tasks finished,
        or (``until_idle``) until nothing is running or waiting; returns the tasks finished."""
        first = self.tasks_done
        self._ensure_groups()
        while True:
            quota = max_tasks is not None and self.tasks_done - first >= max_tasks
            if self.stop.is_set() and self._stopping_since is None:
                self._stopping_since = self.clock()
            try:
                idle = self._cycle(claim=not (self.stop.is_set() or quota), block=not until_idle)
            except Exception:
                log.exception("event=loop_error")
                self.stop.wait(1.0)
                continue
            finished = self.stop.is_set() or quota or (until_idle and idle)
            if finished and not (self.scheduler.busy or self._unwritten or self._suspects):
                break
        return self.tasks_done - first

    def _ensure_groups(self) -> None:
        while not self.stop.is_set():
            try:
                self.queue.ensure_groups(self.runtime.lanes)
                return
            except REDIS_ERRORS as error:
                log.error("event=redis_unavailable during=start error=%r", error)
                self.stop.wait(1.0)

    def _cycle(self, *, claim: bool, block: bool) -> bool:
        """One round: write what is pending, claim, poll, run one step. True when idle."""
        if self._unwritten and self._redis_ready():
            pending, self._unwritten = self._unwritten, []
            self._write(pending)
        idle = True
        if not claim:
            self._drain()
        elif self._suspects:
            idle = not self._run_suspect()
        else:
            idle = not self._claim_if_due(block)
        self._poll_if_due()
        if self.scheduler.busy:
            for task in self.scheduler.step():
                self._finish(task)
            return False
        return idle

    def _redis_ready(self) -> bool:
        return self.clock() >= self._redis_back_at

    def _redis_failed(self, during: str, error: Exception) -> None:
        log.error("event=redis_unavailable during=%s error=%r", during, error)
        self._redis_back_at = self.clock() + 1.0
        if not self.scheduler.busy:
            self.stop.wait(1.0)

    # --- claiming -------------------------------------------------------------------------------

    def _room(self) -> dict[str, int]:
        """Jobs each lane may still claim (``claim_count`` active jobs per lane at most)."""
        active: dict[str, int] = {}
        for task in self.scheduler.tasks:
            for job in task.context["jobs"]:
                active[job.lane] = active.get(job.lane, 0) + 1
        return {lane: self.queue.claim_count - active.get(lane, 0) for lane in self.runtime.lanes}

    def _claim_if_due(self, block: bool) -> bool:
        """Claim new work when due; True if something was started."""
        now = self.clock()
        busy = self.scheduler.busy
        if (busy and now - self._last_claim < self.claim_interval_s) or not self._redis_ready():
            return False
        self._last_claim = now
        room = {lane: n for lane, n in self._room().items() if n > 0}
        if not room:
            return False
        try:
            entries = self._next_entries(room, block and not busy)
        except REDIS_ERRORS as error:
            self._redis_failed("claim", error)
            return False
        if not entries:
            return False
        try:
            self._start(self._prepare(entries))
        except REDIS_ERRORS as error:  # admitted or not, the entries are taken over later
            self.queue.forget(entries)
            self._redis_failed("admit", error)
        return True

    def _next_entries(self, room: dict[str, int], block: bool) -> list[Entry]:
        """Recovered entries when due, else new ones: each lane up to its room."""
        entries: list[Entry] = []
        now = self.clock()
        for lane, count in room.items():
            if now - self._last_recover.get(lane, float("-inf")) >= self.recover_interval_s:
                self._last_recover[lane] = now
                recovered = self.queue.recover(lane, count)
                if recovered:
                    log.info("event=recovered lane=%s entries=%d", lane, len(recovered))
                entries += recovered
        if entries:
            return entries
        for lane, count in room.items():
            entries += self.queue.claim([lane], None, count)
        if entries or not block:
            return entries
        return self.queue.claim(list(room), self.block_ms, min(room.values()))

    # --- preparing and admitting -------------------------------------------------------------

    def _prepare(self, entries: list[Entry]) -> list[Job]:
        """Envelopes -> jobs; entries that cannot become a valid job end here."""
        jobs: list[Job] = []
        for entry in entries:
            envelope = self._parse(entry)
            if envelope is None:
                continue
            try:
                params = self._validate(envelope)
            except ValueError as error:
                self._finish_unstarted(entry, envelope, invalid(str(error)))
                continue
            job = Job(envelope, entry.lane, entry.entry_id, entry.envelope or "", params)
            job.deliveries = entry.deliveries
            job.cost_s = self._cost_s(envelope, params)
            jobs.append(job)
        return jobs

    def _cost_s(self, envelope: JobEnvelope, params: dict[str, Any]) -> float:
        """The job's estimated seconds on this worker (its own measured timings)."""
        info = self.runtime.infos[envelope.model]
        passes = parse_params(envelope.method, params).passes(info)
        return job_cost(passes, info, envelope.evaluate).seconds

    def _parse(self, entry: Entry) -> JobEnvelope | None:
        """The envelope, or None after dead-lettering an unreadable or unknown-version one."""
        try:
            raw: Any = json.loads(entry.envelope or "")
        except json.JSONDecodeError:
            raw = None
        job_id = raw.get("job_id") if isinstance(raw, dict) else None
        version = raw.get("schema_version", SCHEMA_VERSION) if isinstance(raw, dict) else None
        reason = None
        if not isinstance(raw, dict):
            reason = "the envelope is not a JSON object"
        elif version != SCHEMA_VERSION:
            reason = f"unknown schema_version {version!r} (this worker knows {SCHEMA_VERSION})"
        else:
            try:
                return JobEnvelope.model_validate(raw)
            except ValidationError as error:
                reason = f"invalid envelope: {error.errors()[0]['msg']}"
        self.queue.dead_letter(entry, reason)
        if isinstance(job_id, str):
            self.queue.fail(entry.lane, entry.entry_id, job_id, internal(reason).as_dict())
        else:
            self.queue.ack(entry.lane, entry.entry_id)
        log.error(
            "event=dead_letter entry=%s lane=%s reason=%r", entry.entry_id, entry.lane, reason
        )
        return None

    def _validate(self, envelope: JobEnvelope) -> dict[str, Any]:
        """Effective params; ``ValueError`` for what this worker cannot serve."""
        if envelope.model not in self.runtime.models:
            raise ValueError(f"model {envelope.model!r} is not served by this worker")
        if envelope.method not in self._specs or envelope.method not in self._explainers:
            raise ValueError(f"unknown method {envelope.method!r}")
        unknown = [name for name in envelope.evaluate if name not in EVALUATIONS]
        if unknown:
            raise ValueError(f"unknown evaluation {unknown[0]!r}; known: {sorted(EVALUATIONS)}")
        try:
            return effective_params(envelope.method, envelope.params, self.runtime.max_batch_size)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "params"
            raise ValueError(f"invalid parameter {where}: {first['msg']}") from None

    def _start(self, jobs: list[Job]) -> None:
        """Admit ``jobs`` and hand them to the scheduler as tasks."""
        if not jobs:
            return
        self._suspects.extend(job for job in jobs if job.deliveries > 1)
        admitted = self._admit([job for job in jobs if job.deliveries <= 1])
        fresh = [job for job in admitted if job.attempt <= 1]
        retried = [job for job in admitted if job.attempt > 1]
        for group in group_jobs(fresh):
            if self._specs[group[0].method].grouped:
                self._submit(group, private=False)
            else:
                for job in group:
                    self._submit([job], private=False)
        for job in retried:  # released at a shutdown after an attempt was counted elsewhere
            self._submit([job], private=True)

    def _run_suspect(self) -> bool:
        """Once nothing else runs, admit the next job taken over from a silent worker and run
        it alone: if it kills this worker too, it takes no innocent job with it."""
        if self.scheduler.busy or not self._redis_ready():
            return False
        job = self._suspects.pop(0)
        try:
            admitted = self._admit([job])
        except REDIS_ERRORS as error:
            self._suspects.insert(0, job)
            self._redis_failed("admit", error)
            return False
        for suspect in admitted:
            self._submit([suspect], private=True)
        return bool(admitted)

    def _submit(self, group: list[Job], *, private: bool) -> None:
        task = Task(
            name=f"{group[0].method}:{group[0].job_id[:8]}",
            body=lambda: None,
            cost_s=sum(job.cost_s for job in group),
            private=private,
            pure=self._specs[group[0].method].family == "perturbation",
            context={"jobs": group},
        )
        task.body = partial(self._run_group, task, group)
        self.scheduler.submit(task)

    def _admit(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose records now say ``running``; the others end here."""
        admissions = self.queue.admit([job.job_id for job in jobs])
        admitted: list[Job] = []
        for job, admission in zip(jobs, admissions, strict=True):
            if admission.outcome == "running":
                job.attempt, job.started = admission.attempts, self.clock()
                job.image = admission.image
                admitted.append(job)
            elif admission.outcome == "dead":
                self._dead(job, admission.attempts)
            else:  # gone, cancelled, or already final (a previous delivery finished it)
                self.queue.ack(job.lane, job.entry_id)
                self._log("job_skipped", job, record=admission.outcome)
        return admitted

    def _dead(self, job: Job, attempts: int) -> None:
        stopped = attempts - 1
        reason = f"the job stopped {stopped} worker{'s' if stopped != 1 else ''}"
        entry = Entry(job.lane, job.entry_id, job.raw)
        self.queue.dead_letter(entry, reason)
        problem = internal(f"{reason}; it was moved to the dead-letter stream")
        self.queue.fail(job.lane, job.entry_id, job.job_id, problem.as_dict())
        self.queue.record_jobs([(job.method, "failed", 0.0)])
        self._log("job_dead_lettered", job, attempt=attempts, reason=reason)

    def _finish_unstarted(self, entry: Entry, envelope: JobEnvelope, problem: Problem) -> None:
        self.queue.fail(entry.lane, entry.entry_id, envelope.job_id, problem.as_dict())
        self.queue.record_jobs([(envelope.method, "failed", 0.0)])
        log.warning(
            "event=job_refused job_id=%s method=%s model=%s detail=%r",
            envelope.job_id,
            envelope.method,
            envelope.model,
            problem.detail,
        )

    # --- running (in the task's thread) ---------------------------------------------------------

    def _run_group(self, task: Task, group: list[Job]) -> list[Outcome]:
        """The task's body: one explainer call over ``group`` (its log lines carry the request
        ids of its jobs)."""
        request_id_var.set(",".join(job.envelope.request_id or "-" for job in group))
        model = group[0].model
        ctx = GroupContext(
            self.handles[model],
            self.runtime.infos[model].num_classes,
            self.runtime.max_batch_size,
            self.runtime.worker_id,
            partial(self._report, task),
        )
        return run_group(ctx, group, [job.image for job in group])

    def _report(self, task: Task, done: int, total: int) -> None:
        """A task's progress callback: a chunk boundary, where other tasks get their turn."""
        task.context["progress"] = (done, total)
        self.scheduler.pause(done / total if total > 0 else None)

    # --- polling --------------------------------------------------------------------------------

    def _poll_if_due(self) -> None:
        """Publish progress, read statuses, interrupt tasks whose jobs were all cancelled."""
        now = self.clock()
        if now - self._last_poll < self.progress_interval_s or not self._redis_ready():
            return
        self._last_poll = now
        updates: dict[str, tuple[int, int] | None] = {}
        for task in self.scheduler.tasks:
            progress = task.context.get("progress")
            publish = progress if progress != task.context.get("published") else None
            if publish is not None and publish[1] > 0 and publish[0] >= publish[1]:
                publish = None  # the result write publishes the final event
            for job in task.context["jobs"]:
                updates[job.job_id] = publish
        try:
            statuses = self.queue.poll(updates)
            self._record_forwards()
        except REDIS_ERRORS as error:
            self._redis_failed("poll", error)
            return
        for task in self.scheduler.tasks:
            task.context["published"] = task.context.get("progress")
            jobs = task.context["jobs"]
            if task.interrupt is None and all(statuses.get(j.job_id) != "running" for j in jobs):
                ids = ", ".join(job.job_id for job in jobs)
                self.scheduler.interrupt(task, Cancelled(f"jobs {ids} were cancelled"))

    def _record_forwards(self) -> None:
        """Add the batchers' counters since the last call to the metrics hash."""
        totals = self.scheduler.stats()
        delta = {key: totals[key] - self._counted[key] for key in totals}
        if any(delta.values()):
            self.queue.record_forwards(delta["passes"], delta["rows"], delta["shared_passes"])
            self._counted = totals

    # --- stopping -------------------------------------------------------------------------------

    def _drain(self) -> None:
        """While stopping: hand back every task that would not finish within ``drain_s``,
        and every job taken over but not started yet."""
        if self._stopping_since is None:
            return
        while self._suspects and self._redis_ready():
            job = self._suspects[0]
            try:
                self.queue.release(job.lane, job.entry_id, job.raw, job.job_id, job.cost_s)
            except REDIS_ERRORS as error:
                self._redis_failed("release", error)
                break
            self._suspects.pop(0)
        elapsed = self.clock() - self._stopping_since
        for task in self.scheduler.tasks:
            if task.interrupt is None and elapsed + task.remaining_s() > self.drain_s:
                self.scheduler.interrupt(task, HandBack("the worker is stopping"))

    # --- finishing --------------------------------------------------------------------------------

    def _finish(self, task: Task) -> None:
        """Write what became of a finished task's jobs."""
        self.tasks_done += 1
        group: list[Job] = task.context["jobs"]
        error = task.error
        try:
            if isinstance(error, HandBack):
                for job in group:
                    self.queue.release(job.lane, job.entry_id, job.raw, job.job_id, job.cost_s)
                    self._log("job_handed_back", job)
                return
            if isinstance(error, Cancelled):
                for job in group:
                    self.queue.ack(job.lane, job.entry_id)
                    self._log("job_cancelled", job)
                self.queue.record_jobs([(j.method, "cancelled", self._elapsed(j)) for j in group])
                return
        except REDIS_ERRORS as redis_error:  # the entries are taken over after the timeout
            self.queue.forget(Entry(j.lane, j.entry_id, j.raw) for j in group)
            self._redis_failed("finish", redis_error)
            return
        if error is not None:  # a bug outside the explainer: fail the group, keep serving
            if is_out_of_memory(error):
                detail = "out of memory while preparing the group"
            else:
                log.error("event=task_crash task=%s", task.name, exc_info=error)
                detail = f"{type(error).__name__}: {error}"
            self._write([Outcome(job, problem=internal(detail)) for job in group])
            return
        outcomes: list[Outcome] = task.result
        for outcome in outcomes:
            if outcome.result is not None:
                outcome.result.meta.setdefault("forward_batches", task.passes)
                outcome.result.meta.setdefault("shared_forward_batches", task.shared_passes)
        self._write(outcomes)

    def _write(self, outcomes: list[Outcome]) -> None:
        """All outcomes of a task in one round trip, then its metrics and log lines."""
        finished = [
            Finished(
                o.job.lane,
                o.job.entry_id,
                o.job.job_id,
                o.result.model_dump_json(),
                o.heatmap.tobytes(),
            )
            if o.result is not None and o.heatmap is not None
            else Finished(
                o.job.lane,
                o.job.entry_id,
                o.job.job_id,
                problem=(o.problem or internal("no result")).as_dict(),
            )
            for o in outcomes
        ]
        try:
            written = self.queue.finish(finished)
        except REDIS_ERRORS as error:
            self._unwritten.extend(outcomes)
            self._redis_failed("write", error)
            return
        counted: list[tuple[str, str, float]] = []
        for outcome, was_written in zip(outcomes, written, strict=True):
            job = outcome.job
            status = "succeeded" if outcome.result is not None else "failed"
            if was_written:
                counted.append((job.method, status, self._elapsed(job)))
            else:
                status = "dropped"  # cancelled meanwhile, or finished by another delivery
            self.jobs_done += 1
            extra = {"detail": repr(outcome.problem.detail)} if outcome.problem else {}
            self._log(f"job_{status}", job, group_size=len(outcomes), **extra)
        try:
            self.queue.record_jobs(counted, batch_size=len(outcomes))
        except REDIS_ERRORS as error:
            self._redis_failed("metrics", error)

    def _elapsed(self, job: Job) -> float:
        return max(0.0, self.clock() - job.started) if job.started else 0.0

    def _log(self, event: str, job: Job, **fields: Any) -> None:
        fields.setdefault("attempt", job.attempt)
        extra = "".join(f" {key}={value}" for key, value in fields.items())
        log.info(
            "event=%s job_id=%s method=%s model=%s lane=%s elapsed_ms=%.1f%s",
            event,
            job.job_id,
            job.method,
            job.model,
            job.lane,
            self._elapsed(job) * 1000,
            extra,
            extra={"request_id": job.envelope.request_id or "-"},
        )


class Heartbeat(threading.Thread):
    """Announces the worker and refreshes its in-flight entries every ``interval_s``; touches
    ``health_file`` (if any) after each successful beat, for container probes."""

    def __init__(self, worker: Worker, interval_s: float, health_file: str | None = None) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.worker = worker
        self.interval_s = interval_s
        self.health_file = Path(health_file) if health_file else None
        self.halt = threading.Event()

    def beat(self) -> None:
        """One announcement and one idle-time refresh."""
        queue, runtime = self.worker.queue, self.worker.runtime
        queue.announce(runtime.announcement(self.worker.jobs_done))
        queue.refresh_in_flight()
        if self.health_file is not None:
            self.health_file.touch()

    def run(self) -> None:
        """Beat until halted; Redis trouble is logged and retried at the next beat."""
        while not self.halt.wait(self.interval_s):
            try:
                self.beat()
            except Exception:
                log.exception("event=heartbeat_failed")
