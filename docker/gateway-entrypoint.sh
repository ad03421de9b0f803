#!/bin/sh
# Gateway container: wait a little for Redis, then serve. The gateway also starts without
# Redis (it answers 503 until Redis is back), so a Redis that stays away is only a warning.
# Scale with more containers rather than uvicorn --workers: /metrics is per process.
set -eu
python /usr/local/lib/xplain/wait_for_redis.py || echo "warning: starting without Redis" >&2
exec python -m app \
  --host 0.0.0.0 --port "${PORT:-8000}" \
  --proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}" \
  --graceful-s "${XPLAIN_GRACEFUL_S:-10}" "$@"
