"""The claim loop: claim -> prepare -> group -> admit -> run -> complete, fast lane first.

A cheap job never waits behind an expensive one: the fast lane is read first at every claim,
and while a slow-lane group runs, its progress callback (at most every ``preempt_interval_s``)
claims waiting fast-lane jobs without blocking and runs them right there, with gradients
enabled (single-threaded cooperative preemption; explainers hold no hooks during progress calls).

Claimed jobs are admitted (attempt counted, record set ``running``) when their group starts, so a
job waiting behind a group in this worker still reads ``queued`` and can be cancelled for free.
On stop, jobs claimed but not started are handed back to their stream.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import torch
from pydantic import ValidationError

from app.contract.jobs import SCHEMA_VERSION, JobEnvelope
from app.contract.methods import method_specs
from app.contract.metrics import EVALUATIONS
from workers.explainers import Cancelled, explainer_names
from workers.grouping import Job, effective_params, group_jobs, isolate_retries
from workers.handler import GroupContext, Outcome, Problem, internal, invalid, run_group
from workers.queue import Entry, Finished, WorkerQueue
from workers.runtime import Runtime

log = logging.getLogger("workers.loop")


class Worker:
    """One worker's claim loop over a :class:`WorkerQueue` with the models of a :class:`Runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        queue: WorkerQueue,
        stop: threading.Event,
        *,
        block_ms: int = 1000,
        recover_interval_s: float = 2.0,
        preempt_interval_s: float = 0.05,
        progress_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.stop = stop
        self.block_ms = block_ms
        self.recover_interval_s = recover_interval_s
        self.preempt_interval_s = preempt_interval_s
        self.progress_interval_s = progress_interval_s
        self.clock = clock
        self.jobs_done = 0
        self.groups_run = 0
        self._last_recover: dict[str, float] = {}
        self._last_preempt = clock()
        self._explainers = set(explainer_names())
        self._specs = method_specs()

    # --- the loop -----------------------------------------------------------------------------

    def run(self, max_groups: int | None = None) -> int:
        """Serve until ``stop`` is set (or ``max_groups`` more groups ran); returns groups run.

        Redis outages and unexpected errors do not end the loop: it waits a second and goes
        on. Entries it held at that moment are no longer refreshed, so they are taken over
        after the visibility timeout (by this worker or another) like a crashed worker's.
        """
        first = self.groups_run
        if max_groups is not None:
            max_groups += first
        groups_ready = False
        while not self._done(max_groups):
            try:
                if not groups_ready:
                    self.queue.ensure_groups(self.runtime.lanes)
                    groups_ready = True
                entries = self._next_entries()
                if entries:
                    self._run_jobs(self._prepare(entries), nested=False, max_groups=max_groups)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                log.error("event=redis_unavailable error=%r", error)
                self._abandon()
            except Exception:
                log.exception("event=loop_error")
                self._abandon()
        return self.groups_run - first

    def _abandon(self) -> None:
        """Stop refreshing what this worker holds, and pause before going on."""
        self.queue.forget_in_flight()
        self.stop.wait(1.0)

    def _done(self, max_groups: int | None) -> bool:
        return self.stop.is_set() or (max_groups is not None and self.groups_run >= max_groups)

    def _next_entries(self) -> list[Entry]:
        """Recovered entries when due, else new ones: fast lane first, then block on all."""
        entries = [e for lane in self.runtime.lanes for e in self._recover_if_due(lane)]
        if entries:
            return entries
        for lane in self.runtime.lanes:
            entries = self.queue.claim([lane], None)
            if entries:
                return entries
        return self.queue.claim(list(self.runtime.lanes), self.block_ms)

    def _recover_if_due(self, lane: str) -> list[Entry]:
        now = self.clock()
        if now - self._last_recover.get(lane, float("-inf")) < self.recover_interval_s:
            return []
        self._last_recover[lane] = now
        entries = self.queue.recover(lane)
        if entries:
            log.info("event=recovered lane=%s entries=%d", lane, len(entries))
        return entries

    def _run_jobs(self, jobs: list[Job], *, nested: bool, max_groups: int | None = None) -> None:
        groups = group_jobs(jobs)
        for index, group in enumerate(groups):
            if self._done(None if nested else max_groups):
                self._release([job for rest in groups[index:] for job in rest])
                return
            if not nested and group[0].lane != "fast":
                self._preempt(force=True)
            self._admit_and_run(group, nested=nested)

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
            jobs.append(
                Job(
                    envelope,
                    entry.lane,
                    entry.entry_id,
                    entry.envelope or "",
                    params,
                    deliveries=entry.deliveries,
                )
            )
        return jobs

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

    def _admit_and_run(self, group: list[Job], *, nested: bool) -> None:
        """Admit and run a group; jobs taken over from a silent worker are admitted and run
        one at a time, so a job that kills workers uses up only its own attempts."""
        fresh = [job for job in group if job.deliveries <= 1]
        batches = ([fresh] if fresh else []) + [[job] for job in group if job.deliveries > 1]
        for index, batch in enumerate(batches):
            if index and self.stop.is_set():
                self._release([job for rest in batches[index:] for job in rest])
                return
            admitted = self._admit(batch)
            for sub_group in isolate_retries(admitted):
                self._execute(sub_group, nested=nested)
                self.groups_run += 1

    def _admit(self, group: list[Job]) -> list[Job]:
        """The jobs whose records now say ``running``; the others end here."""
        admissions = self.queue.admit([job.job_id for job in group])
        admitted: list[Job] = []
        for job, admission in zip(group, admissions, strict=True):
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

    def _release(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.queue.release(job.lane, job.entry_id, job.raw, job.job_id)
        if jobs:
            log.info("event=released jobs=%d", len(jobs))

    # --- running a group -----------------------------------------------------------------------

    def _execute(self, group: list[Job], *, nested: bool) -> None:
        """Run one admitted group and write every job's outcome."""
        handle = self.runtime.models[group[0].model]
        info = self.runtime.infos[group[0].model]
        reporter = Progress(self, group, may_preempt=not nested and group[0].lane != "fast")
        ctx = GroupContext(
            handle,
            info.num_classes,
            self.runtime.max_batch_size,
            self.runtime.worker_id,
            reporter,
        )
        try:
            outcomes = run_group(ctx, group, [job.image for job in group])
        except Cancelled:
            for job in group:
                self.queue.ack(job.lane, job.entry_id)
                self._log("job_cancelled", job)
            self.queue.record_jobs([(job.method, "cancelled", self._elapsed(job)) for job in group])
            return
        except torch.OutOfMemoryError:
            if len(group) > 1:  # e.g. the prediction forward: halve the group
                half = len(group) // 2
                self._execute(group[:half], nested=nested)
                self._execute(group[half:], nested=nested)
                return
            outcomes = [Outcome(group[0], problem=internal("out of device memory"))]
        except Exception as error:  # a bug outside the explainer: fail the group, keep serving
            log.exception("event=group_crash method=%s size=%d", group[0].method, len(group))
            detail = f"{type(error).__name__}: {error}"
            outcomes = [Outcome(job, problem=internal(detail)) for job in group]
        self._write(outcomes)

    def _write(self, outcomes: list[Outcome]) -> None:
        """All outcomes of a group in one round trip, then its metrics and log lines."""
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
        written = self.queue.finish(finished)
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
        self.queue.record_jobs(counted, batch_size=len(outcomes))

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
        )

    # --- cooperative preemption ----------------------------------------------------------------

    def _preempt(self, *, force: bool = False) -> None:
        """Run waiting fast-lane jobs now (called between chunks of a slow group)."""
        if "fast" not in self.runtime.lanes or self.stop.is_set():
            return
        now = self.clock()
        if not force and now - self._last_preempt < self.preempt_interval_s:
            return
        self._last_preempt = now
        entries: list[Entry] = []
        try:
            entries = self._recover_if_due("fast") or self.queue.claim(["fast"], None)
            if entries:
                with torch.inference_mode(False), torch.enable_grad():
                    self._run_jobs(self._prepare(entries), nested=True)
        except Exception as error:  # never let a cheap job break the expensive group around it
            log.error("event=preempt_failed error=%r", error, exc_info=True)
            self.queue.forget(entries)  # taken over after the visibility timeout


class Progress:
    """The progress callback of one group: publishes, checks cancellation, preempts."""

    def __init__(self, worker: Worker, group: list[Job], *, may_preempt: bool) -> None:
        self.worker = worker
        self.job_ids = [job.job_id for job in group]
        self.may_preempt = may_preempt
        self._last_publish = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        """Raise :class:`Cancelled` when no job of the group is still running.

        The last call (``done >= total``) costs nothing: the result write that follows checks
        the records atomically and publishes the final event itself.
        """
        if total > 0 and done >= total:
            return
        queue, now = self.worker.queue, self.worker.clock()
        if now - self._last_publish >= self.worker.progress_interval_s:
            self._last_publish = now
            statuses = queue.progress(self.job_ids, done, total)
        else:
            statuses = queue.statuses(self.job_ids)
        if all(status != "running" for status in statuses.values()):
            raise Cancelled(f"jobs {', '.join(self.job_ids)} were cancelled")
        if self.may_preempt:
            self.worker._preempt()


class Heartbeat(threading.Thread):
    """Announces the worker and refreshes its in-flight entries every ``interval_s``."""

    def __init__(self, worker: Worker, interval_s: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.worker = worker
        self.interval_s = interval_s
        self.halt = threading.Event()

    def beat(self) -> None:
        """One announcement and one idle-time refresh."""
        queue, runtime = self.worker.queue, self.worker.runtime
        queue.announce(runtime.announcement(self.worker.jobs_done))
        queue.refresh_in_flight()

    def run(self) -> None:
        """Beat until halted; Redis trouble is logged and retried at the next beat."""
        while not self.halt.wait(self.interval_s):
            try:
                self.beat()
            except Exception:
                log.exception("event=heartbeat_failed")
