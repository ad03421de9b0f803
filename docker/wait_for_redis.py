"""Wait (bounded) until the Redis of ``XPLAIN_REDIS_URL`` answers; used by the entrypoints.

Exits 0 when it answers, 1 after ``XPLAIN_WAIT_FOR_REDIS_S`` seconds (default 60). The URL is
never printed: it may hold a password.
"""

from __future__ import annotations

import os
import sys
import time

import redis


def main() -> int:
    """Ping until Redis answers or the deadline passes."""
    url = os.environ.get("XPLAIN_REDIS_URL", "redis://127.0.0.1:6379/0")
    deadline = time.monotonic() + float(os.environ.get("XPLAIN_WAIT_FOR_REDIS_S", "60"))
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    while True:
        try:
            client.ping()
            return 0
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                sys.stderr.write(f"redis did not answer: {exc}\n")
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
