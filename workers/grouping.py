"""Jobs as the worker sees them, and how claimed jobs are grouped into batched calls.

Two jobs are *compatible* when they ask the same model for the same method with the same
effective parameters (JSON with sorted keys); their targets may differ, since every explainer
takes one target per row. A group runs as one explainer call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.contract.jobs import JobEnvelope
from app.contract.keys import LANES
from app.contract.methods import parse_params

GroupKey = tuple[str, str, str]
"""(model, method, params JSON with sorted keys)."""


def effective_params(
    method: str, raw: dict[str, Any] | None, default_max_batch_size: int
) -> dict[str, Any]:
    """The validated parameters of ``method``, ``max_batch_size`` the worker's when None and
    at most the worker's (a chunk never exceeds what the worker was sized for).

    Raises ``KeyError`` for an unknown method and ``pydantic.ValidationError`` for bad values.
    """
    values = parse_params(method, raw).model_dump(mode="json")
    if "max_batch_size" in values:
        asked = values["max_batch_size"]
        values["max_batch_size"] = min(asked or default_max_batch_size, default_max_batch_size)
    return values


def params_key(params: dict[str, Any]) -> str:
    """The canonical JSON of ``params`` used for grouping."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass
class Job:
    """A claimed stream entry whose envelope parsed and whose parameters are valid."""

    envelope: JobEnvelope
    lane: str
    entry_id: str
    raw: str
    """The envelope JSON as it was in the stream (re-queued verbatim on release)."""
    params: dict[str, Any]
    """Effective parameters (validated, ``max_batch_size`` filled)."""
    deliveries: int = 1
    """1 for a new stream entry; more for one taken over from a silent worker."""
    attempt: int = 0
    """Set when the job is admitted (the record's ``attempts`` after the increment)."""
    started: float = field(default=0.0)
    """``time.monotonic()`` at admission."""
    image: bytes | None = field(default=None, repr=False)
    """The upload, fetched at admission (None: expired)."""
    cost_s: float = 0.0
    """Estimated seconds on this worker (the cost model)."""

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.envelope.job_id

    @property
    def model(self) -> str:
        """The model's client-facing name."""
        return self.envelope.model

    @property
    def method(self) -> str:
        """The method's client-facing name."""
        return self.envelope.method

    @property
    def key(self) -> GroupKey:
        """What compatible jobs share."""
        return (self.model, self.method, params_key(self.params))


def lane_rank(lane: str) -> int:
    """Order of lanes: the cheap lane first."""
    return LANES.index(lane) if lane in LANES else len(LANES)


def group_jobs(jobs: Iterable[Job]) -> list[list[Job]]:
    """Compatible jobs together, fast lane first, otherwise in claim order (the scheduler
    decides the order in which they run)."""
    groups: dict[GroupKey, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.key, []).append(job)
    return sorted(groups.values(), key=lambda group: lane_rank(group[0].lane))
