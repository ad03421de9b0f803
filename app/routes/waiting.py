"""Waiting for a job to finish on its event inbox, re-reading the record only when needed."""

from __future__ import annotations

import asyncio

from app.contract.jobs import JobEvent
from app.events import CLOSED, Message
from app.queue import JobQueue, JobState

SAFETY_REREAD_S = 5.0
"""Longest silence after which a waiter re-reads the record anyway (missed-event safety net)."""


async def next_message(inbox: asyncio.Queue[Message], timeout: float) -> Message | None:
    """The next inbox message, or None after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(inbox.get(), timeout)
    except TimeoutError:
        return None


async def wait_final(
    queue: JobQueue,
    inbox: asyncio.Queue[Message],
    job_id: str,
    timeout: float,
    *,
    heatmap: bool = True,
) -> JobState | None:
    """The job's state once final, or None if ``timeout`` passes first (or the hub closes).

    Wakes on the job's final event; progress events are skipped without touching Redis.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        message = await next_message(inbox, min(remaining, SAFETY_REREAD_S))
        if message is CLOSED:
            return None
        if isinstance(message, JobEvent) and not message.status.final:
            continue
        state = await queue.read(job_id, heatmap=heatmap)
        if state is None or state.status.final:
            return state
    return None
