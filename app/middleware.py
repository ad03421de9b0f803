"""ASGI middleware of the gateway: request ids, header limits, access log lines, CORS.

* ``X-Request-ID``: taken from the request when it is a sane token (1-128 letters, digits and
  ``-_.:``), else made (32 hex digits); echoed on every answer, stored on the job, and in the
  gateway's and the worker's log lines. A context variable carries it to the logging filter.
* Requests whose headers exceed ``max_header_bytes`` in all get 431 (problem+json).
* One access log line per request: method, path, status, milliseconds, the caller's identity
  (the key's name, never the key) and the request id.
* CORS: Starlette's middleware for an allow-list of origins, except that a refused preflight is
  a problem+json 403 rather than a plain-text 400.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import request_id_var
from app.problems import PROBLEM_JSON, problem_body

access_log = logging.getLogger("xplain.gateway.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

EXPOSED_HEADERS = (
    "Location",
    "Content-Location",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-Request-ID",
)
ALLOWED_HEADERS = (
    "Accept",
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Prefer",
    "X-API-Key",
    "X-Request-ID",
)


class RequestContext:
    """Request id, header size limit and the access log line (an outermost ASGI layer)."""

    def __init__(self, app: ASGIApp, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started, status = time.perf_counter(), [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                raw = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                raw.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": raw}
            await send(message)

        try:
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if size > self.max_header_bytes:
                await _problem(431, f"the request's headers ({size:,} bytes) exceed the "
                               f"{self.max_header_bytes:,} accepted", send_with_id)  # fmt: skip
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "event=request method=%s path=%s status=%d ms=%.1f identity=%s",
                scope.get("method"),
                scope.get("path"),
                status[0],
                (time.perf_counter() - started) * 1000,
                scope["state"].get("identity", "-"),
            )
            request_id_var.reset(token)


async def _problem(status: int, detail: str, send: Send) -> None:
    body = json.dumps(problem_body(status, detail, kind=None)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode())],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling; a refused preflight answers a problem+json 403."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=list(ALLOWED_HEADERS),
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        detail = response.body.decode(errors="replace")
        body: dict[str, Any] = problem_body(403, f"CORS preflight refused: {detail}", kind=None)
        return Response(json.dumps(body), status_code=403, media_type=PROBLEM_JSON)
