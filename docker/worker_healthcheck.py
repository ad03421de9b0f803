"""Docker healthcheck of a worker container: healthy while a worker of this host heartbeats.

A worker's id is ``<hostname>-<pid>`` unless ``XPLAIN_WORKER_NAME`` sets it; its announcement
key (with a TTL) exists while it is alive (docs/PROTOCOL.md, Heartbeat).
"""

from __future__ import annotations

import socket
import sys

import redis

from app.contract.keys import Keys
from app.settings import Settings


def main() -> int:
    """0 if one of this host's workers has a live announcement, else 1."""
    settings = Settings()
    keys = Keys(settings.key_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    host = socket.gethostname()
    try:
        members = [m.decode() for m in client.zrange(keys.workers, 0, -1)]
        mine = [m for m in members if m == settings.worker_name or m.startswith(f"{host}-")]
        return 0 if any(client.exists(keys.worker(m)) for m in mine) else 1
    except redis.RedisError as exc:
        sys.stderr.write(f"redis: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
