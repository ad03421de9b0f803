"""Defects found by fuzzing and by hand, each fixed: deep JSON, 405's Allow, long ids, cut-off
multipart bodies, huge declared images, header floods, queued time after a takeover."""

from __future__ import annotations

import json
import time

import httpx

from app.contract.jobs import RecordField
from tests.gateway.conftest import Gateway, post_image, problem
from tests.gateway.test_bad_input import bomb_png


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_json_nested_two_thousand_deep_is_422_and_keeps_the_connection(gateway: Gateway) -> None:
    gateway.announce()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        body = '{"image": "", "params": ' + nested(2000) + "}"
        first = client.post(
            "/v1/explanations", content=body, headers={"Content-Type": "application/json"}
        )
        assert "nested" in problem(first, 422)["detail"]
        assert first.headers.get("connection") != "close"
        files = {"file": ("x.png", b"\x89PNG", "image/png")}
        second = client.post("/v1/explanations", files=files, data={"params": nested(2000)})
        assert "nested deeper than" in problem(second, 422)["detail"]
        moderate = client.post("/v1/explanations", files=files, data={"params": nested(40)})
        assert "nested deeper than 32" in problem(moderate, 422)["detail"]
        assert client.get("/healthz").status_code == 200  # same client, still served


def test_405_names_every_method_of_the_resource(gateway: Gateway) -> None:
    response = gateway.http.put("/v1/jobs/" + "0" * 32)
    problem(response, 405)
    assert set(response.headers["allow"].split(", ")) >= {"GET", "DELETE"}


def test_a_404_does_not_echo_a_huge_id(gateway: Gateway) -> None:
    body = problem(gateway.http.get("/v1/jobs/" + "f" * 10_000), 404)
    assert len(body["detail"]) < 200


def test_a_multipart_body_without_its_closing_boundary_is_400(gateway: Gateway) -> None:
    gateway.announce()
    boundary = "xplainboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="method"\r\n\r\ngradcam\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x1a\n"
        + b"0" * 500
    )  # cut off: no closing delimiter
    response = gateway.http.post(
        "/v1/explanations",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "closing boundary" in problem(response, 400)["detail"]


def test_a_small_file_declaring_36_megapixels_is_refused_before_decoding(gateway: Gateway) -> None:
    gateway.announce()
    response = post_image(gateway, bomb_png(6000, 6000))
    body = problem(response, 413)
    assert "36,000,000" in body["detail"] or "36000000" in body["detail"]


def test_headers_over_the_limit_are_431(gateway: Gateway) -> None:
    response = gateway.http.get("/healthz", headers={"X-Filler": "a" * 20_000})
    assert "headers" in problem(response, 431)["detail"]
    assert response.headers["x-request-id"]


def test_queued_time_ends_at_the_first_start(gateway: Gateway) -> None:
    gateway.announce()
    job_id = post_image(gateway, wait="0").json()["job_id"]
    created = float(gateway.redis.hget(gateway.keys.job(job_id), RecordField.created_at))
    # A first worker started it 0.1 s after creation and died; another took it over 30 s later.
    gateway.redis.hset(
        gateway.keys.job(job_id),
        mapping={
            RecordField.status: "running",
            RecordField.first_started_at: repr(created + 0.1),
            RecordField.started_at: repr(created + 30.0),
        },
    )
    timings = gateway.http.get(f"/v1/jobs/{job_id}").json()["timings"]
    assert abs(timings["queued_ms"] - 100.0) < 1.0
    assert time.time() > created  # (the record is real)
    assert json.loads(gateway.redis.hget(gateway.keys.job(job_id), RecordField.cost))["seconds"] > 0
