"""scripts/run.sh (`make run`): Redis started when none answers, a real worker and the
gateway served, and everything stopped in order on Ctrl-C (Redis last).

Slow (10-25 s): the worker imports torch and loads a tiny model.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TINY_MODELS = """
[[models]]
name = "tiny"
factory = "tests.worker.nets:build"
weights = "none"
input_size = [32, 32]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
labels = ["red", "green", "blue"]
target_layer = "features.2"
"""


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


def _default_sigint() -> None:
    """Give the script a terminal's SIGINT: a suite started in the background (``make test &``,
    some CI runners) inherits SIGINT as ignored, and a shell cannot trap an ignored signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_started_by_this_test(marker: str) -> None:
    """SIGKILL every process whose environment names ``marker`` (run.sh starts the worker and
    the gateway in sessions of their own, so killing the script's group misses them)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.mark.slow
def test_run_script_serves_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(TINY_MODELS)
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "PYTHON": str(ROOT / ".venv/bin/python") if (ROOT / ".venv").is_dir() else "python3",
        "XPLAIN_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nobody there: start one
        "XPLAIN_MODELS_FILE": str(models),
        "XPLAIN_HEARTBEAT_INTERVAL_S": "0.5",
    }
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_default_sigint,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while _get(f"http://127.0.0.1:{port}/readyz") != 200:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
            try:
                assert process.wait(timeout=60) == 130
            except subprocess.TimeoutExpired:
                pytest.fail(f"run.sh still running 60 s after Ctrl-C:\n{log.read_text()}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            _kill_started_by_this_test(str(models))
    text = log.read_text()
    match = re.search(r"started redis-server on 127.0.0.1:(\d+)", text)
    assert match is not None, text
    with pytest.raises(redis.ConnectionError):  # stopped after the others
        redis.Redis(port=int(match.group(1)), socket_connect_timeout=1).ping()
    assert "event=worker_stopped" in text  # a graceful stop, not the second-signal exit
    assert "exit_now" not in text
    assert _get(f"http://127.0.0.1:{port}/healthz") == 0
