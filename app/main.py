"""The gateway application: ``create_app(settings)``, and ``app`` for ``uvicorn app.main:app``.

The gateway validates requests, queues jobs in Redis and answers with results; it never imports
torch or the worker package. Redis clients are made in the lifespan; the app starts even while
Redis is down (requests then get 503 problems, and it recovers by itself when Redis returns).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.contract.connection import async_client
from app.contract.keys import Keys
from app.events import EventHub
from app.identity import KeyRing
from app.limits import RateLimiter
from app.logs import configure_logging
from app.metrics import HttpMetrics, MetricsMiddleware
from app.middleware import ProblemCORSMiddleware, RequestContext
from app.problems import PROBLEM_JSON, install_problem_handlers
from app.queue import JobQueue
from app.routes import catalog, explanations, health, jobs
from app.routes.admission import allowed_hosts
from app.settings import Settings, get_settings, redis_target
from app.webhooks import WebhookSender

STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
"""Swagger UI and ReDoc, shipped by the ``fastapi-offline`` package: /docs works offline."""

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
    configure_logging(json_lines=settings.log_json)
    keyring = KeyRing(
        path=Path(settings.keys_file) if settings.keys_file else None,
        single_key=settings.api_key,
        webhook_secret=settings.webhook_secret,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = Keys(settings.key_prefix)
        target = redis_target(settings)
        redis = async_client(target, socket_connect_timeout=2.0, socket_timeout=10.0,
                             health_check_interval=30)  # fmt: skip
        app.state.queue = queue = JobQueue(
            redis,
            keys,
            job_ttl_s=settings.job_ttl_s,
            max_queue_depth=settings.max_queue_depth,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )
        app.state.limiter = RateLimiter(redis, keys)
        app.state.decoding = asyncio.Semaphore(max(1, settings.max_decoding))
        app.state.hub = hub = EventHub(target, keys)
        # A gateway with no webhook hosts refuses every callback_url, so it has nothing to
        # deliver; it stays out of the senders' group, where it would take (and drop) the
        # deliveries of gateways that do have hosts.
        hosts = allowed_hosts(settings)
        webhooks = WebhookSender(redis, keys, queue, keyring, hosts) if hosts else None
        await hub.start()
        if webhooks is not None:
            await webhooks.start()
        try:
            yield
        finally:
            if webhooks is not None:
                await webhooks.stop()
            await hub.stop()
            await redis.aclose()

    app = FastAPI(
        title="xplain",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.draining = False
    app.state.http_metrics = HttpMetrics()
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.http_metrics)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(ProblemCORSMiddleware, origins=origins)
    app.add_middleware(RequestContext, max_header_bytes=settings.max_header_bytes)
    for module in (explanations, jobs, catalog, health):
        app.include_router(module.router)
    _mount_docs(app)
    _mount_web(app)
    app.openapi = lambda: _openapi(app, open_service=keyring.open)  # type: ignore[method-assign]
    return app


def begin_drain(app: FastAPI) -> None:
    """The gateway is stopping: readiness fails, waiting requests answer at once, event
    streams end (called from the SIGTERM handler of ``python -m app``)."""
    app.state.draining = True
    hub: EventHub | None = getattr(app.state, "hub", None)
    if hub is not None:
        hub.drain()


def _mount_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from assets served by the gateway itself."""
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="xplain — API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="xplain — API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )


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


SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer"},
}


def _openapi(app: FastAPI, *, open_service: bool = False) -> dict[str, Any]:
    """FastAPI's schema, with error responses declared as ``application/problem+json`` and the
    API key's security schemes on every ``/v1`` operation (optional on an open deployment)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    security = [{"apiKey": []}, {"bearer": []}] + ([{}] if open_service else [])
    for route, path in schema.get("paths", {}).items():
        for operation in path.values():
            if route.startswith("/v1/"):
                operation["security"] = security
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
