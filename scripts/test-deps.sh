#!/usr/bin/env bash
# System pieces the test suite uses besides the virtual environment: a redis-server binary
# (the tests start their own on a free port, and sentinels with it), Debian's Chromium for the
# browser tests, and Debian's nginx for the load-balancer test (run as a plain process of the
# test: its packaged service is not used).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them with your package manager)" >&2
    exit 1
  fi
fi
