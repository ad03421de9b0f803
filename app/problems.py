"""RFC 9457 problem details: one exception type, and handlers that render every error as one.

Every error the gateway answers is ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail`` and ``instance`` (the request path), plus extension members where they
help (``errors`` for field validation, ``job_id``, ``retry_after``). Problem types are relative
URIs (``/problems/<slug>``) that the gateway itself serves as documentation; errors that are
nothing more than their HTTP status (unknown route, wrong verb) use ``about:blank``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"

log = logging.getLogger("xplain.gateway")

PROBLEM_TYPES: dict[str, tuple[int, str, str]] = {
    "invalid-image": (
        400,
        "Invalid image",
        "The upload could not be decoded as an image: empty, truncated, corrupt, or not base64.",
    ),
    "unauthorized": (
        401,
        "Missing or wrong API key",
        "This deployment requires an API key in `X-API-Key` or `Authorization: Bearer`.",
    ),
    "forbidden": (
        403,
        "Not allowed for this key",
        "The API key is valid but may not do this (a model outside its `models`, or a "
        "cross-origin request from an origin that is not allowed).",
    ),
    "unknown-job": (
        404,
        "Unknown job",
        "No job with this id exists (never created, or its record expired after the TTL).",
    ),
    "job-state-conflict": (
        409,
        "Job is in the wrong state",
        "The operation needs another job status: a heatmap needs a succeeded job, a cancel "
        "needs a queued or running one.",
    ),
    "job-cancelled": (409, "Job cancelled", "The job was cancelled before it finished."),
    "payload-too-large": (
        413,
        "Upload too large",
        "The upload exceeds the byte limit, or the image declares more pixels than allowed "
        "(refused before its pixels are decoded).",
    ),
    "unsupported-media-type": (
        415,
        "Unsupported media type",
        "The request or the uploaded file has a content type the service does not accept.",
    ),
    "invalid-request": (
        422,
        "Invalid request",
        "A field is missing or invalid: unknown model, method, layer or class, a parameter "
        "out of range, an unknown parameter, or a malformed value.",
    ),
    "job-too-costly": (
        422,
        "Job too costly",
        "The job's estimated cost (`cost`: passes and seconds of worker compute, GET "
        "/v1/methods) exceeds the cap (`max_cost`); ask for fewer samples, masks, windows or "
        "iterations.",
    ),
    "idempotency-conflict": (
        422,
        "Idempotency key reused",
        "The `Idempotency-Key` was used before with a different request body; send a new "
        "key for a new request.",
    ),
    "rate-limited": (
        429,
        "Too many requests",
        "The API key's rate limit or its limit of active jobs is reached; retry after "
        "`Retry-After` s (the `RateLimit` and `RateLimit-Policy` fields say its budget).",
    ),
    "header-too-large": (
        431,
        "Request headers too large",
        "The request's headers exceed the size the gateway accepts.",
    ),
    "queue-full": (
        503,
        "Queue full",
        "The job lane holds as many jobs as the service accepts; retry after `Retry-After` s.",
    ),
    "no-worker": (
        503,
        "No worker available",
        "No live worker serves the requested model (or lane) right now; retry later.",
    ),
    "redis-unavailable": (
        503,
        "Queue store unavailable",
        "The gateway cannot reach Redis; the service resumes by itself when Redis is back.",
    ),
    "not-ready": (
        503,
        "Not ready",
        "The service cannot take jobs: Redis is unreachable or no worker is alive.",
    ),
    "internal-error": (500, "Internal error", "An unexpected error; the gateway logged it."),
}
"""slug -> (status, title, description), served at ``GET /problems/{slug}``."""


class ProblemError(Exception):
    """An error the client should see, rendered as problem+json by the installed handler."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        type_uri: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.type_uri = type_uri
        self.status = status
        self.detail = detail
        self.kind = kind
        if kind is not None and kind not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {kind!r}")
        self.title = title or (PROBLEM_TYPES[kind][1] if kind else _phrase(status))
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def type(self) -> str:
        """The problem type URI."""
        if self.type_uri:
            return self.type_uri
        return f"{PROBLEM_BASE}{self.kind}" if self.kind else "about:blank"

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem+json object."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extensions)
        return body


def problem_body(
    status: int, detail: str, *, kind: str | None, **extensions: Any
) -> dict[str, Any]:
    """A problem+json object without an exception (for middleware)."""
    return ProblemError(status, detail, kind=kind, **extensions).body()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(problem: ProblemError, instance: str | None = None) -> JSONResponse:
    """Render ``problem`` as an ``application/problem+json`` response."""
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


def validation_problem(
    errors: Sequence[Mapping[str, Any]], *, prefix: str = "", hint: str = ""
) -> ProblemError:
    """A 422 problem listing pydantic/FastAPI validation errors, one ``loc: msg`` each."""
    items = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if prefix:
            loc.insert(0, prefix)
        items.append({"loc": loc, "msg": str(error.get("msg", "")), "type": error.get("type")})
    detail = "; ".join(f"{'.'.join(item['loc']) or 'body'}: {item['msg']}" for item in items)
    if hint:
        detail = f"{detail} ({hint})"
    return ProblemError(422, detail or "invalid request", kind="invalid-request", errors=items)


def problem_from_pydantic(
    exc: ValidationError, *, prefix: str = "", hint: str = ""
) -> ProblemError:
    """A 422 problem from a pydantic ``ValidationError``."""
    return validation_problem(exc.errors(include_url=False), prefix=prefix, hint=hint)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc, request.url.path)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(exc.errors()), request.url.path)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path!r}; see /docs for the API"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allow = allowed_methods(request) or headers.get("Allow", "")
        headers["Allow"] = allow
        detail = f"{request.method} is not allowed on {request.url.path!r} (allowed: {allow})"
    problem = ProblemError(exc.status_code, detail, headers=headers)
    return problem_response(problem, request.url.path)


def allowed_methods(request: Request) -> str:
    """Every method some route accepts on this path (Starlette names only the first route's)."""
    methods = set()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods))


async def _on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unreachable during %s %s: %s", request.method, request.url.path, exc)
    problem = ProblemError(
        503,
        "the job store (Redis) is unreachable; retry shortly",
        kind="redis-unavailable",
        headers={"Retry-After": "2"},
    )
    return problem_response(problem, request.url.path)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    problem = ProblemError(
        500, "an unexpected error occurred; it was logged", kind="internal-error"
    )
    return problem_response(problem, request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem+json response."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RedisConnectionError, _on_redis_down)
    app.add_exception_handler(RedisTimeoutError, _on_redis_down)
    app.add_exception_handler(Exception, _on_unexpected)
