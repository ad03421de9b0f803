"""Redis clients for the gateway (asyncio) and the workers (sync): direct, or through Sentinel.

Without sentinels, ``XPLAIN_REDIS_URL`` names the server. With ``XPLAIN_REDIS_SENTINELS``
(``host:port,host:port,...``) and ``XPLAIN_REDIS_SENTINEL_MASTER`` (the monitored name), the
clients ask the sentinels for the current primary and ask again whenever a connection fails,
so a failover needs no restart; ``XPLAIN_REDIS_URL`` then only gives the database number and
credentials. Commands that meet a dead connection are retried with back-off (up to about
``retry_s``), which covers a Redis restart and most of a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel

RETRY_ON = [RedisConnectionError, RedisTimeoutError]


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: a URL, or sentinels and a master name (plus the URL's db and auth)."""

    url: str
    sentinels: str = ""
    master: str = "xplain"

    @property
    def hosts(self) -> list[tuple[str, int]]:
        """The sentinels as (host, port) pairs."""
        out = []
        for item in self.sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if item.strip():
                if not host or not port.isdigit():
                    raise ValueError(f"XPLAIN_REDIS_SENTINELS: {item!r} is not host:port")
                out.append((host, int(port)))
        return out

    def url_options(self) -> dict[str, Any]:
        """db, username, password (and TLS) from the URL, for a sentinel-managed client."""
        keep = ("db", "username", "password", "ssl", "ssl_cert_reqs", "ssl_ca_certs")
        return {k: v for k, v in parse_url(self.url).items() if k in keep}


def async_client(target: RedisTarget, retries: int = 4, **options: Any) -> redis.asyncio.Redis:
    """The gateway's client: exponential back-off from 10 ms to 0.5 s over ``retries`` retries."""
    retry = redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.5, base=0.01), retries)
    options = {"retry": retry, "retry_on_error": RETRY_ON, **options}
    if not target.hosts:
        return redis.asyncio.Redis.from_url(target.url, **options)
    sentinel = AsyncSentinel(target.hosts, socket_timeout=1.0)
    client: redis.asyncio.Redis = sentinel.master_for(
        target.master, **target.url_options(), **options
    )
    return client


def sync_client(target: RedisTarget, retries: int = 6, **options: Any) -> redis.Redis:
    """A worker's client: back-off from 20 ms to 1 s over ``retries`` retries."""
    retry = redis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.02), retries)
    options = {"retry": retry, "retry_on_error": RETRY_ON, **options}
    if not target.hosts:
        return redis.Redis.from_url(target.url, **options)
    sentinel = Sentinel(target.hosts, socket_timeout=1.0)
    client: redis.Redis = sentinel.master_for(target.master, **target.url_options(), **options)
    return client
