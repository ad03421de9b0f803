"""Real ``python -m workers`` processes: scheduling, shutdown, crash recovery, poison jobs.

Test workers beat every 0.5 s and take over entries idle for 2 s (see ``worker_env``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from app.contract.jobs import WorkerAnnouncement
from app.contract.keys import GROUP, Keys
from tests.worker.support import (
    enqueue,
    enqueue_many,
    random_png,
    record,
    result,
    solid_png,
    start_worker,
    stop_process,
    wait_for,
    wait_status,
    wait_worker,
    worker_env,
)

FINAL = {"succeeded", "failed", "cancelled"}
SLOW = {"model": "tiny_slow", "method": "occlusion"}


@dataclass
class Cluster:
    """Worker processes of one test sharing a Redis and a key prefix."""

    client: redis.Redis
    keys: Keys
    redis_url: str
    models_file: Path
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, **settings: object) -> subprocess.Popen[bytes]:
        """``python -m workers`` named ``name`` with ``XPLAIN_<setting>`` overrides."""
        env = worker_env(self.redis_url, self.keys.prefix, self.models_file, **settings)
        process = start_worker(env, name, self.log_dir)
        self.processes.append(process)
        return process


@pytest.fixture
def cluster(redis_url: str, models_file: Path, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose processes are killed at teardown (their logs printed on failure)."""
    keys = Keys(f"p{uuid.uuid4().hex[:8]}")
    running = Cluster(redis.Redis.from_url(redis_url), keys, redis_url, models_file, tmp_path)
    yield running
    for process in running.processes:
        stop_process(process)
    for log in sorted(tmp_path.glob("*.log")):
        print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def test_a_cheap_job_overtakes_a_running_expensive_one(cluster: Cluster) -> None:
    client, keys, start = cluster.client, cluster.keys, cluster.start
    start("w1")
    wait_worker(client, keys, "w1")
    announcement = WorkerAnnouncement.model_validate_json(client.get(keys.worker("w1")))
    assert announcement.lanes == ["fast", "slow"]
    tiny = next(m for m in announcement.models if m.name == "tiny")
    assert tiny.input_size == (32, 32) and tiny.default_layer == "features.2"
    assert "features.2" in tiny.layers and tiny.labels == ["red", "green", "blue"]

    slow = enqueue(
        client,
        keys,
        image=random_png(0),
        **SLOW,
        params={"window": 8, "stride": 4, "max_batch_size": 1},  # 50 forwards of >= 20 ms
    )
    wait_for(lambda: float(record(client, keys, slow).get("progress", 0)) > 0, 20, "slow progress")
    fast = enqueue(client, keys, image=random_png(1))
    done = wait_status(client, keys, fast, FINAL, timeout=20)
    assert done["status"] == "succeeded"
    assert record(client, keys, slow)["status"] == "running"  # the expensive job is not done
    slow_done = wait_status(client, keys, slow, FINAL, timeout=60)
    assert slow_done["status"] == "succeeded"
    assert float(slow_done["finished_at"]) - float(done["finished_at"]) > 0.5
    assert result(client, keys, fast)["worker"] == "w1"


def test_first_sigterm_finishes_what_fits_the_drain_time_and_hands_back_the_rest(
    cluster: Cluster,
) -> None:
    client, keys, start = cluster.client, cluster.keys, cluster.start
    process = start("w1", drain_s=0.3)
    wait_worker(client, keys, "w1")
    first, second = enqueue_many(
        client,
        keys,
        [
            {"image": random_png(0), "model": "tiny_slow", "method": "gradcam"},
            {
                "image": random_png(1),
                "model": "tiny_slow",
                "method": "rise",
                "params": {"n_masks": 400, "max_batch_size": 1},  # 8 s of 20 ms passes
            },
        ],
    )
    wait_status(client, keys, second, {"running"})
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert record(client, keys, first)["status"] == "succeeded"
    rec = record(client, keys, second)
    assert rec["status"] == "queued" and rec["attempts"] == "0"
    assert client.xpending(keys.stream("slow"), GROUP)["pending"] == 0
    assert client.xlen(keys.stream("slow")) == 1
    assert not client.exists(keys.worker("w1"))  # the announcement was withdrawn


def test_a_killed_workers_job_is_taken_over_and_a_second_sigterm_exits_at_once(
    cluster: Cluster,
) -> None:
    client, keys, start = cluster.client, cluster.keys, cluster.start
    workers = {name: start(name) for name in ("w1", "w2")}
    for name in workers:
        wait_worker(client, keys, name)
    job = enqueue(
        client,
        keys,
        image=random_png(2),
        **SLOW,
        params={"window": 8, "stride": 4, "max_batch_size": 4},
    )
    victim = wait_status(client, keys, job, {"running"})["worker"]
    workers[victim].kill()  # SIGKILL mid-job
    workers[victim].wait(timeout=10)
    killed_at = time.time()
    rescued = wait_status(client, keys, job, FINAL, timeout=30)
    survivor = next(name for name in workers if name != victim)
    assert rescued["status"] == "succeeded", rescued
    assert rescued["worker"] == survivor and rescued["attempts"] == "2"
    assert float(rescued["started_at"]) - killed_at > 1.0  # after the visibility timeout
    assert result(client, keys, job)["worker"] == survivor

    # The survivor gets a long job and two SIGTERMs: it leaves without finishing it.
    long_job = enqueue(
        client,
        keys,
        image=random_png(3),
        **SLOW,
        params={"window": 4, "stride": 1, "max_batch_size": 1},
    )
    wait_status(client, keys, long_job, {"running"})
    workers[survivor].send_signal(signal.SIGTERM)
    time.sleep(0.2)
    sent = time.monotonic()
    workers[survivor].send_signal(signal.SIGTERM)
    assert workers[survivor].wait(timeout=10) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 3.0
    assert record(client, keys, long_job)["status"] == "running"
    assert client.xpending(keys.stream("slow"), GROUP)["pending"] == 1  # for the next worker


def test_a_job_that_keeps_killing_workers_is_dead_lettered(cluster: Cluster) -> None:
    client, keys, start = cluster.client, cluster.keys, cluster.start
    workers = {name: start(name, max_attempts=2) for name in ("w1", "w2", "w3")}
    for name in workers:
        wait_worker(client, keys, name)
    poison, innocent = enqueue_many(
        client,
        keys,
        [
            {"image": solid_png(255), "model": "tiny_poison"},  # all white: ends the process
            {"image": random_png(4), "model": "tiny_poison"},  # same group, harmless
        ],
    )
    # One worker dies running the group; another takes both over after the visibility
    # timeout, runs them one at a time and dies on the poison; the last one finds the
    # poison's attempts used up.
    rec = wait_status(client, keys, poison, FINAL, timeout=40)
    assert rec["status"] == "failed"
    error = json.loads(rec["error"])
    assert error["status"] == 500 and "stopped 2 workers" in error["detail"]
    (dead,) = client.xrange(keys.dead_letter)
    assert json.loads(dead[1][b"envelope"])["job_id"] == poison
    assert dead[1][b"reason"] == b"the job stopped 2 workers"
    saved = wait_status(client, keys, innocent, FINAL, timeout=20)
    assert saved["status"] == "succeeded", saved
    assert int(saved["attempts"]) <= 2  # the poison did not use up its attempts
    exits = sorted(p.poll() for p in workers.values() if p.poll() is not None)
    assert exits == [17, 17]
    assert saved["worker"] == next(n for n, p in workers.items() if p.poll() is None)
