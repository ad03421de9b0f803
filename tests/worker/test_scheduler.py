"""The scheduler and the batcher without Redis: order, ageing, packing, interruption, isolation."""

from __future__ import annotations

import threading
import time
import weakref

import pytest
import torch
from torch import Tensor, nn

from workers.batcher import Batcher, Request
from workers.scheduler import Scheduler, Task


class Counting(nn.Module):
    """Logits = per-row mean times a weight; counts its calls and the rows of each."""

    def __init__(self, fail_on: float | None = None, oom_above: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -1.0]))
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.oom_above = oom_above

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(x.shape[0])
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("simulated")
        means = x.flatten(1).mean(dim=1)
        if self.fail_on is not None and bool((means == self.fail_on).any()):
            raise ValueError("this input breaks the model")
        return means[:, None] * self.weight


def run_all(scheduler: Scheduler) -> list[Task]:
    """Step until every task finished; the order in which they finished."""
    finished: list[Task] = []
    for _ in range(100_000):
        if not scheduler.busy:
            return finished
        finished += scheduler.step()
    raise AssertionError("the scheduler did not finish")


def chunked(scheduler: Scheduler, model: nn.Module, chunks: int, value: float, log: list[str]):  # type: ignore[no-untyped-def]
    """A task body: ``chunks`` evaluations of 4 rows of ``value``, a pause after each."""

    def body() -> float:
        total = 0.0
        for index in range(chunks):
            x = torch.full((4, 1, 2, 2), value)
            total += float(scheduler.evaluate(model, x).sum())
            log.append(f"{value}:{index}")
            scheduler.pause((index + 1) / chunks)
        return total

    return body


def test_the_least_remaining_work_goes_first_and_every_task_finishes() -> None:
    model, log = Counting(), []
    scheduler = Scheduler(batch_size=4, ageing=0.0)
    long = Task("long", chunked(scheduler, model, 20, 1.0, log), cost_s=20.0)
    short = Task("short", chunked(scheduler, model, 2, 2.0, log), cost_s=2.0)
    scheduler.submit(long)
    scheduler.step()  # the long task starts first and asks for its first rows
    scheduler.submit(short)
    finished = run_all(scheduler)
    assert [t.name for t in finished] == ["short", "long"]
    assert log.index("2.0:1") < log.index("1.0:2")  # the short one did not wait for the long
    assert long.error is None and short.error is None
    assert long.result == pytest.approx(20 * 4 * (1.0 - 1.0))


@pytest.mark.parametrize("ageing", [0.0, 10.0])
def test_ageing_lets_a_long_task_progress_among_a_stream_of_short_ones(ageing: float) -> None:
    model, log = Counting(), []
    now = [0.0]
    scheduler = Scheduler(batch_size=4, ageing=ageing, clock=lambda: now[0])
    scheduler.submit(Task("long", chunked(scheduler, model, 5, 1.0, log), cost_s=5.0))
    shorts = 0
    # Closed loop: three short tasks are always there (a new one replaces each that ends),
    # so short work never stops; time advances 0.1 s a step.
    for _ in range(300):
        now[0] += 0.1
        while sum(t.name != "long" for t in scheduler.tasks) < 3:
            shorts += 1
            scheduler.submit(Task(f"s{shorts}", chunked(scheduler, model, 1, 2.0, log), cost_s=0.2))
        scheduler.step()
    long_done = "1.0:4" in log
    # Without ageing the least-work-first order starves the long task; with it, the long task
    # (≤ 5 s left) gets a turn at least every ~0.5 s and finishes.
    assert long_done == (ageing > 0)
    assert shorts > 50  # the short tasks kept their pace


def test_rows_of_different_tasks_share_a_forward_pass_and_get_their_own_logits() -> None:
    model, log = Counting(), []
    # A still clock: every turn counts as light, so whether b joins a's pass does not depend on
    # how fast the threads hand over on a loaded machine (a turn over 2 ms is not light).
    scheduler = Scheduler(batch_size=8, ageing=0.0, clock=lambda: 0.0)
    a = Task("a", chunked(scheduler, model, 3, 1.0, log), cost_s=1.0)
    b = Task("b", chunked(scheduler, model, 3, 3.0, log), cost_s=1.0)
    scheduler.submit(a)
    scheduler.submit(b)
    run_all(scheduler)
    assert model.calls.count(8) >= 2  # 4 rows of each in one pass
    assert a.result == pytest.approx(3 * 4 * 0.0) and b.result == pytest.approx(0.0)
    assert a.shared_passes >= 2 and b.shared_passes >= 2
    stats = scheduler.stats()
    assert stats["rows"] == 24 and stats["passes"] < 6 and stats["shared_passes"] >= 2


def test_a_private_task_never_shares_a_pass() -> None:
    model, log = Counting(), []
    scheduler = Scheduler(batch_size=8, ageing=0.0)
    a = Task("a", chunked(scheduler, model, 2, 1.0, log), cost_s=1.0, private=True)
    b = Task("b", chunked(scheduler, model, 2, 3.0, log), cost_s=1.0)
    scheduler.submit(a)
    scheduler.submit(b)
    run_all(scheduler)
    assert model.calls == [4, 4, 4, 4] and a.shared_passes == 0


def test_an_interrupted_task_raises_at_its_next_yield_and_its_rows_are_dropped() -> None:
    model, log = Counting(), []
    scheduler = Scheduler(batch_size=4, ageing=0.0)
    victim = Task("victim", chunked(scheduler, model, 1000, 1.0, log), cost_s=100.0)
    scheduler.submit(victim)
    for _ in range(5):
        scheduler.step()
    while victim.state != "waiting":
        scheduler.step()  # until its rows are pending
    scheduler.interrupt(victim, RuntimeError("cancelled"))
    calls = len(model.calls)
    run_all(scheduler)
    assert isinstance(victim.error, RuntimeError)
    assert len(model.calls) == calls  # not one more pass for it
    assert all(not b.pending for b in scheduler.batchers.values())


def test_an_input_that_breaks_the_model_fails_only_its_own_request() -> None:
    model = Counting(fail_on=5.0)
    batcher = Batcher(model, batch_size=16, channels_last=False)
    good = Request("good", torch.full((3, 1, 2, 2), 1.0))
    bad = Request("bad", torch.full((2, 1, 2, 2), 5.0))
    batcher.add(good)
    batcher.add(bad)
    finished = batcher.run([good, bad])
    assert set(map(id, finished)) == {id(good), id(bad)}
    assert good.result is not None and torch.allclose(good.result[:, 0], torch.ones(3))
    assert isinstance(bad.error, ValueError) and bad.result is None


def test_out_of_memory_halves_a_pass_down_to_one_row() -> None:
    model = Counting(oom_above=2)
    batcher = Batcher(model, batch_size=8, channels_last=False)
    request = Request("r", torch.arange(8.0).view(8, 1, 1, 1))
    batcher.add(request)
    batcher.run([request])
    assert request.result is not None and torch.allclose(request.result[:, 0], torch.arange(8.0))
    assert max(n for n in model.calls if n <= 2) == 2
    lone = Batcher(Counting(oom_above=0), batch_size=8, channels_last=False)
    doomed = Request("d", torch.ones(2, 1, 1, 1))
    lone.add(doomed)
    lone.run([doomed])
    assert isinstance(doomed.error, torch.OutOfMemoryError)


class Hoarding(nn.Module):
    """Allocates a large activation, then runs out of memory above ``limit`` rows; records
    whether the failed attempt's activation was still alive when the retry began."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.last: weakref.ref[Tensor] | None = None
        self.alive_at_retry: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        if self.last is not None:
            self.alive_at_retry.append(self.last() is not None)
        activation = torch.ones(x.shape[0], 1 << 16)
        self.last = weakref.ref(activation)
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("simulated")
        return activation[:, :2] * x.flatten(1).mean(dim=1, keepdim=True)


def test_a_failed_pass_frees_its_activations_before_the_retry() -> None:
    # On a GPU the retry needs exactly the memory the failed attempt held; an exception's
    # traceback would keep its frames (and their tensors) alive through the retry.
    model = Hoarding(limit=2)
    batcher = Batcher(model, batch_size=8, channels_last=False)
    request = Request("r", torch.arange(8.0).view(8, 1, 1, 1))
    batcher.add(request)
    batcher.run([request])
    assert request.result is not None
    assert model.alive_at_retry and not any(model.alive_at_retry)


def test_only_one_task_thread_runs_at_a_time() -> None:
    inside, overlaps = [0], []
    lock = threading.Lock()
    scheduler = Scheduler(batch_size=4)

    def body() -> None:
        for _ in range(50):
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
            time.sleep(0.0005)  # another running thread would enter meanwhile
            with lock:
                inside[0] -= 1
            scheduler.pause()

    for n in range(4):
        scheduler.submit(Task(f"t{n}", body, cost_s=1.0))
    run_all(scheduler)
    assert max(overlaps) == 1
