"""Dependencies shared by the routes: settings, queue, event hub, the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.events import EventHub
from app.identity import Identity, KeyRing
from app.problems import ProblemError
from app.queue import JobQueue
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    """The settings ``create_app`` was given."""
    settings: Settings = request.app.state.settings
    return settings


def get_queue(request: Request) -> JobQueue:
    """The Redis queue facade made by the lifespan."""
    queue: JobQueue = request.app.state.queue
    return queue


def get_hub(request: Request) -> EventHub:
    """The event fan-out made by the lifespan."""
    hub: EventHub = request.app.state.hub
    return hub


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
HubDep = Annotated[EventHub, Depends(get_hub)]


def presented_key(request: Request) -> str | None:
    """The key a request sends as ``X-API-Key`` or ``Authorization: Bearer``, if any."""
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            given = credentials.strip()
    return given


def get_identity(request: Request) -> Identity:
    """Who sends the request (401 for a missing, wrong or revoked key)."""
    keyring: KeyRing = request.app.state.keyring
    given = presented_key(request)
    identity = keyring.identify(given)
    if identity is None:
        raise ProblemError(
            401,
            "send an API key as `X-API-Key: <key>` or `Authorization: Bearer <key>`"
            if given is None
            else "the API key is wrong or was revoked",
            kind="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="xplain"'},
        )
    request.state.identity = identity.name
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]
