"""The worker's side of docs/PROTOCOL.md against a real Redis."""

from __future__ import annotations

import json
import time

import numpy as np
import redis

from app.contract.jobs import JobEvent, WorkerAnnouncement
from app.contract.keys import GROUP, Keys
from tests.worker.conftest import make_queue
from tests.worker.support import cancel, enqueue, random_png, record
from workers.queue import Finished, WorkerQueue


def claim_one(queue: WorkerQueue, lane: str = "fast") -> str:
    (entry,) = queue.claim([lane], None)
    return entry.entry_id


def events(pubsub: redis.client.PubSub) -> list[JobEvent]:
    """Every message received so far on the subscribed channels."""
    out = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message and message["type"] == "message":
            out.append(JobEvent.model_validate_json(message["data"]))
    return out


def test_admission_marks_running_counts_the_attempt_and_publishes(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    job_id = enqueue(client, keys, image=random_png(0))
    pubsub = client.pubsub()
    pubsub.subscribe(keys.events(job_id))
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    (admission,) = queue.admit([job_id])
    assert (admission.outcome, admission.attempts) == ("running", 1)
    assert admission.image == random_png(0)  # fetched in the same round trip
    rec = record(client, keys, job_id)
    assert rec["status"] == "running" and rec["attempts"] == "1"
    assert rec["worker"] == "in-process" and float(rec["started_at"]) > 0
    assert [e.status for e in events(pubsub)] == ["running"]


def test_admission_skips_cancelled_and_expired_jobs_and_stops_at_max_attempts(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    cancelled = enqueue(client, keys, image=random_png(0))
    cancel(client, keys, cancelled)
    gone = "0" * 32
    tired = enqueue(client, keys, image=random_png(1))
    client.hset(keys.job(tired), "attempts", 3)  # max_attempts = 3 runs already started
    outcomes = [(a.outcome, a.attempts) for a in queue.admit([cancelled, gone, tired])]
    assert outcomes == [("cancelled", 0), ("gone", 0), ("dead", 4)]
    assert record(client, keys, cancelled)["attempts"] == "0"
    assert not client.exists(keys.job(gone))


def test_completion_writes_the_result_only_while_running_and_acks(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    done, dropped = (enqueue(client, keys, image=random_png(i)) for i in range(2))
    entries = {e.entry_id for e in queue.claim(["fast"], None)}
    assert len(entries) == 2
    queue.admit([done, dropped])
    cancel(client, keys, dropped)
    stream_ids = {jid: record(client, keys, jid)["stream_id"] for jid in (done, dropped)}
    heat = np.linspace(0, 1, 12, dtype="<f4").reshape(3, 4)
    assert queue.complete("fast", stream_ids[done], done, '{"a": 1}', heat.tobytes())
    assert not queue.complete("fast", stream_ids[dropped], dropped, '{"a": 2}', heat.tobytes())
    rec = record(client, keys, done)
    assert rec["status"] == "succeeded" and rec["progress"] == "1" and "finished_at" in rec
    assert client.get(keys.result(done)) == b'{"a": 1}'
    np.testing.assert_array_equal(
        np.frombuffer(client.get(keys.heatmap(done)), "<f4").reshape(3, 4), heat
    )
    assert 0 < client.ttl(keys.result(done)) <= 600 and 0 < client.ttl(keys.heatmap(done)) <= 600
    assert record(client, keys, dropped)["status"] == "cancelled"
    assert not client.exists(keys.result(dropped)) and not client.exists(keys.heatmap(dropped))
    assert client.xpending(keys.stream("fast"), GROUP)["pending"] == 0
    assert client.xlen(keys.stream("fast")) == 0
    assert queue.in_flight() == {}


def test_failure_stores_a_problem_but_never_overwrites_a_final_status(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    failing, cancelled = (enqueue(client, keys, image=random_png(i)) for i in range(2))
    queue.admit([failing, cancelled])
    cancel(client, keys, cancelled)
    problem = {"type": "about:blank", "title": "Bad", "status": 422, "detail": "no"}
    assert queue.fail("fast", None, failing, problem)
    assert not queue.fail("fast", None, cancelled, problem)
    assert not queue.fail("fast", None, failing, {**problem, "detail": "again"})
    rec = record(client, keys, failing)
    assert rec["status"] == "failed" and json.loads(rec["error"]) == problem
    assert record(client, keys, cancelled)["status"] == "cancelled"


def test_progress_updates_running_jobs_and_never_recreates_an_expired_record(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    running, cancelled, gone = (enqueue(client, keys, image=random_png(i)) for i in range(3))
    queue.admit([running, cancelled, gone])
    cancel(client, keys, cancelled)
    client.delete(keys.job(gone))
    statuses = queue.progress([running, cancelled, gone], 3, 4)
    assert statuses == {running: "running", cancelled: "cancelled", gone: None}
    assert record(client, keys, running)["progress"] == "0.75"
    assert record(client, keys, cancelled)["progress"] == "0"
    assert not client.exists(keys.job(gone))
    assert queue.statuses([running, gone]) == {running: "running", gone: None}


def test_release_puts_an_unstarted_job_back_for_anyone(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    job_id = enqueue(client, keys, image=random_png(0))
    (entry,) = queue.claim(["fast"], None)
    new_id = queue.release("fast", entry.entry_id, entry.envelope or "", job_id)
    assert new_id != entry.entry_id and record(client, keys, job_id)["stream_id"] == new_id
    assert client.xpending(keys.stream("fast"), GROUP)["pending"] == 0
    other = make_queue(client, keys, consumer="other")
    (again,) = other.claim(["fast"], None)
    assert again.entry_id == new_id and again.envelope == entry.envelope


def test_only_entries_of_a_silent_worker_are_taken_over(client: redis.Redis, keys: Keys) -> None:
    alive = make_queue(client, keys, consumer="alive", visibility_timeout_s=0.3)
    silent = make_queue(client, keys, consumer="silent", visibility_timeout_s=0.3)
    rescuer = make_queue(client, keys, consumer="rescuer", visibility_timeout_s=0.3)
    enqueue(client, keys, image=random_png(0))
    kept = claim_one(alive)
    enqueue(client, keys, image=random_png(1))
    lost = claim_one(silent)
    for _ in range(4):
        time.sleep(0.1)
        assert alive.refresh_in_flight() == 1
    time.sleep(0.25)  # now the silent worker's entry has been idle > 0.3 s, the live one's not
    recovered = rescuer.recover("fast")
    assert [e.entry_id for e in recovered] == [lost]
    assert recovered[0].envelope is not None
    assert rescuer.in_flight() == {"fast": {lost}}
    pending = {
        p["message_id"].decode(): p
        for p in client.xpending_range(keys.stream("fast"), GROUP, "-", "+", 10)
    }
    assert pending[kept]["consumer"] == b"alive"
    assert pending[lost]["consumer"] == b"rescuer" and pending[lost]["times_delivered"] == 2


def test_claim_recreates_groups_after_the_streams_vanish(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    queue.ensure_groups(["fast", "slow"])
    client.flushall()
    assert queue.claim(["fast", "slow"], None) == []
    enqueue(client, keys, image=random_png(0))
    assert len(queue.claim(["fast", "slow"], None)) == 1


def test_announcement_expires_and_is_withdrawn(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    announcement = WorkerAnnouncement(
        worker_id="w", lanes=["fast"], device="cpu", models=[], started_at=1.0
    )
    queue.announce(announcement)
    assert WorkerAnnouncement.model_validate_json(client.get(keys.worker("w"))) == announcement
    assert 0 < client.pttl(keys.worker("w")) <= 3000
    assert client.zscore(keys.workers, "w") > time.time() - 5
    queue.withdraw("w")
    assert not client.exists(keys.worker("w")) and client.zscore(keys.workers, "w") is None


def test_metrics_histograms_are_cumulative(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    queue.record_jobs([("gradcam", "succeeded", 0.3), ("gradcam", "failed", 7.0)])
    queue.record_batch(5)
    metrics = {k.decode(): float(v) for k, v in client.hgetall(keys.metrics).items()}
    assert metrics["jobs_total:gradcam:succeeded"] == 1
    assert metrics["jobs_total:gradcam:failed"] == 1
    buckets = {
        le: metrics.get(f"job_seconds_bucket:gradcam:{le}", 0.0)
        for le in ("0.25", "0.5", "5", "10", "+Inf")
    }
    assert buckets == {"0.25": 0, "0.5": 1, "5": 1, "10": 2, "+Inf": 2}
    assert metrics["job_seconds_sum:gradcam"] == 7.3
    assert metrics["job_seconds_count:gradcam"] == 2
    assert [metrics.get(f"batch_size_bucket:{le}", 0) for le in (4, 8, 64, "+Inf")] == [0, 1, 1, 1]
    assert metrics["batch_size_sum"] == 5 and metrics["batch_size_count"] == 1


def test_a_groups_outcomes_are_written_together(
    client: redis.Redis, keys: Keys, queue: WorkerQueue
) -> None:
    ok, bad, cancelled = (enqueue(client, keys, image=random_png(i)) for i in range(3))
    entries = {e.entry_id for e in queue.claim(["fast"], None)}
    queue.admit([ok, bad, cancelled])
    cancel(client, keys, cancelled)
    ids = {j: record(client, keys, j)["stream_id"] for j in (ok, bad, cancelled)}
    assert set(ids.values()) == entries
    problem = {"type": "about:blank", "title": "Bad", "status": 422, "detail": "no"}
    written = queue.finish(
        [
            Finished("fast", ids[ok], ok, '{"ok": 1}', b"\0\0\0\0"),
            Finished("fast", ids[bad], bad, problem=problem),
            Finished("fast", ids[cancelled], cancelled, '{"ok": 2}', b"\0\0\0\0"),
        ]
    )
    assert written == [True, True, False]
    assert [record(client, keys, j)["status"] for j in (ok, bad, cancelled)] == [
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert client.xlen(keys.stream("fast")) == 0 and queue.in_flight() == {}
