"""The optimisation loop shared by the mask-optimisation methods.

One parameter tensor ``(N, ...)`` holds one mask per row (a row is an image, or an image and
an area). Each iteration runs the loss of every active row in one batch, back-propagates
their *sum* with ``torch.autograd.grad`` w.r.t. the masks alone (rows do not interact in an
eval-mode model, so each row gets its own gradient, and no model parameter gets a ``.grad``),
and applies an element-wise optimiser (:mod:`.optimisers`). Summing, not averaging, keeps every
row's update exactly what it would be alone.

The budget is explicit (``iterations``). Early stopping is optional and per row: a row whose
loss has not improved on its best by a relative ``tolerance`` for ``patience`` iterations is
frozen (its mask and optimiser state no longer change) and leaves the batch, so the rest go on
faster; the loop ends when every row has stopped or the budget is spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.explainers.base import ProgressFn
from workers.explainers.optimisation.optimisers import Optimiser

LossFn = Callable[[Tensor, Tensor, int], Tensor]
"""``(masks of the active rows, their row indices (n,), iteration) -> per-row losses (n,)``."""

PROGRESS_EVERY = 10
"""Iterations between two progress reports (cancellation is honoured at each report)."""

PROGRESS_SECONDS = 0.05
"""...or sooner, when an iteration ends this long after the last report (slow models): a
report is where the worker's scheduler gives other jobs their turn, so it bounds how long a
cheap job waits for an optimisation's chunk."""


@dataclass(frozen=True)
class Budget:
    """How long to optimise."""

    iterations: int
    early_stop: bool = False
    patience: int = 50
    tolerance: float = 1e-4


@dataclass
class Outcome:
    """Final parameters, iterations run and last loss, per row."""

    params: Tensor
    steps: Tensor
    losses: Tensor


def mask_dtype(inputs: Tensor) -> torch.dtype:
    """The dtype of masks and their parameters: float32, or float64 for float64 inputs."""
    return torch.promote_types(inputs.dtype, torch.float32)


@contextmanager
def gradients_on() -> Iterator[None]:
    """Autograd on, also when called from inside an ``inference_mode`` block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def ordinary_tensors() -> Iterator[None]:
    """No graph, and tensors made here are ordinary ones that autograd may save later.

    An explainer sets up its constants (blurred images, kernels) in this block: made inside
    the worker's ``inference_mode`` they would be inference tensors, which a backward pass
    cannot save.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


class _EarlyStop:
    """Per-row patience counters on the best loss seen."""

    def __init__(self, n: int, budget: Budget, device: torch.device) -> None:
        self.best = torch.full((n,), float("inf"), device=device)
        self.since = torch.zeros(n, dtype=torch.long, device=device)
        self.patience = budget.patience
        self.tolerance = budget.tolerance

    def update(self, rows: Tensor, losses: Tensor) -> Tensor:
        """Record ``losses`` of ``rows``; return the rows that go on."""
        best = self.best[rows]
        improved = torch.isinf(best) | (losses < best - self.tolerance * best.abs())
        self.best[rows] = torch.where(improved, losses, best)
        since = torch.where(improved, torch.zeros_like(rows), self.since[rows] + 1)
        self.since[rows] = since
        return rows[since < self.patience]


def minimise(
    loss_fn: LossFn,
    init: Tensor,
    optimiser: Optimiser,
    budget: Budget,
    *,
    project: Callable[[Tensor], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Outcome:
    """Minimise ``Σ_rows loss_fn(...)`` over ``init``'s rows; ``project`` runs after each step.

    ``on_step(t)`` is called after iteration ``t`` (1-based) every :data:`PROGRESS_EVERY`
    iterations, after an iteration that ends :data:`PROGRESS_SECONDS` after the last call, and
    after the last iteration; it may raise (cancellation): nothing is left attached.
    """
    params = init.detach().clone(memory_format=torch.contiguous_format)
    state = optimiser.init_state(params)
    n = params.shape[0]
    active = torch.arange(n, device=params.device)
    steps = torch.zeros(n, dtype=torch.long, device=params.device)
    losses = torch.full((n,), float("nan"), device=params.device)
    stopper = _EarlyStop(n, budget, params.device) if budget.early_stop else None
    reported = time.monotonic()
    for t in range(budget.iterations):
        whole = active.numel() == n
        with gradients_on():
            rows_params = (params if whole else params[active]).detach().requires_grad_(True)
            row_losses = loss_fn(rows_params, active, t)
            (grad,) = torch.autograd.grad(row_losses.sum(), rows_params)
        with torch.no_grad():
            _step(optimiser, params, state, grad, active if not whole else None, t)
            if project is not None:
                project(params)
            row_losses = row_losses.detach().float()
            steps[active] += 1
            losses[active] = row_losses
            if stopper is not None:
                active = stopper.update(active, row_losses)
        done = t + 1 == budget.iterations or active.numel() == 0
        due = (t + 1) % PROGRESS_EVERY == 0 or time.monotonic() - reported >= PROGRESS_SECONDS
        if on_step is not None and (done or due):
            on_step(t + 1)
            reported = time.monotonic()
        if active.numel() == 0:
            break
    return Outcome(params=params, steps=steps, losses=losses)


def _step(
    optimiser: Optimiser,
    params: Tensor,
    state: dict[str, Tensor],
    grad: Tensor,
    rows: Tensor | None,
    t: int,
) -> None:
    """One optimiser step on all rows (``rows=None``) or on the given rows only."""
    if rows is None:
        optimiser.step(params, grad, state, t)
        return
    sub_params = params[rows]
    sub_state = {key: value[rows] for key, value in state.items()}
    optimiser.step(sub_params, grad, sub_state, t)
    params[rows] = sub_params
    for key, value in sub_state.items():
        state[key][rows] = value


def progress_reporter(
    progress: ProgressFn, chunk_index: int, iterations: int, n_chunks: int
) -> Callable[[int], None]:
    """An ``on_step`` that reports ``chunk_index·iterations + t`` of ``n_chunks·iterations``."""
    total = n_chunks * iterations

    def report(t: int) -> None:
        progress(chunk_index * iterations + t, total)

    return report
