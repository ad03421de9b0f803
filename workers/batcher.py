"""Dynamic batching inside the worker: the gradient-free rows of many jobs, one forward pass.

Every no-grad model evaluation of an explainer (occlusion windows, FMO levels, RISE masks,
LIME samples, Score-CAM channels, deletion / insertion steps, clean passes) arrives here as a
:class:`Request` through ``handle.evaluate``. A :class:`Batcher` holds one model's pending
requests; :meth:`Batcher.run` packs rows from them, in the order it is given (the scheduler's
priority order), into one forward pass of at most ``batch_size`` rows, and hands each request
its logits. A request larger than the room left is split across passes; requests of another
precision or input shape wait for a pass of their own. A request marked ``private`` (a job
taken over from a worker that died) never shares a pass.

Failure isolation: if a packed pass raises, each request's rows are retried alone, so an input
that breaks the model fails only its own job; an out-of-memory error halves the rows of a pass
down to one before it is given to the request that asked.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from workers.explainers.forward import forward_logits


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or a CPU allocation failure."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


@dataclass(eq=False)
class Request:
    """Rows one task asked to evaluate, and what became of them."""

    owner: object
    """The task that asked (the scheduler's)."""
    inputs: Tensor
    precision: str = "float32"
    private: bool = False
    submitted: float = 0.0
    done: int = 0
    parts: list[Tensor] = field(default_factory=list)
    result: Tensor | None = None
    error: BaseException | None = None
    passes: int = 0
    """Forward passes its rows went through."""
    shared: int = 0
    """Of those, passes that also carried other tasks' rows."""

    @property
    def rows(self) -> int:
        """Rows asked for."""
        return int(self.inputs.shape[0])

    @property
    def finished(self) -> bool:
        """Whether every row has its logits, or the request failed."""
        return self.result is not None or self.error is not None

    def key(self) -> tuple[object, ...]:
        """What rows sharing a pass must agree on."""
        x = self.inputs
        return (self.precision, x.dtype, x.device, tuple(x.shape[1:]))


@dataclass
class BatchStats:
    """Counters of a batcher, since the worker started."""

    passes: int = 0
    rows: int = 0
    shared_passes: int = 0
    seconds: float = 0.0
    """Wall time of its passes."""


class Batcher:
    """One model's pending requests and the packed forward passes that serve them.

    A pass carries at most ``batch_size`` rows, and at most what fits in ``pass_budget_s``
    at the measured time per row (but never fewer than ``batch_size // 8``): on a GPU a full
    batch takes milliseconds; on a CPU, where a pass's time grows with its rows, shorter passes
    cost little throughput and keep every job's wait for the running pass short.
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        channels_last: bool,
        pass_budget_s: float = float("inf"),
    ) -> None:
        self.model = model
        self.batch_size = max(1, batch_size)
        self.channels_last = channels_last
        self.pass_budget_s = pass_budget_s
        self.pending: list[Request] = []
        self.lock = threading.Lock()
        """Guards ``pending``: a task may add rows while a pass runs (the scheduler overlaps
        a pass with a turn of a task that touches the model only through its batcher)."""
        self.stats = BatchStats()
        self.row_s = 0.0
        """Running estimate of a pass's seconds per row (0: not measured yet)."""

    @property
    def pass_rows(self) -> int:
        """Rows the next pass may carry."""
        if self.row_s <= 0 or self.pass_budget_s == float("inf"):
            return self.batch_size
        fits = int(self.pass_budget_s / self.row_s)
        return max(1, self.batch_size // 8, min(self.batch_size, fits))

    def add(self, request: Request) -> None:
        """Queue ``request``; an empty one is answered at once."""
        if request.rows == 0:
            request.result = forward_logits(
                self.model, request.inputs, request.precision, self.channels_last
            )
            return
        self.pending.append(request)

    def mean_pass_s(self) -> float:
        """Mean wall time of a pass so far (5 ms before the first)."""
        return self.stats.seconds / self.stats.passes if self.stats.passes else 0.005

    def drop(self, owner: object) -> None:
        """Forget the pending requests of ``owner`` (cancelled)."""
        self.pending = [r for r in self.pending if r.owner is not owner]

    def run(self, order: list[Request]) -> list[Request]:
        """One forward pass: rows of ``order[0]`` first, then of the others that may share it,
        in order, up to the batch size. Returns the requests that finished."""
        first = order[0]
        room, take = self.pass_rows, []
        for request in order:
            if request.finished or room == 0:
                continue
            if request is not first and (
                first.private or request.private or request.key() != first.key()
            ):
                continue
            count = min(room, request.rows - request.done)
            take.append((request, request.done, request.done + count))
            room -= count
        self._forward(take)
        finished = [r for r, _, _ in take if r.finished]
        with self.lock:
            self.pending = [r for r in self.pending if not r.finished]
        return finished

    def _forward(self, take: list[tuple[Request, int, int]]) -> None:
        with torch.inference_mode():
            parts = [request.inputs[start:stop] for request, start, stop in take]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            started = time.perf_counter()
            failure: Exception | None = None
            try:
                logits = forward_logits(self.model, x, take[0][0].precision, self.channels_last)
            except Exception as error:
                # retried after the ``except`` block, without the traceback (kept as text in a
                # note): its frames would keep the failed pass's activations alive
                error.add_note("".join(traceback.format_tb(error.__traceback__)))
                failure = error.with_traceback(None)
            if failure is not None:
                del x, parts
                self._after_failure(take, failure)
                return
        seconds = time.perf_counter() - started
        self.stats.seconds += seconds
        per_row = seconds / max(1, x.shape[0])
        self.row_s = per_row if self.row_s <= 0 else 0.8 * self.row_s + 0.2 * per_row
        self.stats.passes += 1
        self.stats.rows += x.shape[0]
        owners = {id(request.owner) for request, _, _ in take}
        self.stats.shared_passes += len(owners) > 1
        offset = 0
        for request, start, stop in take:
            request.parts.append(logits[offset : offset + stop - start])
            offset += stop - start
            request.done = stop
            request.passes += 1
            request.shared += len(owners) > 1
            if request.done == request.rows:
                parts_done = request.parts
                request.result = parts_done[0] if len(parts_done) == 1 else torch.cat(parts_done)
                request.parts = []

    def _after_failure(self, take: list[tuple[Request, int, int]], error: Exception) -> None:
        """Retry each request's rows alone; halve on out-of-memory; else fail the request."""
        if len(take) > 1:
            for part in take:
                self._forward([part])
            return
        request, start, stop = take[0]
        if is_out_of_memory(error) and stop - start > 1:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            middle = start + (stop - start) // 2
            self._forward([(request, start, middle)])
            if not request.finished and request.done == middle:
                self._forward([(request, middle, stop)])
            return
        request.error = error
