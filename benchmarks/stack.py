"""A whole service for a benchmark: ``redis-server``, workers and a gateway, as subprocesses.

Every part is configured only by ``XPLAIN_*`` variables, as in production. ``root`` chooses the
source tree the gateway and workers run from, so one benchmark can measure an older commit (a
``git worktree``) side by side with the current one.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``check()`` until truthy, else raise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


_uploads = itertools.count()


def distinct(image: bytes) -> bytes:
    """``image`` with its first pixel's colour changed to a new value at each call: the gateway
    answers a repeated identical request from its stored result (``cached``), which a
    benchmark of the computing must not measure."""
    n = next(_uploads)
    pixels = np.array(Image.open(io.BytesIO(image)).convert("RGB"))
    pixels[0, 0] = (n % 256, (n // 256) % 256, (n // 65536) % 256)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Stack:
    """The running service."""

    url: str
    redis_url: str
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each part (``redis``, ``worker``, ``gateway``...)."""
        return {name: process.pid for name, process in self.processes.items()}


@contextmanager
def running_stack(
    env: dict[str, str] | None = None, *, root: Path = REPO, workers: int = 1
) -> Iterator[Stack]:
    """Redis, ``workers`` workers and one gateway serving ``root``'s code; stopped on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="xplain-bench-"))
    redis_port, http_port = free_port(), free_port()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed")
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    full_env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "XPLAIN_REDIS_URL": redis_url,
        "XPLAIN_MAX_QUEUE_DEPTH": "10000",
        **(env or {}),
    }
    stack = Stack(f"http://127.0.0.1:{http_port}", redis_url, workdir)

    def spawn(args: list[str], name: str, extra: dict[str, str] | None = None) -> None:
        out = (workdir / f"{name}.log").open("wb")
        stack.processes[name] = subprocess.Popen(
            args, cwd=root, env={**full_env, **(extra or {})}, stdout=out, stderr=subprocess.STDOUT
        )

    try:
        spawn(
            [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            "redis",
        )  # fmt: skip
        wait_until(redis.Redis(port=redis_port).ping, 10, "redis")
        for index in range(workers):
            name = "worker" if workers == 1 else f"worker{index + 1}"
            spawn([sys.executable, "-m", "workers"], name, {"XPLAIN_WORKER_NAME": name})
        spawn(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(http_port),
             "--log-level", "warning", "--no-access-log"],
            "gateway",
        )  # fmt: skip
        wait_until(lambda: httpx.get(f"{stack.url}/readyz").status_code == 200, 180, "service")
        yield stack
    finally:
        for process in reversed(stack.processes.values()):
            process.terminate()
        for process in stack.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
