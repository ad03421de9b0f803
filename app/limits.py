"""Per-key rate limits, enforced in Redis so they hold across any number of gateways.

The rate limit is GCRA (the generic cell rate algorithm, a leaky bucket kept as one timestamp
per key): ``rate_per_minute`` jobs a minute, at most ``rate_per_minute`` of them in a burst.
One Lua script checks and updates the key's "theoretical arrival time" atomically, with the
Redis server's clock, so every gateway replica sees the same budget.

Answers carry the IETF httpapi draft's fields (draft-ietf-httpapi-ratelimit-headers)::

    RateLimit-Policy: "jobs";q=60;w=60
    RateLimit: "jobs";r=41;t=19

(``q`` jobs per ``w`` seconds; ``r`` remaining now, ``t`` seconds until the budget is whole
again). Over the limit: 429 with those fields and ``Retry-After``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

POLICY = "jobs"
WINDOW_S = 60

_GCRA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < t then tat = t end
local new_tat = tat + interval
if new_tat - t > window + 1e-9 then
  return {0, tostring(tat - t), tostring(new_tat - window - t)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(window * 1000) + 1000)
return {1, tostring(new_tat - t), '0'}
"""
"""KEYS: the key's bucket. ARGV: seconds per job, window. Returns {allowed, backlog, wait}."""


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one rate check."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int = 0

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (and ``Retry-After`` when refused)."""
        out = {
            "RateLimit-Policy": f'"{POLICY}";q={self.limit};w={WINDOW_S}',
            "RateLimit": f'"{POLICY}";r={self.remaining};t={self.reset_s}',
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class RateLimiter:
    """GCRA buckets under ``<prefix>:rate:<name>``."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.prefix = prefix
        self._script = redis.register_script(_GCRA)

    async def check(self, name: str, per_minute: int) -> RateDecision:
        """Take one job from ``name``'s budget of ``per_minute`` a minute, if there is one."""
        interval = WINDOW_S / per_minute
        allowed, backlog, wait = await self._script(
            keys=[f"{self.prefix}:rate:{name}"], args=[repr(interval), WINDOW_S]
        )
        backlog_s, wait_s = float(backlog), float(wait)
        remaining = max(0, math.floor((WINDOW_S - backlog_s) / interval + 1e-9))
        return RateDecision(
            allowed=bool(int(allowed)),
            limit=per_minute,
            remaining=remaining,
            reset_s=max(0, math.ceil(backlog_s)),
            retry_after_s=max(1, math.ceil(wait_s)),
        )
