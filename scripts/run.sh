#!/usr/bin/env bash
# `make run`: the gateway and one worker on this machine, with Redis.
#
# Uses the Redis at XPLAIN_REDIS_URL (default redis://127.0.0.1:6379/0) if it answers, else
# starts a local redis-server on a free port (installing Debian's package first when it is
# missing and we are root). Serves on http://$HOST:$PORT (127.0.0.1:8000 by default).
# Ctrl-C stops everything: the gateway and the worker first (the worker finishes its current
# group), Redis last; a second Ctrl-C stops them at once.
#
# Environment: PYTHON (default .venv/bin/python), PORT, HOST, and every XPLAIN_* setting.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
export XPLAIN_REDIS_URL=${XPLAIN_REDIS_URL:-redis://127.0.0.1:6379/0}

gateway_pid=""
worker_pid=""
redis_pid=""
redis_dir=""

log() { printf '[run] %s\n' "$*" >&2; }

redis_answers() {
  "$PYTHON" -c 'import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()' "$1" \
    >/dev/null 2>&1
}

free_port() {
  "$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# wait_gone PID SECONDS: wait for PID to exit; SIGKILL it if it is still there after SECONDS
wait_gone() {
  local pid=$1 ticks=$(($2 * 10))
  while alive "$pid" && [ "$ticks" -gt 0 ]; do
    sleep 0.1
    ticks=$((ticks - 1))
  done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
}

cleanup() {
  set +e
  trap - EXIT
  trap 'log "stopping at once"; kill -KILL $gateway_pid $worker_pid 2>/dev/null' INT TERM HUP
  if alive "$gateway_pid" || alive "$worker_pid"; then
    log "stopping (Ctrl-C again to stop at once)"
  fi
  # one SIGTERM each: a second one would make the worker drop its current group
  alive "$gateway_pid" && kill -TERM "$gateway_pid" 2>/dev/null
  alive "$worker_pid" && kill -TERM "$worker_pid" 2>/dev/null
  wait_gone "$gateway_pid" 15
  wait_gone "$worker_pid" 120
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null
    wait_gone "$redis_pid" 10
    rm -rf "$redis_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

start_local_redis() {
  if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing redis-server from Debian's packages"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      log "no Redis answers at XPLAIN_REDIS_URL and redis-server is not installed;"
      log "install it (apt-get install redis-server) or point XPLAIN_REDIS_URL at a Redis"
      exit 1
    fi
  fi
  local port
  port=$(free_port)
  redis_dir=$(mktemp -d)
  # its own session: Ctrl-C reaches it only through cleanup, after the worker has finished
  setsid redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$redis_dir" >"$redis_dir/redis.log" 2>&1 &
  redis_pid=$!
  export XPLAIN_REDIS_URL="redis://127.0.0.1:$port/0"
  for _ in $(seq 100); do
    redis_answers "$XPLAIN_REDIS_URL" && break
    alive "$redis_pid" || { log "redis-server failed: $(tail -n 5 "$redis_dir/redis.log")"; exit 1; }
    sleep 0.1
  done
  redis_answers "$XPLAIN_REDIS_URL" || { log "redis-server did not answer"; exit 1; }
  log "started redis-server on 127.0.0.1:$port (data in memory only)"
}

if redis_answers "$XPLAIN_REDIS_URL"; then
  log "using the Redis at XPLAIN_REDIS_URL"
else
  start_local_redis
fi

setsid "$PYTHON" -m workers &
worker_pid=$!
setsid "$PYTHON" -m app --host "$HOST" --port "$PORT" --graceful-s 5 &
gateway_pid=$!

for _ in $(seq 300); do
  if "$PYTHON" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1)' "http://$HOST:$PORT/healthz" >/dev/null 2>&1; then
    log "serving on http://$HOST:$PORT (API docs: http://$HOST:$PORT/docs); Ctrl-C stops"
    break
  fi
  alive "$gateway_pid" || break
  sleep 0.2
done

# run until Ctrl-C, or until the gateway or the worker exits
wait -n "$gateway_pid" "$worker_pid" || true
if ! alive "$gateway_pid"; then log "the gateway exited"; fi
if ! alive "$worker_pid"; then log "the worker exited"; fi
exit 1
