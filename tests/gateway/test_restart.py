"""Redis restarts under load: every request after the restart is served, none gets a stale
pooled connection's 503."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.gateway.conftest import post_image, running_gateway
from tests.gateway.test_outage import OwnRedis, own_redis  # noqa: F401 - the fixture


def test_after_a_redis_restart_concurrent_requests_all_succeed(own_redis: OwnRedis) -> None:  # noqa: F811
    with running_gateway(own_redis.url) as gateway:
        gateway.announce()
        with ThreadPoolExecutor(32) as pool:  # fill the gateway's connection pool
            list(pool.map(lambda _: gateway.http.get("/v1/models").status_code, range(64)))
        own_redis.stop()
        own_redis.start()  # same port, empty: every pooled connection is now stale
        gateway.announce()
        time.sleep(0.2)

        def call(index: int) -> int:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                if index % 2:
                    return client.get("/v1/models").status_code
                return client.get("/readyz").status_code

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(call, range(32)))
        assert codes.count(200) == 32, codes
        assert post_image(gateway, wait="0").status_code == 202
