"""``POST /v1/explanations``: validate, enqueue, and wait for the result up to ``wait`` s."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.contract.jobs import JobEnvelope, JobStatus
from app.events import EventHub
from app.identity import Identity
from app.images import decode_upload
from app.limits import RateLimiter
from app.problems import ProblemError
from app.queue import JobQueue, JobState, NewJob, Replay
from app.render import Style
from app.routes.admission import check_callback, check_job_cost, idempotency, work_digest
from app.routes.deps import HubDep, IdentityDep, QueueDep, SettingsDep, get_identity
from app.routes.intake import read_submission
from app.routes.jobs import png_response
from app.routes.negotiation import prefers_png, requested_wait
from app.routes.resolve import ResolvedJob, resolve, retry_after_for_backlog
from app.routes.views import failure_problem, job_url, job_view, json_response
from app.routes.waiting import wait_final
from app.schemas import ExplanationForm, ExplanationRequest, Job, ProblemDetail

router = APIRouter(prefix="/v1", tags=["explanations"], dependencies=[Depends(get_identity)])

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
            401: "Missing, wrong or revoked API key.",
            403: "The API key may not use this model.",
            409: "The job was cancelled while the request waited.",
            413: "Upload or image too large.",
            415: "Not an image, or an unsupported body type.",
            422: "Unknown model/method/layer/class, a bad parameter, a job over the cost cap, "
            "a callback host not allowed, an Idempotency-Key reused with another request, or "
            "a failed job's 422.",
            429: "The API key's rate limit or active-job limit (Retry-After, RateLimit).",
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
    identity: IdentityDep,
    style: Annotated[Style, Query(description="PNG style with `Accept: image/png`.")] = "overlay",
    heatmap_data: Annotated[
        bool, Query(description="Include the heatmap rows in the JSON result.")
    ] = True,
    prefer: Annotated[
        str | None, Header(description="`respond-async` or `wait=N` (RFC 7240).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="A key of the client's choosing: the same key with the same request "
            "returns the same job for the job TTL (a different request: 422).",
        ),
    ] = None,
) -> Response:
    """Upload an image and get the model's prediction and a heatmap of what drove it.

    Send a multipart form (`file` + fields) or JSON (`image` as base64 + fields). The answer is
    200 with the result if the job finishes within `wait` seconds, else 202 with
    `Location: /v1/jobs/{id}`.
    """
    submission = await read_submission(request, settings.max_upload_bytes)
    wait = requested_wait(
        submission.fields.wait,
        prefer,
        default_s=settings.default_wait_s,
        max_s=settings.max_wait_s,
    )
    answer = Answer(queue, hub, request, style, heatmap_data, wait)
    idem = idempotency(idempotency_key, submission.digest())
    if idem is not None:
        replayed = await queue.idempotent(identity.name, idem[0])
        if replayed is not None:
            return await answer.replay(replayed, idem[1])
    if identity.rate_per_minute:
        await _take_rate(request, identity, answer.headers)
    retry_s = max(1, math.ceil(settings.heartbeat_ttl_s / 2))
    job = await resolve(submission.fields, queue, retry_after_s=retry_s, identity=identity)
    check_job_cost(job, settings, identity)
    callback = check_callback(submission.fields.callback_url, settings, identity)
    limit = min(settings.max_image_pixels, job.model.max_image_pixels or settings.max_image_pixels)
    async with request.app.state.decoding:
        image = await run_in_threadpool(
            decode_upload, submission.image, submission.content_type, max_pixels=limit
        )
    envelope = _envelope(job, request.state.request_id)
    cache = work_digest(job, image.png) if submission.fields.cache else None
    new = NewJob(
        envelope, image.png, image.width, image.height, owner=identity.name,
        max_active=identity.max_active_jobs or 0, idempotency=idem, cache_digest=cache,
        callback_url=callback,
    )  # fmt: skip
    if cache is not None and await queue.reuse(new, cache):
        return await answer.job(envelope.job_id, None)
    with hub.subscribe(envelope.job_id) as inbox:
        outcome = await queue.enqueue(new)
        if outcome.reason == "replayed" and idem is not None:
            return await answer.replay(Replay(outcome.job_id, outcome.digest), idem[1])
        if outcome.reason == "active":
            raise await _too_many_active(queue, identity, outcome.depth, answer.headers)
        if not outcome.accepted:
            raise await _queue_full(queue, job, outcome.depth)
        state = await wait_final(queue, inbox, envelope.job_id, wait) if wait > 0 else None
    return await answer.job(envelope.job_id, state)


async def _take_rate(request: Request, identity: Identity, headers: dict[str, str]) -> None:
    """One job from the key's rate budget (429 when it is spent); fills the RateLimit fields."""
    assert identity.rate_per_minute is not None
    limiter: RateLimiter = request.app.state.limiter
    decision = await limiter.check(identity.name, identity.rate_per_minute)
    headers.update(decision.headers())
    if not decision.allowed:
        raise ProblemError(
            429,
            f"API key {identity.name!r} may submit {identity.rate_per_minute} jobs a minute; "
            f"retry in {decision.retry_after_s} s",
            kind="rate-limited",
            headers=headers,
            retry_after=decision.retry_after_s,
        )


def _envelope(job: ResolvedJob, request_id: str | None) -> JobEnvelope:
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
        request_id=request_id,
    )


async def _too_many_active(
    queue: JobQueue, identity: Identity, active: int, headers: dict[str, str]
) -> ProblemError:
    costs = await queue.active_costs(identity.name)
    retry = max(1, math.ceil(min(costs))) if costs else 1
    return ProblemError(
        429,
        f"API key {identity.name!r} has {active} jobs queued or running, its limit; retry when "
        f"one has finished (about {retry} s)",
        kind="rate-limited",
        headers={**headers, "Retry-After": str(retry)},
        retry_after=retry,
        active_jobs=active,
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


@dataclass
class Answer:
    """How this request is answered once it has its job."""

    queue: JobQueue
    hub: EventHub
    request: Request
    style: Style
    heatmap_data: bool
    wait: float
    headers: dict[str, str] = field(default_factory=dict)

    async def replay(self, replayed: Replay, digest: str) -> Response:
        """The job an ``Idempotency-Key`` was first used for (422 for another request)."""
        if replayed.digest != digest:
            raise ProblemError(
                422,
                "this Idempotency-Key was used with a different request; use a new key",
                kind="idempotency-conflict",
                job_id=replayed.job_id,
            )
        state = None
        if self.wait > 0:
            with self.hub.subscribe(replayed.job_id) as inbox:
                state = await wait_final(self.queue, inbox, replayed.job_id, self.wait)
        return await self.job(replayed.job_id, state)

    async def job(self, job_id: str, state: JobState | None) -> Response:
        """The job's result (200), its failure's problem, or 202 with its URL."""
        response = await _answer(
            self.queue, job_id, state, self.request, self.style, self.heatmap_data
        )
        response.headers.update(self.headers)
        return response


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
