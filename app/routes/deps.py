"""Dependencies shared by the routes: settings, queue, event hub, API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from app.events import EventHub
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


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """With ``Settings.api_key`` set, demand it as ``X-API-Key`` or ``Authorization: Bearer``."""
    expected = settings.api_key
    if not expected:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = credentials.strip()
    if given is None or not secrets.compare_digest(given.encode(), expected.encode()):
        raise ProblemError(
            401,
            "send the API key as `X-API-Key: <key>` or `Authorization: Bearer <key>`"
            if given is None
            else "the API key is wrong",
            kind="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="xplain"'},
        )
