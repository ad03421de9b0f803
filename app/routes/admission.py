"""What a client may ask for: its cost cap, its webhook, its idempotency key, and the key under
which identical work is reused."""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlsplit

from app.contract.jobs import SCHEMA_VERSION
from app.identity import Identity
from app.problems import ProblemError
from app.routes.resolve import ResolvedJob, check_cost
from app.settings import Settings

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_job_cost(job: ResolvedJob, settings: Settings, identity: Identity) -> None:
    """422 when the job costs more than the deployment's cap or the key's own."""
    cap, source = settings.max_job_cost, "XPLAIN_MAX_JOB_COST"
    if identity.max_job_cost is not None and identity.max_job_cost < cap:
        cap, source = identity.max_job_cost, f"the max_job_cost of API key {identity.name!r}"
    check_cost(job.cost, cap, source=source)


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """``host`` and ``host:port`` entries of ``XPLAIN_WEBHOOK_HOSTS``, lower-case."""
    return frozenset(h.strip().lower() for h in settings.webhook_hosts.split(",") if h.strip())


def host_allowed(url: str, hosts: frozenset[str]) -> bool:
    """Whether ``url``'s host (or host:port) is on the allow-list."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host in hosts or f"{host}:{port}" in hosts


def check_callback(url: str | None, settings: Settings, identity: Identity) -> str | None:
    """The job's ``callback_url`` if the deployment may call it, else 422."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProblemError(422, "callback_url must be an http(s) URL", kind="invalid-request")
    if parts.username or parts.password:
        raise ProblemError(422, "callback_url must not carry credentials", kind="invalid-request")
    if not host_allowed(url, allowed_hosts(settings)):
        raise ProblemError(
            422,
            f"callback_url names host {parts.hostname!r}, which this deployment does not call "
            "back (XPLAIN_WEBHOOK_HOSTS)",
            kind="invalid-request",
        )
    if not identity.webhook_secret:
        raise ProblemError(
            422,
            "webhooks need a signing secret: the deployment has none (XPLAIN_WEBHOOK_SECRET, or "
            "the API key's webhook_secret)",
            kind="invalid-request",
        )
    return url


def idempotency(key: str | None, request_digest: str) -> tuple[str, str] | None:
    """(hashed key, request digest) for an ``Idempotency-Key`` header, or None; 422 if bad."""
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ProblemError(
            422,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            kind="invalid-request",
        )
    return hashlib.sha256(key.encode()).hexdigest(), request_digest


def work_digest(job: ResolvedJob, image_png: bytes) -> str:
    """What identical work shares: the stored image bytes, model, method, effective
    parameters, target and metrics (and the job schema version)."""
    work = {
        "v": SCHEMA_VERSION,
        "model": job.model.name,
        "method": job.spec.name,
        "params": job.params,
        "target": job.target,
        "evaluate": sorted(job.evaluate),
    }
    text = json.dumps(work, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(hashlib.sha256(image_png).digest() + text).hexdigest()
