"""Webhooks: when a job with a ``callback_url`` ends, POST its final JSON there, signed.

Deliveries are queued in Redis by the same atomic step that ends the job (the worker's result
or failure write, the gateway's cancel, a reused result): the stream ``webhooks`` gets the job
id, so a delivery is never lost between "the job ended" and "somebody will call". Every
gateway runs a :class:`WebhookSender` that reads the stream in the consumer group
``gateways`` (each delivery goes to one gateway; one that dies leaves its deliveries pending,
and another takes them over after a minute):

* the body is the job as ``GET /v1/jobs/{id}?heatmap_data=false`` shows it;
* ``X-Xplain-Signature: sha256=<hex HMAC-SHA256 of the body>`` with the job's API key's
  ``webhook_secret`` (else ``XPLAIN_WEBHOOK_SECRET``); ``X-Xplain-Delivery`` names the job and
  the attempt; ``X-Request-ID`` is the job's;
* the host is checked against ``XPLAIN_WEBHOOK_HOSTS`` again before every attempt, and redirects
  are not followed: no request goes to any other address;
* a 2xx answer ends it; anything else is retried after 1, 2, 4, ... 64 s (8 attempts in all,
  ``webhook_retries`` holds the ones waiting), then given up and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
import time

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from app.contract.jobs import RecordField
from app.contract.keys import Keys
from app.identity import KeyRing
from app.queue import JobQueue
from app.routes.admission import host_allowed
from app.routes.views import job_view

log = logging.getLogger("xplain.gateway.webhooks")

GROUP = "gateways"
DELAYS_S = (1, 2, 4, 8, 16, 32, 64)
"""Waits before the 2nd ... 8th attempt."""
TAKEOVER_MS = 60_000
TIMEOUT_S = 10.0


def signature(secret: str, body: bytes) -> str:
    """The ``X-Xplain-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """One gateway's delivery loop."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        queue: JobQueue,
        keyring: KeyRing,
        hosts: frozenset[str],
    ) -> None:
        self.redis, self.keys, self.queue = redis, keys, queue
        self.keyring, self.hosts = keyring, hosts
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.delivered = 0
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)

    async def start(self) -> None:
        """Run the loop in the background."""
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Stop the loop (deliveries it held are taken over by another gateway)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        last_takeover = 0.0
        while True:
            try:
                await self._ensure_group()
                await self._due_retries()
                if time.monotonic() - last_takeover > TAKEOVER_MS / 1000:
                    last_takeover = time.monotonic()
                    await self._take_over()
                reply = await self.redis.xreadgroup(
                    GROUP, self.consumer, {self.keys.webhooks: ">"}, count=16, block=1000
                )
                for _, entries in reply or []:
                    await asyncio.gather(*(self._entry(eid, fields) for eid, fields in entries))
            except asyncio.CancelledError:
                raise
            except RedisError as error:
                log.warning("event=webhooks_redis_error error=%r", error)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("event=webhooks_loop_error")
                await asyncio.sleep(1.0)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.webhooks, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _take_over(self) -> None:
        reply = await self.redis.xautoclaim(
            self.keys.webhooks, GROUP, self.consumer, TAKEOVER_MS, start_id="0-0", count=16
        )
        entries = reply[1] if len(reply) > 1 else []
        await asyncio.gather(*(self._entry(eid, f) for eid, f in entries if f is not None))

    async def _entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        job_id = fields.get(b"job_id", b"").decode()
        if job_id:
            await self._attempt(job_id, 1)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.keys.webhooks, GROUP, entry_id)
        pipe.xdel(self.keys.webhooks, entry_id)
        await pipe.execute()

    async def _due_retries(self) -> None:
        due = await self.redis.zrangebyscore(
            self.keys.webhook_retries, "-inf", time.time(), start=0, num=16
        )
        for member in due:
            if await self.redis.zrem(self.keys.webhook_retries, member):  # this gateway's now
                job_id, _, attempt = member.decode().partition(" ")
                await self._attempt(job_id, int(attempt))

    async def _attempt(self, job_id: str, attempt: int) -> None:
        """Deliver once; schedule the next attempt on failure."""
        state = await self.queue.read(job_id, heatmap=False)
        url = state.record.get(RecordField.callback_url) if state is not None else None
        if state is None or not url:
            return
        if not host_allowed(url, self.hosts):
            log.warning("event=webhook_refused job_id=%s reason=host_not_allowed", job_id)
            return
        owner = state.record.get(RecordField.owner, "")
        secret = self.keyring.secret_for(owner)
        if not secret:
            log.warning("event=webhook_refused job_id=%s reason=no_secret", job_id)
            return
        body = job_view(state, heatmap_data=False).model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "xplain-webhooks/1",
            "X-Xplain-Signature": signature(secret, body),
            "X-Xplain-Delivery": f"{job_id}/{attempt}",
            "X-Request-ID": state.record.get(RecordField.request_id, job_id),
        }
        outcome = "failed"
        try:
            response = await self._http.post(url, content=body, headers=headers)
            outcome = str(response.status_code)
            if 200 <= response.status_code < 300:
                self.delivered += 1
                log.info(
                    "event=webhook_delivered job_id=%s attempt=%d owner=%s", job_id, attempt, owner
                )
                return
        except httpx.HTTPError as error:
            outcome = type(error).__name__
        if attempt > len(DELAYS_S):
            log.error(
                "event=webhook_given_up job_id=%s attempts=%d last=%s", job_id, attempt, outcome
            )
            return
        delay = DELAYS_S[attempt - 1]
        log.warning(
            "event=webhook_retry job_id=%s attempt=%d last=%s in_s=%d",
            job_id,
            attempt,
            outcome,
            delay,
        )
        await self.redis.zadd(
            self.keys.webhook_retries, {f"{job_id} {attempt + 1}": time.time() + delay}
        )
