"""The gateway application: ``create_app(settings)``, and ``app`` for ``uvicorn app.main:app``.

The gateway validates requests, queues jobs in Redis and answers with results; it never imports
torch or the worker package. Redis clients are made in the lifespan; the app starts even while
Redis is down (requests then get 503 problems, and it recovers by itself when Redis returns).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.contract.keys import Keys
from app.events import EventHub
from app.metrics import HttpMetrics, MetricsMiddleware
from app.problems import PROBLEM_JSON, install_problem_handlers
from app.queue import JobQueue, make_redis
from app.routes import catalog, explanations, health, jobs
from app.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """\
Explains the decisions of image classifiers: upload an image, name a model, a method and
optionally a class, and get the model's prediction with a heatmap of the regions that drove it,
as JSON or PNG. Jobs run on worker processes behind a Redis queue; short jobs answer in the same
request, long ones answer 202 with a job URL to poll or stream (server-sent events).
Errors are RFC 9457 problem details (`application/problem+json`).
"""

log = logging.getLogger("xplain.gateway")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway for ``settings`` (default: from ``XPLAIN_*`` environment variables)."""
    settings = settings if settings is not None else get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = Keys(settings.key_prefix)
        redis = make_redis(settings.redis_url)
        app.state.queue = JobQueue(
            redis, keys, job_ttl_s=settings.job_ttl_s, max_queue_depth=settings.max_queue_depth
        )
        app.state.hub = hub = EventHub(settings.redis_url, keys)
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()
            await redis.aclose()

    app = FastAPI(title="xplain", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.http_metrics = HttpMetrics()
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.http_metrics)
    for module in (explanations, jobs, catalog, health):
        app.include_router(module.router)
    _mount_web(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _mount_web(app: FastAPI) -> None:
    """``GET /`` serves the web page; ``/static`` its assets (when the folder exists)."""
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(
            "<!doctype html><title>xplain</title><h1>xplain</h1>"
            '<p>The API is described at <a href="/docs">/docs</a>.</p>'
        )


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with error responses declared as ``application/problem+json``."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if code.isdigit() and int(code) >= 400 and "application/json" in content:
                    body = content.pop("application/json")
                    if body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                        body["schema"] = {"$ref": "#/components/schemas/ProblemDetail"}
                    content[PROBLEM_JSON] = body
    app.openapi_schema = schema
    return schema


app = create_app()
