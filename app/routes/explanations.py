"""``POST /v1/explanations``: validate, enqueue, and wait for the result up to ``wait`` s."""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.contract.jobs import JobEnvelope, JobStatus
from app.images import decode_upload
from app.problems import ProblemError
from app.queue import JobQueue, JobState, NewJob
from app.render import Style
from app.routes.deps import HubDep, QueueDep, SettingsDep, require_api_key
from app.routes.intake import read_submission
from app.routes.jobs import png_response
from app.routes.negotiation import prefers_png, requested_wait
from app.routes.resolve import ResolvedJob, check_cost, resolve, retry_after_for_backlog
from app.routes.views import failure_problem, job_url, job_view, json_response
from app.routes.waiting import wait_final
from app.schemas import ExplanationForm, ExplanationRequest, Job, ProblemDetail

router = APIRouter(prefix="/v1", tags=["explanations"], dependencies=[Depends(require_api_key)])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": ExplanationForm.model_json_schema()},
            "application/json": {"schema": ExplanationRequest.model_json_schema()},
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Job,
        "description": "Finished within `wait`: the explanation (or, with `Accept: image/png`, "
        "the heatmap PNG at the upload's size).",
        "content": {"image/png": {}},
    },
    202: {"model": Job, "description": "Queued or running; poll `Location` or its events."},
    **{
        code: {"model": ProblemDetail, "description": text}
        for code, text in {
            400: "Undecodable image.",
            401: "Missing or wrong API key.",
            409: "The job was cancelled while the request waited.",
            413: "Upload or image too large.",
            415: "Not an image, or an unsupported body type.",
            422: "Unknown model/method/layer/class, a bad parameter, or a failed job's 422.",
            503: "Queue full, no worker serves the model, or Redis unreachable (Retry-After).",
        }.items()
    },
}


@router.post(
    "/explanations",
    response_model=None,
    responses=_RESPONSES,
    openapi_extra=_BODY,
    summary="Explain a prediction",
)
async def create_explanation(
    request: Request,
    settings: SettingsDep,
    queue: QueueDep,
    hub: HubDep,
    style: Annotated[Style, Query(description="PNG style with `Accept: image/png`.")] = "overlay",
    heatmap_data: Annotated[
        bool, Query(description="Include the heatmap rows in the JSON result.")
    ] = True,
    prefer: Annotated[
        str | None, Header(description="`respond-async` or `wait=N` (RFC 7240).")
    ] = None,
) -> Response:
    """Upload an image and get the model's prediction and a heatmap of what drove it.

    Send a multipart form (`file` + fields) or JSON (`image` as base64 + fields). The answer is
    200 with the result if the job finishes within `wait` seconds, else 202 with
    `Location: /v1/jobs/{id}`.
    """
    submission = await read_submission(request, settings.max_upload_bytes)
    retry_s = max(1, math.ceil(settings.heartbeat_ttl_s / 2))
    job = await resolve(submission.fields, queue, retry_after_s=retry_s)
    check_cost(job.cost, settings.max_job_cost)
    image = await run_in_threadpool(
        decode_upload,
        submission.image,
        submission.content_type,
        max_pixels=settings.max_image_pixels,
    )
    wait = requested_wait(
        submission.fields.wait,
        prefer,
        default_s=settings.default_wait_s,
        max_s=settings.max_wait_s,
    )
    envelope = _envelope(job)
    with hub.subscribe(envelope.job_id) as inbox:
        outcome = await queue.enqueue(NewJob(envelope, image.png, image.width, image.height))
        if not outcome.accepted:
            raise await _queue_full(queue, job, outcome.depth)
        state = await wait_final(queue, inbox, envelope.job_id, wait) if wait > 0 else None
    return await _answer(queue, envelope.job_id, state, request, style, heatmap_data)


def _envelope(job: ResolvedJob) -> JobEnvelope:
    return JobEnvelope(
        job_id=uuid.uuid4().hex,
        lane=job.lane,
        model=job.model.name,
        method=job.spec.name,
        params=job.params,
        target=job.target,
        evaluate=job.evaluate,
        enqueued_at=time.time(),
        cost=job.cost,
    )


async def _queue_full(queue: JobQueue, job: ResolvedJob, depth: int) -> ProblemError:
    backlog_s, entries = await queue.backlog(job.lane)
    workers = sum(job.lane in w.lanes for w in await queue.live_workers()) or 1
    retry = retry_after_for_backlog(backlog_s, entries, queue.max_queue_depth, workers)
    return ProblemError(
        503,
        f"the {job.lane} lane is full ({depth} jobs, about {backlog_s:.0f} s of estimated "
        f"work); retry in {retry} s",
        kind="queue-full",
        headers={"Retry-After": str(retry)},
        retry_after=retry,
    )


async def _answer(
    queue: JobQueue,
    job_id: str,
    state: JobState | None,
    request: Request,
    style: Style,
    heatmap_data: bool,
) -> Response:
    url = job_url(job_id)
    if state is None:
        state = await queue.read(job_id)
    if state is None:
        raise ProblemError(404, f"job {job_id} vanished (expired?)", kind="unknown-job")
    if state.status == JobStatus.succeeded:
        if prefers_png(request.headers.get("accept")):
            response = await png_response(queue, state, style)
        else:
            response = json_response(job_view(state, heatmap_data=heatmap_data))
        response.headers["Content-Location"] = url
        return response
    if state.status.final:
        raise failure_problem(state)
    headers = {"Location": url, "Retry-After": "1"}
    return json_response(job_view(state), status_code=202, headers=headers)
