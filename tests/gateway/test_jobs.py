"""The job resource: GET, heatmap.png, server-sent events, DELETE."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.contract.jobs import JobStatus
from app.render import ALPHA_MIN, TURBO_LUT
from tests.gateway.conftest import Gateway, png_bytes, post_image, problem
from tests.gateway.fakes import (
    envelope_of,
    model_info,
    publish_progress,
    start_running,
    write_success,
)


def queued_job(gateway: Gateway, image: bytes | None = None) -> str:
    gateway.announce()
    response = post_image(gateway, image, wait="0")
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def succeed(gateway: Gateway, job_id: str, heatmap: np.ndarray | None = None) -> None:
    envelope = envelope_of(gateway.redis, gateway.keys, job_id)
    write_success(gateway.redis, gateway.keys, envelope, model_info(), heatmap)


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "x" * 32 + ":image"])
def test_unknown_job_is_404(gateway: Gateway, job_id: str) -> None:
    for path in ("", "/heatmap.png", "/events"):
        body = problem(gateway.http.get(f"/v1/jobs/{job_id}{path}"), 404)
        assert body["type"] == "/problems/unknown-job"
    problem(gateway.http.delete(f"/v1/jobs/{job_id}"), 404)


def test_heatmap_png_is_409_until_the_job_succeeded(gateway: Gateway) -> None:
    job_id = queued_job(gateway)
    body = problem(gateway.http.get(f"/v1/jobs/{job_id}/heatmap.png"), 409)
    assert "queued" in body["detail"] and body["job_status"] == "queued"


def test_heatmap_png_gray_is_the_map_at_the_upload_size(gateway: Gateway) -> None:
    job_id = queued_job(gateway, png_bytes(8, 8))
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    succeed(gateway, job_id, values)
    response = gateway.http.get(f"/v1/jobs/{job_id}/heatmap.png", params={"style": "gray"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    gray = np.asarray(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(gray, np.rint(values * 255).astype(np.uint8))


def test_heatmap_png_resizes_to_the_upload_for_every_style(gateway: Gateway) -> None:
    job_id = queued_job(gateway, png_bytes(64, 24, color=(10, 200, 90)))
    values = np.zeros((8, 8), np.float32)
    values[:, :4] = 1.0  # the left half matters
    succeed(gateway, job_id, values)
    images = {}
    for style in ("overlay", "heatmap", "gray"):
        response = gateway.http.get(f"/v1/jobs/{job_id}/heatmap.png", params={"style": style})
        assert response.status_code == 200
        images[style] = np.asarray(Image.open(io.BytesIO(response.content)))
        assert images[style].shape[:2] == (24, 64)
    gray = images["gray"]
    assert (gray[:, :24] == 255).all() and (gray[:, 40:] == 0).all()
    np.testing.assert_array_equal(images["heatmap"][:, 0], np.tile(TURBO_LUT[255], (24, 1)))
    np.testing.assert_array_equal(images["heatmap"][:, -1], np.tile(TURBO_LUT[0], (24, 1)))
    # overlay where the map is 0: the image mostly, tinted by the colour of 0 at ALPHA_MIN
    expected = np.rint(np.array([10, 200, 90]) * (1 - ALPHA_MIN) + TURBO_LUT[0] * ALPHA_MIN)
    np.testing.assert_array_equal(images["overlay"][5, -1], expected.astype(np.uint8))
    problem(gateway.http.get(f"/v1/jobs/{job_id}/heatmap.png", params={"style": "jet"}), 422)


def read_events(gateway: Gateway, job_id: str, out: list[tuple[str, Any]]) -> None:
    """Collect (event, data) pairs and comments of an SSE stream until it closes."""
    with gateway.http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith(":"):
                out.append(("comment", line))
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((str(event), json.loads(line.removeprefix("data: "))))


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_events_stream_state_progress_then_final_status(gateway: Gateway) -> None:
    job_id = queued_job(gateway)
    events: list[tuple[str, Any]] = []
    reader = threading.Thread(target=read_events, args=(gateway, job_id, events))
    reader.start()
    wait_for(lambda: any(name == "state" for name, _ in events))
    start_running(gateway.redis, gateway.keys, job_id)
    for done in (1, 2, 3):
        publish_progress(gateway.redis, gateway.keys, job_id, done, 4)
    time.sleep(0.5)  # > keep-alive interval of the test gateway (0.2 s)
    succeed(gateway, job_id)
    reader.join(timeout=5)
    assert not reader.is_alive(), "the stream did not close after the final status"
    names = [name for name, _ in events]
    assert names[0] == "state" and events[0][1]["status"] == "queued"
    assert names[-1] == "status" and events[-1][1]["status"] == "succeeded"
    assert events[-1][1]["heatmap"] == {"width": 8, "height": 8, "data": None}
    progress = [data["progress"] for name, data in events if name == "progress"]
    assert progress[-3:] == [0.25, 0.5, 0.75]
    assert ("comment", ": keep-alive") in events


def test_events_of_a_finished_job_close_at_once(gateway: Gateway) -> None:
    job_id = queued_job(gateway)
    succeed(gateway, job_id)
    events: list[tuple[str, Any]] = []
    read_events(gateway, job_id, events)
    assert [name for name, _ in events] == ["state", "status"]


def test_delete_cancels_a_queued_job_and_publishes_the_event(gateway: Gateway) -> None:
    job_id = queued_job(gateway)
    pubsub = gateway.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(gateway.keys.events(job_id))
    response = gateway.http.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    record = gateway.redis.hgetall(gateway.keys.job(job_id))
    assert record[b"status"] == b"cancelled" and record[b"cancel_requested"] == b"1"
    message = None
    deadline = time.monotonic() + 2
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)  # None for the subscription reply
    assert message is not None and json.loads(message["data"])["status"] == "cancelled"
    pubsub.close()
    again = problem(gateway.http.delete(f"/v1/jobs/{job_id}"), 409)
    assert again["job_status"] == "cancelled"


def test_delete_of_a_succeeded_job_is_409(gateway: Gateway) -> None:
    job_id = queued_job(gateway)
    succeed(gateway, job_id)
    body = problem(gateway.http.delete(f"/v1/jobs/{job_id}"), 409)
    assert body["type"] == "/problems/job-state-conflict"
    assert gateway.http.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.succeeded


def test_cancel_wakes_a_waiting_request(gateway: Gateway) -> None:
    gateway.worker(behaviour="hold")
    answers: list[Any] = []
    poster = threading.Thread(target=lambda: answers.append(post_image(gateway, wait="5")))
    poster.start()
    wait_for(lambda: gateway.redis.zcard(gateway.keys.workers) and _running_job(gateway))
    start = time.monotonic()
    assert gateway.http.delete(f"/v1/jobs/{_running_job(gateway)}").status_code == 200
    poster.join(timeout=5)
    assert time.monotonic() - start < 2
    body = problem(answers[0], 409)
    assert body["type"] == "/problems/job-cancelled"


def _running_job(gateway: Gateway) -> str | None:
    for key in gateway.redis.scan_iter(match=gateway.keys.job("*")):
        if key.count(b":") == 2 and gateway.redis.hget(key, "status") == b"running":
            return key.decode().rsplit(":", 1)[1]
    return None
