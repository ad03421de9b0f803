"""The worker loop in-process against a real Redis: grouping, cancellation, bad input, stop."""

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
    wait_for,
    wait_status,
)
from workers.loop import Worker
from workers.queue import WorkerQueue
from workers.runtime import Runtime

LONG_OCCLUSION = {"window": 8, "stride": 4, "max_batch_size": 1}
"""50 forward passes of the 20 ms model: about a second."""


def background(action, *args):  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=action, args=args, daemon=True)
    thread.start()
    return thread


def metrics(client: redis.Redis, keys: Keys) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in client.hgetall(keys.metrics).items()}


def test_compatible_gradient_jobs_run_as_one_call_and_each_gets_its_own_map(
    client: redis.Redis, keys: Keys, worker: Worker
) -> None:
    slow = enqueue(client, keys, image=random_png(9), method="occlusion", params={"window": 8})
    fast = [
        enqueue(client, keys, image=random_png(i), target=[None, 0, 1][i % 3]) for i in range(5)
    ]
    assert worker.run(until_idle=True) == 2  # one gradcam call for five jobs, one occlusion
    records = {job_id: record(client, keys, job_id) for job_id in [slow, *fast]}
    assert all(rec["status"] == "succeeded" for rec in records.values())
    assert all(result(client, keys, job_id)["group_size"] == 5 for job_id in fast)
    assert result(client, keys, slow)["params"]["max_batch_size"] == 64
    # Batched with four others or not, a job's heatmap is the same.
    alone = enqueue(client, keys, image=random_png(1), target=0)  # = fast[1]: same image, target
    assert worker.run(until_idle=True) == 1
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
    worker.run(until_idle=True)
    canceller.join()
    rec = record(client, keys, job_id)
    assert rec["status"] == "cancelled"
    assert float(rec["progress"]) < 0.9  # it stopped early, not at the end
    assert not client.exists(keys.result(job_id)) and not client.exists(keys.heatmap(job_id))
    assert client.xpending(keys.stream("slow"), GROUP)["pending"] == 0
    assert metrics(client, keys)["jobs_total:occlusion:cancelled"] == 1


def test_cancelling_one_job_leaves_the_others_running(
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
    worker.run(until_idle=True)
    canceller.join()
    assert record(client, keys, kept)["status"] == "succeeded"
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
    worker.run(until_idle=True)
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


def test_stop_finishes_what_fits_the_drain_time_and_hands_the_rest_back(
    client: redis.Redis, keys: Keys, runtime: Runtime, queue: WorkerQueue
) -> None:
    worker = Worker(runtime, queue, threading.Event(), block_ms=100, drain_s=0.5)
    quick = enqueue(client, keys, image=random_png(0), model="tiny_slow", method="gradcam")
    long = enqueue(
        client,
        keys,
        image=random_png(1),
        model="tiny_slow",
        method="rise",
        params={"n_masks": 400, "max_batch_size": 1},  # 401 passes of 20 ms: 8 s
    )

    def stop_when_running() -> None:
        wait_status(client, keys, long, {"running"})
        wait_for(lambda: float(record(client, keys, long)["progress"]) > 0, 10, "progress")
        worker.stop.set()

    stopper = background(stop_when_running)
    started = time.monotonic()
    worker.run()
    stopper.join()
    assert time.monotonic() - started < 5  # handed back, not finished
    assert record(client, keys, quick)["status"] == "succeeded"
    rec = record(client, keys, long)
    assert rec["status"] == "queued" and rec["attempts"] == "0" and rec["progress"] == "0"
    assert client.xpending(keys.stream("slow"), GROUP)["pending"] == 0
    (entry,) = client.xrange(keys.stream("slow"))
    assert entry[0].decode() == rec["stream_id"]
    assert worker.queue.in_flight() == {}


def test_a_result_that_could_not_be_written_is_written_when_redis_answers(
    client: redis.Redis, keys: Keys, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(client, keys)
    worker = Worker(runtime, queue, threading.Event(), block_ms=100)
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
    assert worker.run(until_idle=True) == 1
    assert len(calls) == 2
    assert time.monotonic() - started >= 1.0  # it waited for Redis before trying again
    rec = record(client, keys, job_id)
    assert rec["status"] == "succeeded" and rec["attempts"] == "1"  # not taken over
    assert client.xpending(keys.stream("fast"), GROUP)["pending"] == 0
