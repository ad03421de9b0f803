"""One ``PSUBSCRIBE`` connection per gateway process, fanning job events out by job id.

Waiting ``POST`` requests and SSE streams register an inbox for their job id and wake as soon as
a worker publishes; nothing polls in the hot path. Pub/sub is fire-and-forget, so whenever the
subscription is (re)established every inbox receives ``RESYNC``: its owner re-reads the stored
record, which catches whatever was published while the connection was down. Owners also re-read
after a quiet interval as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Final

from pydantic import ValidationError
from redis.exceptions import RedisError

from app.contract.connection import RedisTarget, async_client
from app.contract.jobs import JobEvent
from app.contract.keys import Keys

log = logging.getLogger("xplain.gateway.events")


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESYNC: Final = _Signal("RESYNC")
"""Sent to every inbox when events may have been missed: re-read the stored state."""
CLOSED: Final = _Signal("CLOSED")
"""Sent to every inbox when the hub shuts down."""

Message = JobEvent | _Signal

INBOX_SIZE = 256
PING_INTERVAL_S = 15.0
RECONNECT_MAX_S = 2.0


class EventHub:
    """Fan-out of job events from one pattern subscription to in-process inboxes."""

    def __init__(self, target: RedisTarget, keys: Keys) -> None:
        self._target = target
        self._keys = keys
        self._inboxes: dict[str, set[asyncio.Queue[Message]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.draining = False
        """Set when the gateway stops: every inbox, and every new one, gets ``CLOSED``."""
        self._session_connected = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Start the subscription task (it keeps reconnecting until ``stop``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="xplain-event-hub")

    async def stop(self) -> None:
        """Stop the task and tell every inbox the hub is closed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._broadcast(CLOSED)

    def drain(self) -> None:
        """The gateway is stopping: waiting requests answer now (202 with the job's URL) and
        event streams end (clients reconnect to another gateway and resume)."""
        self.draining = True
        self._broadcast(CLOSED)

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[Message]]:
        """An inbox receiving the job's events while the ``with`` block runs."""
        inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=INBOX_SIZE)
        if self.draining:
            inbox.put_nowait(CLOSED)
        self._inboxes[job_id].add(inbox)
        try:
            yield inbox
        finally:
            boxes = self._inboxes.get(job_id)
            if boxes is not None:
                boxes.discard(inbox)
                if not boxes:
                    del self._inboxes[job_id]

    @property
    def subscribers(self) -> int:
        """Number of open inboxes (for tests and metrics)."""
        return sum(len(boxes) for boxes in self._inboxes.values())

    async def _run(self) -> None:
        delay = 0.05
        while True:
            self._session_connected = False
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                if self._session_connected:
                    log.warning("event subscription lost, reconnecting: %s", exc)
            if self._session_connected:
                delay = 0.05
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listen(self) -> None:
        client = async_client(self._target, retries=0, socket_connect_timeout=2.0)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(self._keys.events_pattern)
            self._session_connected = True
            self.connected.set()
            self._broadcast(RESYNC)
            loop = asyncio.get_running_loop()
            last_ping = loop.time()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "pmessage":
                    self._dispatch(message["channel"], message["data"])
                if loop.time() - last_ping > PING_INTERVAL_S:
                    await pubsub.ping()
                    last_ping = loop.time()
        finally:
            self.connected.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        job_id = self._keys.job_id_from_channel(name)
        boxes = self._inboxes.get(job_id)
        if not boxes:
            return
        try:
            event = JobEvent.model_validate_json(data)
        except ValidationError:
            log.warning("ignoring a malformed event on %s", name)
            return
        for inbox in list(boxes):
            _put(inbox, event)

    def _broadcast(self, signal: _Signal) -> None:
        for boxes in list(self._inboxes.values()):
            for inbox in list(boxes):
                _put(inbox, signal)


def _put(inbox: asyncio.Queue[Message], message: Message) -> None:
    """Deliver without blocking; a full inbox drops its oldest message (progress is lossy,
    and a reader re-reads the record on the final event anyway)."""
    if inbox.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            inbox.get_nowait()
    inbox.put_nowait(message)
