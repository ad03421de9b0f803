"""POST /v1/explanations: synchronous and asynchronous answers, JSON and multipart, PNG."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
from PIL import Image

from app.contract.jobs import JobStatus
from tests.gateway.conftest import Gateway, png_bytes, post_image, problem
from tests.gateway.fakes import announce, envelope_of, model_info, ramp, write_success


def test_sync_multipart_returns_the_result_with_the_heatmap(gateway: Gateway) -> None:
    worker = gateway.worker()
    response = post_image(
        gateway, png_bytes(40, 30), target="square", evaluate="deletion,insertion", wait="5"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    job_id = body["job_id"]
    assert response.headers["content-location"] == f"/v1/jobs/{job_id}"
    assert body["status"] == "succeeded" and body["progress"] == 1.0
    assert (body["model"], body["method"]) == ("shapes", "gradcam")
    assert body["params"] == {"layer": None}  # effective: defaults filled in
    assert body["target"] == {"index": 1, "label": "square", "score": 0.7}
    assert [p["index"] for p in body["predictions"]] == [1, 2, 0]
    assert body["image"] == {"width": 40, "height": 30}
    assert body["evaluation"] == {"deletion": 0.5, "insertion": 0.5}
    assert body["meta"]["layer"] == "features.4" and body["meta"]["group_size"] == 1
    heatmap = body["heatmap"]
    assert (heatmap["width"], heatmap["height"]) == (8, 8)
    expected = np.round(ramp(8, 8).astype(np.float64), 4).tolist()
    assert heatmap["data"] == expected
    assert all(v == round(v, 4) for row in heatmap["data"] for v in row)
    timings = body["timings"]
    assert timings["compute_ms"] == 12.5
    assert 0 <= timings["queued_ms"] <= timings["total_ms"] < 5000
    # what the worker got: the resolved target and evaluations, and an RGB PNG of the upload
    [claimed] = worker.claimed
    assert claimed.envelope.target == 1
    assert claimed.envelope.evaluate == ["deletion", "insertion"]
    assert claimed.envelope.lane == "fast"
    assert claimed.image.format == "PNG" and claimed.image.mode == "RGB"
    assert claimed.image.size == (40, 30)
    assert claimed.image.getpixel((3, 3)) == (200, 30, 30)


def test_json_body_with_base64_data_url(gateway: Gateway) -> None:
    gateway.worker()
    image = "data:image/png;base64," + base64.b64encode(png_bytes(16, 16)).decode()
    body = {"image": image, "model": "shapes", "target": 2, "params": {"layer": "features.0"}}
    response = gateway.http.post("/v1/explanations", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["params"] == {"layer": "features.0"}
    assert result["target"]["index"] == 2 and result["image"] == {"width": 16, "height": 16}


def test_wait_zero_answers_202_and_the_job_resource_follows(gateway: Gateway) -> None:
    gateway.announce()
    response = post_image(gateway, wait="0", params='{"layer": "features.0"}')
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert job["status"] == "queued" and job["heatmap"] is None
    assert job["params"] == {"layer": "features.0"} and job["requested_target"] is None
    assert job["links"]["heatmap_png"] == f"/v1/jobs/{job['job_id']}/heatmap.png"

    polled = gateway.http.get(response.headers["location"]).json()
    assert polled["status"] == "queued" and polled["timings"]["compute_ms"] is None

    envelope = envelope_of(gateway.redis, gateway.keys, job["job_id"])
    assert envelope.params == {"layer": "features.0"}
    write_success(gateway.redis, gateway.keys, envelope, model_info())
    done = gateway.http.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["status"] == "succeeded" and len(done["heatmap"]["data"]) == 8
    slim = gateway.http.get(f"/v1/jobs/{job['job_id']}", params={"heatmap_data": "false"})
    assert slim.json()["heatmap"] == {"width": 8, "height": 8, "data": None}


def test_prefer_respond_async_answers_202(gateway: Gateway) -> None:
    gateway.announce()
    response = post_image(gateway, headers={"Prefer": "respond-async"})
    assert response.status_code == 202


def test_wait_expires_into_202_while_the_worker_holds_the_job(gateway: Gateway) -> None:
    gateway.worker(behaviour="hold")
    start = time.monotonic()
    response = post_image(gateway, wait="0.4")
    elapsed = time.monotonic() - start
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert 0.35 < elapsed < 3


def test_accept_png_returns_the_heatmap_at_the_upload_size(gateway: Gateway) -> None:
    gateway.worker()
    response = post_image(
        gateway,
        png_bytes(50, 20),
        headers={"Accept": "image/png"},
        query={"style": "gray"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (50, 20) and image.mode == "L"
    pixels = np.asarray(image)
    assert pixels[0, 0] < 20 and pixels[-1, -1] > 235  # the ramp runs from 0 to 1


def test_a_failed_job_answers_its_problem(gateway: Gateway) -> None:
    gateway.worker(behaviour="fail")
    response = post_image(gateway)
    body = problem(response, 422)
    assert body["detail"] == "bad layer"
    assert body["job"] == f"/v1/jobs/{body['job_id']}"
    job = gateway.http.get(body["job"]).json()
    assert job["status"] == JobStatus.failed and job["error"]["detail"] == "bad layer"


def test_progress_events_do_not_end_the_wait(gateway: Gateway) -> None:
    gateway.worker(progress_steps=4)
    response = post_image(gateway)
    assert response.status_code == 200 and response.json()["status"] == "succeeded"


def test_evaluate_inside_params_is_moved_to_the_job(gateway: Gateway) -> None:
    worker = gateway.worker()
    params = json.dumps({"evaluate": ["insertion"], "layer": "features.0"})
    response = post_image(gateway, params=params)
    assert response.status_code == 200, response.text
    assert worker.claimed[0].envelope.evaluate == ["insertion"]
    assert worker.claimed[0].envelope.params == {"layer": "features.0"}


def test_parameters_can_move_a_job_to_the_slow_lane(gateway: Gateway) -> None:
    worker = gateway.worker()
    cheap = post_image(gateway, method="gradual_extrapolation", wait="5")
    costly = post_image(
        gateway, method="gradual_extrapolation", params='{"base": "scorecam"}', wait="5"
    )
    assert cheap.status_code == 200 and costly.status_code == 200, costly.text
    lanes = {c.envelope.params["base"]: c.envelope.lane for c in worker.claimed}
    assert lanes == {"gradcam": "fast", "scorecam": "slow"}


def test_a_method_the_model_cannot_run_is_refused_before_queueing(gateway: Gateway) -> None:
    reason = "LRP: activation 'features.1' (Sigmoid) is not supported"
    refused = {"lrp": reason, "gradcam": "no spatial layer"}
    announce(gateway.redis, gateway.keys, [model_info(unsupported=refused)])
    listed = gateway.http.get("/v1/models").json()["models"][0]
    assert listed["unsupported"]["lrp"] == reason
    body = problem(post_image(gateway, method="lrp", wait="0"), 422)
    assert "cannot run on model 'shapes'" in body["detail"] and "Sigmoid" in body["detail"]
    problem(post_image(gateway, method="gradcam", wait="0"), 422)
    # A layer-based method still runs with an explicit layer.
    layer = json.dumps({"layer": "features.0"})
    named = post_image(gateway, method="gradcam", wait="0", params=layer)
    assert named.status_code == 202, named.text
    assert gateway.redis.xlen(gateway.keys.stream("fast")) == 1
