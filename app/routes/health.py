"""Liveness, readiness, Prometheus metrics, and the problem-type documentation."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from app.metrics import CONTENT_TYPE, exposition
from app.problems import PROBLEM_BASE, PROBLEM_TYPES, ProblemError
from app.queue import Snapshot
from app.routes.deps import QueueDep
from app.schemas import Health, ProblemDetail, ProblemType, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers (no dependency is checked)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ProblemDetail}})
async def readyz(request: Request, queue: QueueDep) -> Readiness:
    """Readiness: Redis answers and at least one worker is alive (503 problem otherwise, and
    while the gateway drains on its way out)."""
    retry = {"Retry-After": "2"}
    if request.app.state.draining:
        raise ProblemError(503, "the gateway is shutting down", kind="not-ready", headers=retry)
    try:
        await queue.ping()
        served = await queue.served_models(fresh=True)
        workers = len(await queue.live_workers())
    except RedisError as exc:
        raise ProblemError(
            503, f"Redis is unreachable: {type(exc).__name__}", kind="not-ready", headers=retry
        ) from exc
    if workers == 0:
        raise ProblemError(
            503,
            "no live worker: start one with `python -m workers`",
            kind="not-ready",
            headers=retry,
        )
    return Readiness(workers=workers, models=sorted(served))


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request, queue: QueueDep) -> Response:
    """Prometheus metrics of this gateway process and of the queue and workers (via Redis)."""
    snapshot: Snapshot | None
    try:
        snapshot = await queue.snapshot()
    except RedisError:
        snapshot = None
    body = exposition(request.app.state.http_metrics, snapshot, queue.replica_shortfalls)
    return Response(body, media_type=CONTENT_TYPE)


@router.get(
    "/problems/{slug}", response_model=ProblemType, responses={404: {"model": ProblemDetail}}
)
async def problem_type(slug: str) -> ProblemType:
    """Documentation of a problem type URI used in error responses."""
    if slug not in PROBLEM_TYPES:
        raise ProblemError(404, f"no problem type {slug!r}; known: {', '.join(PROBLEM_TYPES)}")
    status, title, description = PROBLEM_TYPES[slug]
    return ProblemType(
        type=f"{PROBLEM_BASE}{slug}", status=status, title=title, description=description
    )
