"""The HTTP API of DESIGN.md served by the real gateway and a real worker process."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from app.contract.keys import GROUP
from tests.e2e.conftest import Service
from tests.worker.support import png, wait_for
from workers.explainers import get_explainer
from workers.explainers.postprocess import normalise
from workers.handler import decode_image, preprocess

LONG = {"window": 8, "stride": 2, "max_batch_size": 1}
"""169 forward passes of the 20 ms test model: several seconds."""


def noise(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, size=(height, width, 3)))


def submit(
    service: Service,
    image: bytes,
    *,
    method: str = "gradcam",
    model: str = "tiny",
    params: dict[str, Any] | None = None,
    wait: float | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    data = {"method": method, "model": model}
    if params:
        data["params"] = json.dumps(params)
    if wait is not None:
        data["wait"] = str(wait)
    files = {"file": ("upload.png", image, "image/png")}
    return service.http.post("/v1/explanations", data=data, files=files, headers=headers or {})


def poll(service: Service, location: str, statuses: set[str], timeout: float = 30) -> dict:
    def reached() -> dict | None:
        body = service.http.get(location).json()
        return body if body["status"] in statuses else None

    return wait_for(reached, timeout, f"{location} to reach {sorted(statuses)}", interval=0.05)


def test_an_upload_comes_back_as_a_png_of_the_uploads_size(live: Service) -> None:
    response = submit(live, noise(50, 30), wait=30, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (50, 30)


def test_an_async_job_is_polled_to_the_same_result_as_in_process(live: Service) -> None:
    upload = noise(40, 40, seed=3)
    response = submit(live, upload, wait=0)
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    body = poll(live, location, {"succeeded", "failed"})
    assert body["status"] == "succeeded", body
    assert body["heatmap"]["width"] == 32 and body["heatmap"]["height"] == 32
    assert 1 <= len(body["predictions"]) <= 5
    assert body["target"]["index"] == body["predictions"][0]["index"]
    timings = body["timings"]
    assert timings["total_ms"] >= timings["queued_ms"] >= 0 and timings["compute_ms"] > 0

    # The same explanation computed here, from the same models.toml, matches the service's.
    from workers.zoo import load_models

    handle = load_models(str(live.log_dir / "models.toml"), torch.device("cpu"))["tiny"]
    x = preprocess(decode_image(upload), handle)[None]
    target = handle.evaluate(x).argmax(dim=1)
    assert int(target) == body["target"]["index"]
    expected = normalise(get_explainer("gradcam")(handle, x, target).saliency)[0].numpy()
    np.testing.assert_allclose(np.array(body["heatmap"]["data"]), expected, atol=1e-3)


def test_events_stream_progress_then_the_final_status(live: Service) -> None:
    params = {"window": 8, "stride": 4, "max_batch_size": 2}
    response = submit(
        live, noise(32, 32, 1), method="occlusion", model="tiny_slow", params=params, wait=0
    )
    assert response.status_code == 202, response.text
    events: list[tuple[str, dict]] = []
    with live.http.stream("GET", response.headers["location"] + "/events") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind:
                events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "status"
    progress = [data["progress"] for kind, data in events if kind == "progress"]
    assert len(progress) >= 2 and progress == sorted(progress) and 0 < progress[-1] <= 1
    assert events[-1][1]["status"] == "succeeded"


def test_a_running_job_is_cancelled_and_never_gets_a_result(live: Service) -> None:
    response = submit(
        live, noise(32, 32, 2), method="occlusion", model="tiny_slow", params=LONG, wait=0
    )
    location = response.headers["location"]
    job_id = location.rsplit("/", 1)[1]
    poll(live, location, {"running"})
    cancelled = live.http.delete(location)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert live.http.delete(location).status_code == 409
    # The worker notices at its next progress call and drops the job without a result.
    wait_for(
        lambda: live.redis.xpending(live.keys.stream("slow"), GROUP)["pending"] == 0,
        10,
        "the worker to drop the job",
    )
    assert not live.redis.exists(live.keys.result(job_id))
    assert live.http.get(location).json()["status"] == "cancelled"
    assert live.http.get(location + "/heatmap.png").status_code == 409


def test_a_job_survives_its_worker_being_killed(live: Service) -> None:
    params = {"window": 8, "stride": 4, "max_batch_size": 1}
    response = submit(
        live, noise(32, 32, 5), method="occlusion", model="tiny_slow", params=params, wait=0
    )
    location = response.headers["location"]
    poll(live, location, {"running"})
    assert live.worker is not None
    live.worker.kill()  # SIGKILL mid-job
    live.worker.wait(timeout=10)
    killed_at = time.time()
    restarted = live.start_worker()
    body = poll(live, location, {"succeeded", "failed"}, timeout=60)
    assert body["status"] == "succeeded", body
    assert body["meta"]["worker"] == restarted
    assert body["started_at"] is not None
    record = live.redis.hgetall(live.keys.job(location.rsplit("/", 1)[1]))
    assert record[b"attempts"] == b"2"
    assert float(record[b"started_at"]) - killed_at > 1.0  # after the visibility timeout
