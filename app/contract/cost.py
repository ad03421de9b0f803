"""The cost model: what a job costs, from its parameters, the image size and the model.

Each method's parameter model says how many passes one image costs (``passes``: forward and
backward passes, the prediction included, from the parameters and the model's input size;
an upper bound where the method decides on the way, as FMO does). A worker measures its models
at warm-up and announces, per model, ``forward_ms`` (one image's share of a gradient-free
forward pass at the worker's batch size) and ``gradient_ms`` (one forward + backward pass of
one image). The estimate is

    seconds = (F − B) · forward_ms + B · gradient_ms

(a backward pass comes with a forward pass recorded for it). Admission (``XPLAIN_MAX_JOB_COST``
and a key's ``max_job_cost``), ``Retry-After`` of a full lane and the worker's scheduler all
use this one number.
"""

from __future__ import annotations

from typing import NamedTuple

from app.contract.jobs import JobCost, ModelInfo
from app.contract.metrics import evaluation_passes

DESCRIPTION = (
    "A job's cost is estimated before it is queued: its method's forward (F) and backward (B) "
    "passes for one image (each method's `cost`; the prediction and the requested `evaluate` "
    "metrics included; an upper bound where the method decides on the way), times the "
    "per-image pass times the workers measured at warm-up for the model (`forward_ms`, "
    "`gradient_ms` in GET /v1/models): seconds = (F − B)·forward_ms + B·gradient_ms. A job "
    "above XPLAIN_MAX_JOB_COST seconds (or its API key's `max_job_cost`) gets 422 before it "
    "is queued; the estimate is the job's `cost`, and the workers schedule by it."
)


class Passes(NamedTuple):
    """Forward and backward passes of one image."""

    forward: int
    backward: int = 0

    def __add__(self, other: object) -> Passes:  # type: ignore[override]
        if not isinstance(other, Passes):
            return NotImplemented
        return Passes(self.forward + other.forward, self.backward + other.backward)


def seconds_of(passes: Passes, model: ModelInfo) -> float:
    """Estimated seconds of ``passes`` on a worker with ``model``'s announced timings."""
    forward_only = max(0, passes.forward - passes.backward)
    return (forward_only * model.forward_ms + passes.backward * model.gradient_ms) / 1000.0


def job_cost(passes: Passes, model: ModelInfo, evaluate: list[str] | None = None) -> JobCost:
    """The cost of a job whose method needs ``passes`` per image, plus its ``evaluate`` metrics."""
    if evaluate:
        passes = passes + Passes(evaluation_passes(model.input_size, evaluate))
    return JobCost(
        forward_passes=passes.forward,
        backward_passes=passes.backward,
        seconds=round(seconds_of(passes, model), 6),
    )
