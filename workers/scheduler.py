"""Fair scheduling of a worker's claimed work: the chunk is the unit, every job interleaves.

A :class:`Task` is one explainer call (a group of compatible jobs, or one job). Each task runs in
a thread of its own, but one at a time: the scheduler (the worker's main thread) hands a task
the baton and waits until the task gives it back at a *yield point*:

* :meth:`Scheduler.pause` — a chunk boundary (the explainer's progress callback);
* :meth:`Scheduler.evaluate` — a gradient-free forward pass: the rows go to the model's
  :class:`~workers.batcher.Batcher` and the task waits until a packed pass has computed them;
* :meth:`Scheduler.offload` — CPU work that never touches a model (LIME's superpixels): the
  task gives the baton back, does the work beside the others, and waits for its next turn.

So explainers stay plain sequential code, torch's per-thread state (grad mode, inference mode)
stays with each task, and no two threads ever touch a model at the same time (the one overlap,
below, is with a task that touches models only through the batcher).

Policy, at every step: the most urgent of the tasks that can make progress — ready to run, or
waiting for rows — by the key ``remaining seconds − ageing × seconds since it last ran``
(shortest remaining work first, with ageing so that a long task is never starved: a task that
waited ``w`` seconds competes as if it had ``ageing·w`` seconds less left). ``remaining`` is the
task's estimated cost (the cost model) times the share of its work not yet reported done. A
ready task runs until its next yield point; a waiting task gets a forward pass of its model,
packed with its own rows first and then the other waiting tasks' rows in key order.

:meth:`Scheduler.interrupt` makes a task raise an exception at its next yield point
(cancellation, hand-back at shutdown) and drops its pending rows at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from workers.batcher import Batcher, Request
from workers.explainers.forward import forward_logits, prefers_channels_last

READY, WAITING, ASIDE, DONE = "ready", "waiting", "aside", "done"

IDLE_WAIT_S = 0.02
"""Longest a step waits for work set aside when there is nothing else to run."""

LIGHT_TURN_S = 0.002
"""A turn this short (or a quarter of a forward pass) is worth running before a pass that has
room: the task usually comes back with rows for it."""


@dataclass(eq=False)
class Task:
    """One explainer call run by the scheduler."""

    name: str
    body: Callable[[], Any]
    cost_s: float
    """Estimated seconds of the whole call (the cost model)."""
    private: bool = False
    """Never share forward passes (jobs taken over from a worker that died)."""
    pure: bool = False
    """Touches models only through :meth:`Scheduler.evaluate` (no hooks, no gradient passes):
    its turns may run while a forward pass runs."""
    state: str = READY
    fraction: float = 0.0
    """Share of its work the task reported done."""
    started: float = 0.0
    last_ran: float = 0.0
    ran_s: float = 0.0
    """Seconds the task has held the baton (forward passes of its rows not included)."""
    turns: int = 0
    result: Any = None
    error: BaseException | None = None
    interrupt: BaseException | None = None
    request: Request | None = None
    passes: int = 0
    shared_passes: int = 0
    context: dict[str, Any] = field(default_factory=dict)
    """What the caller keeps with the task (its jobs)."""
    _go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0), repr=False)

    def remaining_s(self) -> float:
        """Estimated seconds of work left."""
        return self.cost_s * (1.0 - min(1.0, max(0.0, self.fraction)))


class Scheduler:
    """Runs tasks one chunk at a time and packs their forward passes."""

    def __init__(
        self,
        batch_size: int,
        *,
        ageing: float = 0.1,
        pass_budget_s: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch_size = batch_size
        self.ageing = ageing
        self.pass_budget_s = pass_budget_s
        self.clock = clock
        self.tasks: list[Task] = []
        self.batchers: dict[int, Batcher] = {}
        self._back = threading.Semaphore(0)
        self._local = threading.local()
        self._wake = threading.Event()
        """Set when work set aside comes back (the main thread may be waiting for it)."""

    # --- the main thread ------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Start ``task``'s thread; it runs when the scheduler first picks it."""
        now = self.clock()
        task.started = task.last_ran = now
        task.state = READY
        self.tasks.append(task)
        thread = threading.Thread(target=self._run, args=(task,), name=task.name, daemon=True)
        thread.start()

    @property
    def busy(self) -> bool:
        """Whether any task is unfinished."""
        return bool(self.tasks)

    def step(self) -> list[Task]:
        """Run the most urgent task to its next yield point, or the most urgent waiting task's
        forward pass; returns the tasks that finished.

        Before a forward pass that would not be full, ready tasks whose turns are short next to
        a pass get one turn each (most urgent first): they usually come back with rows of their
        own for the same pass.
        """
        candidates = [t for t in self.tasks if t.state == READY or self._can_serve(t)]
        if not candidates and any(t.state == ASIDE for t in self.tasks):
            self._wake.wait(IDLE_WAIT_S)  # nothing to do until work set aside comes back
            self._wake.clear()
        if candidates:
            now = self.clock()
            top = min(candidates, key=lambda t: self.key(t, now))
            if top.state == WAITING:
                top = self._joiner(top, now) or top
            if top.state == READY:
                self._resume(top)
            else:
                self._serve(top, now)
        finished = [t for t in self.tasks if t.state == DONE]
        self.tasks = [t for t in self.tasks if t.state != DONE]
        return finished

    def key(self, task: Task, now: float) -> float:
        """Urgency (smaller first): remaining seconds minus the ageing credit."""
        return task.remaining_s() - self.ageing * (now - task.last_ran)

    def interrupt(self, task: Task, error: BaseException) -> None:
        """Make ``task`` raise ``error`` at its next yield point; drop its pending rows now."""
        task.interrupt = error
        if task.state == WAITING and task.request is not None:
            for batcher in self.batchers.values():
                batcher.drop(task)
            task.request = None
            task.state = READY

    def stats(self) -> dict[str, int]:
        """Forward passes, rows and shared passes of every batcher, summed."""
        totals = {"passes": 0, "rows": 0, "shared_passes": 0}
        for batcher in self.batchers.values():
            totals["passes"] += batcher.stats.passes
            totals["rows"] += batcher.stats.rows
            totals["shared_passes"] += batcher.stats.shared_passes
        return totals

    # --- task threads -----------------------------------------------------------------------

    def current(self) -> Task | None:
        """The task of the calling thread (None outside task threads)."""
        return getattr(self._local, "task", None)

    def pause(self, fraction: float | None = None) -> None:
        """A chunk boundary of the calling task: record its progress and yield."""
        task = self.current()
        if task is None:
            return
        if fraction is not None:
            task.fraction = fraction
        task.state = READY
        self._yield(task)

    def offload(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` in the calling task's thread without the baton (other tasks run
        meanwhile), then wait for the task's next turn; ``work`` must not touch a model."""
        task = self.current()
        if task is None:
            return work()
        task.state = ASIDE
        self._back.release()
        try:
            return work()
        finally:
            task.state = READY
            self._wake.set()
            task._go.acquire()
            if task.interrupt is not None:
                raise task.interrupt

    def evaluate(self, model: nn.Module, inputs: Tensor, precision: str = "float32") -> Tensor:
        """Logits of ``inputs`` from packed forward passes (the calling task waits for them)."""
        task = self.current()
        if task is None:  # not in a task: nothing to share with
            return forward_logits(model, inputs, precision, prefers_channels_last(model))
        request = Request(task, inputs, precision, private=task.private, submitted=self.clock())
        self._batcher(model).add(request)
        if not request.finished:
            task.request, task.state = request, WAITING
            self._yield(task)
        task.request = None
        task.passes += request.passes
        task.shared_passes += request.shared
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    # --- internals --------------------------------------------------------------------------

    def _batcher(self, model: nn.Module) -> Batcher:
        batcher = self.batchers.get(id(model))
        if batcher is None:
            batcher = Batcher(
                model, self.batch_size, prefers_channels_last(model), self.pass_budget_s
            )
            self.batchers[id(model)] = batcher
        return batcher

    def _can_serve(self, task: Task) -> bool:
        return task.state == WAITING and task.request is not None and not task.request.finished

    def _joiner(self, top: Task, now: float) -> Task | None:
        """A light ready task to run before ``top``'s pass, if that pass has room."""
        request = top.request
        assert request is not None
        batcher = self._owner_batcher(request)
        if sum(r.rows - r.done for r in batcher.pending) >= batcher.pass_rows:
            return None
        light_s = max(LIGHT_TURN_S, 0.25 * batcher.mean_pass_s())
        joiners = [
            t
            for t in self.tasks
            if t.state == READY
            and t.last_ran <= request.submitted
            and (t.turns == 0 or t.ran_s / t.turns <= light_s)
        ]
        return min(joiners, key=lambda t: self.key(t, now)) if joiners else None

    def _owner_batcher(self, request: Request) -> Batcher:
        return next(b for b in self.batchers.values() if request in b.pending)

    def _serve(self, top: Task, now: float) -> None:
        """One packed forward pass for ``top``'s model, ``top``'s rows first; meanwhile the
        most urgent ready *pure* task takes its turn (building its next rows, say) beside it."""
        assert top.request is not None
        batcher = self._owner_batcher(top.request)
        with batcher.lock:
            order = sorted(batcher.pending, key=lambda r: self.key(r.owner, now))  # type: ignore[arg-type]
        order.remove(top.request)
        partners = [t for t in self.tasks if t.state == READY and t.pure]
        partner = min(partners, key=lambda t: self.key(t, now)) if partners else None
        started = self.clock()
        if partner is not None:
            partner.last_ran = started
            partner._go.release()
        finished = batcher.run([top.request, *order])
        if partner is not None:
            self._back.acquire()
            partner.ran_s += self.clock() - started
            partner.turns += 1
        for request in finished:
            owner: Task = request.owner  # type: ignore[assignment]
            owner.state = READY

    def _resume(self, task: Task) -> None:
        started = self.clock()
        task.last_ran = started
        task._go.release()
        self._back.acquire()
        task.ran_s += self.clock() - started
        task.turns += 1

    def _yield(self, task: Task) -> None:
        self._back.release()
        task._go.acquire()
        if task.interrupt is not None:
            raise task.interrupt

    def _run(self, task: Task) -> None:
        task._go.acquire()
        self._local.task = task
        try:
            if task.interrupt is not None:
                raise task.interrupt
            task.result = task.body()
        except BaseException as error:  # handed to the main thread, which decides
            task.error = error
        finally:
            task.state = DONE
            self._local.task = None
            self._back.release()
