#!/bin/sh
# Worker container: one worker process per GPU (give each container one device). The first
# SIGTERM lets the current group finish (see stop_grace_period in docker-compose.yml).
set -eu
python /usr/local/lib/xplain/wait_for_redis.py
exec python -m workers "$@"
