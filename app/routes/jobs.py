"""The job resource: status and result, heatmap PNG, server-sent events, cancellation."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from app.contract.jobs import JobEvent, JobStatus, RecordField
from app.events import CLOSED, RESYNC, EventHub
from app.identity import Identity
from app.problems import ProblemError
from app.queue import JobQueue, JobState
from app.render import Style, render
from app.routes.deps import HubDep, IdentityDep, QueueDep, get_identity
from app.routes.views import job_view, json_response
from app.routes.waiting import next_message
from app.schemas import Job, ProblemDetail

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_identity)])

_JOB_ID = re.compile(r"[0-9a-f]{32}")
SSE_KEEPALIVE_S = 15.0

JobId = Annotated[str, Path(description="Job id, as returned by POST /v1/explanations.")]


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ProblemDetail} for code in codes}


async def load(
    queue: JobQueue, job_id: str, identity: Identity, *, heatmap: bool = False
) -> JobState:
    """The stored job, or 404: unknown, expired, or another identity's."""
    state = await queue.read(job_id, heatmap=heatmap) if _JOB_ID.fullmatch(job_id) else None
    if (
        state is not None
        and not identity.open
        and state.record.get(RecordField.owner) != identity.name
    ):
        state = None  # another client's job is as unknown to this one as a job never made
    if state is None:
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "…"
        raise ProblemError(
            404, f"no job {shown!r} (unknown, or expired after the job TTL)", kind="unknown-job"
        )
    return state


@router.get("/{job_id}", response_model=Job, responses=_problems(401, 404))
async def get_job(
    job_id: JobId,
    queue: QueueDep,
    identity: IdentityDep,
    heatmap_data: Annotated[
        bool, Query(description="Include the heatmap rows (false: width and height only).")
    ] = True,
) -> Response:
    """Status, progress and timings of a job; the full result once it succeeded."""
    state = await load(queue, job_id, identity, heatmap=heatmap_data)
    return json_response(job_view(state, heatmap_data=heatmap_data))


@router.get(
    "/{job_id}/heatmap.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_problems(401, 404, 409)},
)
async def get_heatmap_png(
    job_id: JobId,
    queue: QueueDep,
    identity: IdentityDep,
    style: Annotated[
        Style,
        Query(
            description="`overlay` (colour map over the image), `heatmap` (colour map) or "
            "`gray` (values as 8-bit gray levels)."
        ),
    ] = "overlay",
) -> Response:
    """The heatmap as a PNG at the uploaded image's size (409 until the job succeeded)."""
    state = await load(queue, job_id, identity, heatmap=True)
    return await png_response(queue, state, style)


async def png_response(queue: JobQueue, state: JobState, style: Style) -> Response:
    """Render a succeeded job's heatmap at the upload's size."""
    if state.status != JobStatus.succeeded or state.heatmap is None:
        raise ProblemError(
            409,
            f"job {state.job_id} is {state.status.value}: its heatmap exists once it succeeded",
            kind="job-state-conflict",
            job_status=state.status.value,
        )
    width = int(state.number(RecordField.width) or state.heatmap.shape[1])
    height = int(state.number(RecordField.height) or state.heatmap.shape[0])
    image = await queue.read_image(state.job_id) if style == "overlay" else None
    if style == "overlay" and image is None:
        raise ProblemError(404, "the uploaded image has expired", kind="unknown-job")
    png = await run_in_threadpool(
        render, state.heatmap, style, size=(width, height), image_png=image
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **_problems(401, 404)},
)
async def job_events(
    job_id: JobId, request: Request, queue: QueueDep, hub: HubDep, identity: IdentityDep
) -> Response:
    """Server-sent events: `state` (the job now), `progress` events, then one `status` event
    with the final job (without heatmap rows), and the stream closes."""
    await load(queue, job_id, identity)
    keepalive = float(getattr(request.app.state, "sse_keepalive_s", SSE_KEEPALIVE_S))
    return StreamingResponse(
        event_stream(queue, hub, job_id, keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def sse(event: str, data: str) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {data}\n\n"


async def event_stream(
    queue: JobQueue, hub: EventHub, job_id: str, keepalive_s: float
) -> AsyncIterator[str]:
    """The SSE body: current state, progress, final status (see ``job_events``).

    Progress comes from the job's events; after a silent ``keepalive_s`` (or a resubscription)
    the record is re-read, and a change nobody announced is sent as a progress event too.
    """
    with hub.subscribe(job_id) as inbox:
        try:
            state = await queue.read(job_id, heatmap=False)
            if state is None:
                return
            yield sse("state", job_view(state, heatmap_data=False).model_dump_json())
            last = _progress_event(state)
            while not state.status.final:
                message = await next_message(inbox, keepalive_s)
                if message is CLOSED:
                    return
                if isinstance(message, JobEvent) and not message.status.final:
                    last = message
                    yield sse("progress", message.model_dump_json())
                    continue
                if message is None:
                    yield ": keep-alive\n\n"
                fresh = await queue.read(job_id, heatmap=False)
                if fresh is None:
                    return
                state, now = fresh, _progress_event(fresh)
                moved = (now.status, now.progress) != (last.status, last.progress)
                if message in (None, RESYNC) and moved and not state.status.final:
                    last = now
                    yield sse("progress", now.model_dump_json())
            yield sse("status", job_view(state, heatmap_data=False).model_dump_json())
        except RedisError:
            problem = ProblemError(503, "lost the job store (Redis)", kind="redis-unavailable")
            yield sse("error", json.dumps(problem.body()))


def _progress_event(state: JobState) -> JobEvent:
    progress = state.number(RecordField.progress) or 0.0
    return JobEvent(job_id=state.job_id, status=state.status, progress=progress)


@router.delete("/{job_id}", response_model=Job, responses=_problems(401, 404, 409))
async def cancel_job(job_id: JobId, queue: QueueDep, identity: IdentityDep) -> Response:
    """Cancel a queued or running job (409 if it already finished)."""
    await load(queue, job_id, identity)
    outcome = await queue.cancel(job_id)
    if not outcome.found:
        raise ProblemError(404, f"no job {job_id!r}", kind="unknown-job")
    if not outcome.cancelled:
        status = outcome.status.value if outcome.status else "finished"
        raise ProblemError(
            409,
            f"job {job_id} already {status}; only queued or running jobs can be cancelled",
            kind="job-state-conflict",
            job_status=status,
        )
    return json_response(job_view(await load(queue, job_id, identity)))
