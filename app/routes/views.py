"""The job resource as clients see it, built from the stored record and result."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
from fastapi.responses import Response

from app.contract.jobs import JobCost, JobStatus, RecordField, WorkerResult
from app.problems import ProblemError
from app.queue import JobState
from app.schemas import (
    Heatmap,
    ImageSize,
    Job,
    JobLinks,
    ProblemDetail,
    TargetOut,
    Timings,
)

TOP_K = 5


def job_url(job_id: str) -> str:
    """Path of the job resource."""
    return f"/v1/jobs/{job_id}"


def job_view(state: JobState, *, heatmap_data: bool = True, now: float | None = None) -> Job:
    """The ``Job`` of a stored job (the result fields filled once it succeeded)."""
    now = time.time() if now is None else now
    created = state.number(RecordField.created_at)
    started = state.number(RecordField.started_at)
    first_started = state.number(RecordField.first_started_at) or started
    finished = state.number(RecordField.finished_at)
    result = state.result
    cached = state.record.get(RecordField.cached) == "1"
    url = job_url(state.job_id)
    job = Job(
        job_id=state.job_id,
        status=state.status,
        progress=_clamp01(state.number(RecordField.progress) or 0.0),
        model=state.record.get(RecordField.model, ""),
        method=state.record.get(RecordField.method, ""),
        params=state.json_field(RecordField.params, {}),
        requested_target=state.json_field(RecordField.target),
        image=ImageSize(
            width=int(state.number(RecordField.width) or 0),
            height=int(state.number(RecordField.height) or 0),
        ),
        created_at=_when(created),
        started_at=_when(started),
        finished_at=_when(finished),
        timings=_timings(
            created, first_started, finished, now, 0.0 if cached else _compute_ms(result)
        ),
        links=JobLinks(self=url, heatmap_png=f"{url}/heatmap.png", events=f"{url}/events"),
        cached=cached,
        request_id=state.record.get(RecordField.request_id),
    )
    cost = state.json_field(RecordField.cost)
    if isinstance(cost, dict):
        try:
            job.cost = JobCost.model_validate(cost)
        except ValueError:
            job.cost = None
    if state.status == JobStatus.failed:
        job.error = _error(state)
    if result is not None:
        job.params = result.params
        job.target = TargetOut.model_validate(result.target.model_dump())
        job.predictions = [TargetOut.model_validate(p.model_dump()) for p in result.predictions]
        job.predictions = job.predictions[:TOP_K]
        job.heatmap = Heatmap(width=result.heatmap_width, height=result.heatmap_height)
        if heatmap_data and state.heatmap is not None:
            job.heatmap.data = rows(state.heatmap)
        job.meta = {**result.meta, "group_size": result.group_size, "worker": result.worker}
        job.evaluation = result.evaluation
    return job


def rows(heatmap: np.ndarray) -> list[list[float]]:
    """Heatmap values as rows of floats in [0, 1], rounded to 4 decimals."""
    values = np.clip(np.nan_to_num(heatmap.astype(np.float64), nan=0.0), 0.0, 1.0)
    return np.round(values, 4).tolist()  # type: ignore[no-any-return]


def json_response(
    job: Job, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialise a ``Job`` (pydantic's serializer: fast for the heatmap rows)."""
    return Response(
        job.model_dump_json(),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def failure_problem(state: JobState) -> ProblemError:
    """A finished-but-not-succeeded job as the problem a synchronous request answers."""
    url = job_url(state.job_id)
    if state.status == JobStatus.cancelled:
        return ProblemError(
            409,
            "the job was cancelled before it finished",
            kind="job-cancelled",
            job_id=state.job_id,
            job=url,
        )
    error = _error(state)
    extensions = error.model_dump(exclude={"type", "title", "status", "detail", "instance"})
    return ProblemError(
        error.status if 400 <= error.status < 600 else 500,
        error.detail,
        title=error.title,
        type_uri=error.type,
        **{**extensions, "job_id": state.job_id, "job": url},
    )


def _error(state: JobState) -> ProblemDetail:
    raw = state.json_field(RecordField.error)
    if isinstance(raw, dict):
        try:
            return ProblemDetail.model_validate(raw)
        except ValueError:
            pass
    return ProblemDetail(
        type="/problems/internal-error",
        title="Job failed",
        status=500,
        detail=str(raw) if raw else "the job failed without a reason",
    )


def _timings(
    created: float | None,
    started: float | None,
    finished: float | None,
    now: float,
    compute_ms: float | None,
) -> Timings:
    if created is None:
        return Timings(compute_ms=compute_ms)
    queued_until = started if started is not None else (finished if finished is not None else now)
    if compute_ms is None and started is not None:
        compute_ms = _ms((finished if finished is not None else now) - started)
    return Timings(
        queued_ms=_ms(queued_until - created),
        compute_ms=compute_ms,
        total_ms=_ms((finished if finished is not None else now) - created),
    )


def _compute_ms(result: WorkerResult | None) -> float | None:
    return round(result.compute_ms, 1) if result is not None else None


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000.0, 1)


def _when(stamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(stamp, tz=UTC) if stamp is not None else None


def _clamp01(value: float) -> float:
    return min(max(value, 0.0), 1.0)
