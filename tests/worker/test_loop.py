"""The claim loop in-process against a real Redis: batching, lanes, cancellation, bad input."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import redis

from app.contract.jobs import JobEnvelope
from app.contract.keys import GROUP, Keys
from tests.worker.conftest import make_queue
from tests.worker.support import (
    cancel,
    enqueue,
    heatmap,
    random_png,
    record,
    result,
    wait_status,
)
from workers.loop import Worker
from workers.runtime import Runtime

LONG_OCCLUSION = {"window": 8, "stride": 4, "max_batch_size": 1}
"""50 forward passes of the 20 ms model: about a second."""


def background(action, *args):  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=action, args=args, daemon=True)
    thread.start()
    return thread


def metrics(client: redis.Redis, keys: Keys) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in client.hgetall(keys.metrics).items()}


def test_waiting_compatible_jobs_run_as_one_group_fast_lane_first(
    client: redis.Redis, keys: Keys, worker: Worker
) -> None:
    slow = enqueue(client, keys, image=random_png(9), method="occlusion", params={"window": 8})
    fast = [
        enqueue(client, keys, image=random_png(i), target=[None, 0, 1][i % 3]) for i in range(5)
    ]
    assert worker.run(max_groups=2) == 2
    records = {job_id: record(client, keys, job_id) for job_id in [slow, *fast]}
    assert all(rec["status"] == "succeeded" for rec in records.values())
    assert all(result(client, keys, job_id)["group_size"] == 5 for job_id in fast)
    assert max(float(records[j]["finished_at"]) for j in fast) < float(records[slow]["started_at"])
    assert result(client, keys, slow)["params"]["max_batch_size"] == 64
    # Batched with four others or not, a job's heatmap is the same.
    alone = enqueue(client, keys, image=random_png(1), target=0)  # = fast[1]: same image, target
    assert worker.run(max_groups=1) == 1
    assert result(client, keys, alone)["group_size"] == 1
    np.testing.assert_allclose(
        heatmap(client, keys, fast[1], (32, 32)), heatmap(client, keys, alone, (32, 32)), atol=1e-5
    )
    counts = metrics(client, keys)
    assert counts["jobs_total:gradcam:succeeded"] == 6
    assert counts["batch_size_count"] == 3 and counts["batch_size_sum"] == 7


def test_cancelling_every_job_of_a_group_stops_it_and_stores_nothing(
    client: redis.Redis, keys: Keys, worker: Worker
) -> None:
    job_id = enqueue(
        client,
        keys,
        image=random_png(0),
        model="tiny_slow",
        method="occlusion",
        params=LONG_OCCLUSION,
    )

    def cancel_when_running() -> None:
        wait_status(client, keys, job_id, {"running"})
        cancel(client, keys, job_id)

    canceller = background(cancel_when_running)
    worker.run(max_groups=1)
    canceller.join()
    rec = record(client, keys, job_id)
    assert rec["status"] == "cancelled"
    assert float(rec["progress"]) < 0.9  # it stopped early, not at the end
    assert not client.exists(keys.result(job_id)) and not client.exists(keys.heatmap(job_id))
    assert client.xpending(keys.stream("slow"), GROUP)["pending"] == 0
    assert metrics(client, keys)["jobs_total:occlusion:cancelled"] == 1


def test_a_partly_cancelled_group_finishes_the_others(
    client: redis.Redis, keys: Keys, worker: Worker
) -> None:
    kept, dropped = (
        enqueue(
            client,
            keys,
            image=random_png(i),
            model="tiny_slow",
            method="occlusion",
            params={**LONG_OCCLUSION, "stride": 8},
        )
        for i in range(2)
    )

    def cancel_one() -> None:
        wait_status(client, keys, dropped, {"running"})
        cancel(client, keys, dropped)

    canceller = background(cancel_one)
    worker.run(max_groups=1)
    canceller.join()
    assert record(client, keys, kept)["status"] == "succeeded"
    assert result(client, keys, kept)["group_size"] == 2
    assert record(client, keys, dropped)["status"] == "cancelled"
    assert result(client, keys, dropped) is None


def test_bad_jobs_fail_alone_with_a_problem(
    client: redis.Redis, keys: Keys, worker: Worker
) -> None:
    future = JobEnvelope(
        job_id="f" * 32, lane="fast", model="tiny", method="gradcam", params={}, enqueued_at=0
    ).model_dump()
    future["schema_version"] = 99
    unknown_version = enqueue(
        client, keys, image=random_png(0), envelope_override=json.dumps(future)
    )
    client.rename(keys.job(unknown_version), keys.job("f" * 32))
    cases = {
        "model": enqueue(client, keys, image=random_png(1), model="resnet9000"),
        "params": enqueue(client, keys, image=random_png(2), params={"layr": "x"}),
        "evaluate": enqueue(client, keys, image=random_png(3), evaluate=["vibes"]),
        "image": enqueue(client, keys, image=b"\x89PNG garbage"),
        "layer": enqueue(client, keys, image=random_png(4), params={"layer": "features.9"}),
    }
    good = enqueue(client, keys, image=random_png(5))
    worker.run(max_groups=2)
    assert record(client, keys, good)["status"] == "succeeded"
    errors = {}
    for name, job_id in cases.items():
        rec = record(client, keys, job_id)
        assert rec["status"] == "failed", name
        errors[name] = json.loads(rec["error"])
        assert errors[name]["status"] == 422, (name, errors[name])
    assert "resnet9000" in errors["model"]["detail"]
    assert "layr" in errors["params"]["detail"]
    assert "vibes" in errors["evaluate"]["detail"]
    assert "decoded" in errors["image"]["detail"]
    assert "features.9" in errors["layer"]["detail"]
    dead = client.xrange(keys.dead_letter)
    assert len(dead) == 1 and b"schema_version 99" in dead[0][1][b"reason"]
    failed = record(client, keys, "f" * 32)
    assert failed["status"] == "failed" and "schema_version" in failed["error"]
    assert client.xpending(keys.stream("fast"), GROUP)["pending"] == 0


def test_stop_finishes_the_current_group_and_hands_the_rest_back(
    client: redis.Redis, keys: Keys, worker: Worker
) -> None:
    first, second = (
        enqueue(
            client,
            keys,
            image=random_png(i),
            model="tiny_slow",
            method="occlusion",
            params={**LONG_OCCLUSION, "stride": 8 + i},  # different params: two groups
        )
        for i in range(2)
    )

    def stop_when_running() -> None:
        wait_status(client, keys, first, {"running"})
        worker.stop.set()

    stopper = background(stop_when_running)
    worker.run()
    stopper.join()
    assert record(client, keys, first)["status"] == "succeeded"
    rec = record(client, keys, second)
    assert rec["status"] == "queued" and rec["attempts"] == "0"
    assert client.xpending(keys.stream("slow"), GROUP)["pending"] == 0
    (entry,) = client.xrange(keys.stream("slow"))
    assert entry[0].decode() == rec["stream_id"]
    assert worker.queue.in_flight() == {}


def test_a_job_interrupted_by_an_error_is_taken_over_after_the_visibility_timeout(
    client: redis.Redis, keys: Keys, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(client, keys, visibility_timeout_s=0.5)
    worker = Worker(runtime, queue, threading.Event(), block_ms=100, recover_interval_s=0.1)
    job_id = enqueue(client, keys, image=random_png(0))
    finish = queue.finish
    calls = []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("connection lost while writing")
        return finish(*args, **kwargs)

    monkeypatch.setattr(queue, "finish", flaky)
    started = time.monotonic()
    assert worker.run(max_groups=1) == 1  # the interrupted group does not count
    assert len(calls) == 2
    rec = record(client, keys, job_id)
    assert rec["status"] == "succeeded" and rec["attempts"] == "2"
    assert time.monotonic() - started > 0.5  # not before the entry was idle long enough
    assert client.xpending(keys.stream("fast"), GROUP)["pending"] == 0
