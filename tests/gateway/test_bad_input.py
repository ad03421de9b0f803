"""Bad input is refused with a clear problem+json before it can reach a worker."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from tests.gateway.conftest import Gateway, png_bytes, post_image, problem
from tests.gateway.fakes import envelope_of


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress (so its size follows its pixel count)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


# --- the image --------------------------------------------------------------------------------


def test_undecodable_bytes_are_400(gateway: Gateway) -> None:
    gateway.announce()
    body = problem(post_image(gateway, b"\x00\x01 certainly not an image"), 400)
    assert body["type"] == "/problems/invalid-image" and "supported format" in body["detail"]


def test_truncated_png_is_400(gateway: Gateway) -> None:
    gateway.announce()
    data = noise_png(64, 64)
    body = problem(post_image(gateway, data[: len(data) // 2]), 400)
    assert "truncated" in body["detail"]


def test_zero_byte_upload_is_400(gateway: Gateway) -> None:
    gateway.announce()
    body = problem(post_image(gateway, b""), 400)
    assert "empty" in body["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/pdf", "image/svg+xml"])
def test_non_image_content_type_is_415(gateway: Gateway, content_type: str) -> None:
    gateway.announce()
    body = problem(post_image(gateway, b"hello", content_type=content_type), 415)
    assert content_type in body["detail"]


def test_a_body_that_is_neither_form_nor_json_is_415(gateway: Gateway) -> None:
    response = gateway.http.post(
        "/v1/explanations", content=png_bytes(), headers={"Content-Type": "text/plain"}
    )
    assert "multipart/form-data" in problem(response, 415)["detail"]


def test_upload_over_the_limit_is_413_by_content_length(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(max_upload_bytes=10_000)
    gateway.announce()
    huge = b"\x00" * 400_000
    body = problem(post_image(gateway, huge), 413)
    assert body["max_upload_bytes"] == 10_000 and "10,000" in body["detail"]


def test_json_upload_over_the_limit_is_413(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(max_upload_bytes=10_000)
    gateway.announce()
    image = base64.b64encode(noise_png(80, 80)).decode()  # ~19 kB decoded
    response = gateway.http.post("/v1/explanations", json={"image": image})
    assert "10,000 bytes" in problem(response, 413)["detail"]


def _multipart(data: bytes, boundary: str = "xplainboundary") -> tuple[list[bytes], str]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    parts = [head, *(data[i : i + 8192] for i in range(0, len(data), 8192))]
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return parts, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("size", [40_000, 600_000])
def test_upload_over_the_limit_is_413_without_content_length(
    make_gateway: Callable[..., Gateway], size: int
) -> None:
    """Chunked bodies: the file check (40 kB) and the streaming body cap (600 kB)."""
    gateway = make_gateway(max_upload_bytes=10_000)
    gateway.announce()
    parts, content_type = _multipart(b"\x00" * size)

    def body() -> Iterator[bytes]:
        yield from parts

    response = gateway.http.post(
        "/v1/explanations", content=body(), headers={"Content-Type": content_type}
    )
    problem(response, 413)


@pytest.mark.parametrize("side", [30_000, 8_000])
def test_decompression_bomb_is_413_before_decoding(gateway: Gateway, side: int) -> None:
    gateway.announce()
    start = time.monotonic()
    body = problem(post_image(gateway, bomb_png(side, side)), 413)
    assert time.monotonic() - start < 2
    assert "pixels" in body["detail"]


def test_pixel_limit_follows_the_setting(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(max_image_pixels=1_000)
    gateway.announce()
    body = problem(post_image(gateway, png_bytes(40, 30)), 413)
    assert "40x30 = 1,200 pixels" in body["detail"]


def test_invalid_base64_is_400(gateway: Gateway) -> None:
    gateway.announce()
    response = gateway.http.post("/v1/explanations", json={"image": "%%% not base64 %%%"})
    assert "base64" in problem(response, 400)["detail"]


def test_grayscale_upload_is_converted_not_refused(gateway: Gateway) -> None:
    gateway.announce()
    response = post_image(gateway, png_bytes(12, 10, mode="L", color=77), wait="0")
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    stored = Image.open(io.BytesIO(gateway.redis.get(gateway.keys.image(job_id))))
    assert stored.mode == "RGB" and stored.size == (12, 10)
    assert stored.getpixel((0, 0)) == (77, 77, 77)


# --- the fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "needle"),
    [
        ({"method": "gradcamm"}, 422, "did you mean 'gradcam'"),
        ({"model": "resnet"}, 422, "unknown model 'resnet'"),
        ({"params": '{"layer": "nope"}'}, 422, "'nope' is not a layer of model 'shapes'"),
        ({"params": '{"lyr": "features.0"}'}, 422, "the parameters of gradcam are: layer"),
        ({"params": "[1, 2]"}, 422, "must be a JSON object"),
        ({"params": "{not json"}, 422, "not valid JSON"),
        ({"target": "3"}, 422, "target 3 is out of range"),
        ({"target": "-1"}, 422, "out of range"),
        ({"target": "circle"}, 422, "unknown class label 'circle'"),
        ({"evaluate": "deletion,roc"}, 422, "unknown evaluation(s) 'roc'"),
        ({"wait": "-1"}, 422, "wait"),
        ({"wait": "soon"}, 422, "wait"),
        ({"window": "16"}, 422, "unknown form field(s) window"),
    ],
)
def test_invalid_fields_are_422(
    gateway: Gateway, fields: dict[str, str], status: int, needle: str
) -> None:
    gateway.announce()
    body = problem(post_image(gateway, **fields), status)
    assert needle in body["detail"]
    assert body["type"] == "/problems/invalid-request"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ('{"window": NaN, "stride": 2}', "params.window: Input should be a finite number"),
        ('{"window": 0}', "params.window: Input should be greater than or equal to 1"),
        ('{"window": 4, "fill": "pink"}', "params.fill"),
        ('{"window": 32}', "window 32 is larger than the model input (8, 8)"),
    ],
)
def test_bad_method_parameters_are_422(gateway: Gateway, params: str, needle: str) -> None:
    gateway.announce()
    body = problem(post_image(gateway, method="occlusion", params=params), 422)
    assert needle in body["detail"]


def test_valid_slow_job_goes_to_the_slow_lane_with_defaults(gateway: Gateway) -> None:
    gateway.announce()
    response = post_image(
        gateway, method="occlusion", params='{"window": 4, "stride": 2}', target="SQUARE", wait="0"
    )
    assert response.status_code == 202, response.text
    envelope = envelope_of(gateway.redis, gateway.keys, response.json()["job_id"])
    assert envelope.lane == "slow" and envelope.target == 1
    assert envelope.params["window"] == 4 and envelope.params["fill"] == "zero"
    assert "max_batch_size" in envelope.params


def test_missing_file_and_json_errors(gateway: Gateway) -> None:
    gateway.announce()
    missing = gateway.http.post("/v1/explanations", files={"method": (None, "gradcam")})
    assert "send it in the form field `file`" in problem(missing, 422)["detail"]
    response = gateway.http.post("/v1/explanations", files={"other": ("a", b"x")})
    problem(response, 422)
    image = base64.b64encode(png_bytes()).decode()
    extra = gateway.http.post("/v1/explanations", json={"image": image, "colour": "red"})
    assert "colour: Extra inputs are not permitted" in problem(extra, 422)["detail"]
    boolean = gateway.http.post("/v1/explanations", json={"image": image, "target": True})
    assert problem(boolean, 422)["errors"]
    broken = gateway.http.post(
        "/v1/explanations", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in problem(broken, 422)["detail"]


def test_model_must_be_named_when_several_are_served(gateway: Gateway) -> None:
    gateway.announce("shapes", "digits")
    body = problem(post_image(gateway), 422)
    assert "several models are served (digits, shapes)" in body["detail"]


# --- capacity ---------------------------------------------------------------------------------


def test_queue_full_is_503_with_retry_after(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(max_queue_depth=2)
    gateway.announce()
    for _ in range(2):
        assert post_image(gateway, wait="0").status_code == 202
    response = post_image(gateway, wait="0")
    body = problem(response, 503)
    assert body["type"] == "/problems/queue-full"
    assert int(response.headers["retry-after"]) >= 1
    assert gateway.redis.xlen(gateway.keys.stream("fast")) == 2


def test_retry_after_of_a_full_lane_comes_from_its_backlog_of_work(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(max_queue_depth=3)
    gateway.announce()  # forward 1 ms per image: RISE with n masks costs (n + 1) ms
    for masks in (19_999, 39_999, 59_999):  # 20 s, 40 s and 60 s of estimated work
        params = json.dumps({"n_masks": masks})
        assert post_image(gateway, method="rise", params=params, wait="0").status_code == 202
    response = post_image(gateway, method="rise", params='{"n_masks": 100}', wait="0")
    body = problem(response, 503)
    # One job must finish before there is room: the lane's mean 40 s per job, one worker.
    assert response.headers["retry-after"] == "40" and body["retry_after"] == 40
    assert "about 120 s of estimated work" in body["detail"]


def test_a_job_over_the_cost_cap_is_refused_before_queueing(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(max_job_cost=30.0)
    gateway.announce()  # forward 1 ms, forward + backward 3 ms per image
    response = post_image(gateway, method="rise", params='{"n_masks": 40000}', wait="0")
    body = problem(response, 422)
    assert body["type"] == "/problems/job-too-costly"
    assert body["cost"] == {"forward_passes": 40001, "backward_passes": 0, "seconds": 40.001}
    assert body["max_cost"] == 30.0
    assert "40.0 s of worker compute (40001 forward passes)" in body["detail"]
    assert "XPLAIN_MAX_JOB_COST" in body["detail"]
    assert gateway.redis.xlen(gateway.keys.stream("slow")) == 0
    # Just under the cap, with the metrics it asks for: queued, its cost on the job.
    params = json.dumps({"n_masks": 9000})
    accepted = post_image(gateway, method="rise", params=params, evaluate="deletion", wait="0")
    assert accepted.status_code == 202, accepted.text
    cost = gateway.http.get(accepted.headers["location"]).json()["cost"]
    assert cost == {"forward_passes": 9001 + 65, "backward_passes": 0, "seconds": 9.066}


def test_no_worker_is_503_with_retry_after(gateway: Gateway) -> None:
    response = post_image(gateway)
    body = problem(response, 503)
    assert body["type"] == "/problems/no-worker" and "no worker is running" in body["detail"]
    assert int(response.headers["retry-after"]) >= 1


def test_a_model_whose_workers_died_is_503_not_422(gateway: Gateway) -> None:
    gateway.announce("shapes", worker_id="short", ttl_s=0.3)
    gateway.announce("digits", worker_id="long")
    assert post_image(gateway, model="shapes", wait="0").status_code == 202
    time.sleep(1.1)  # past the key's TTL and the gateway's 1 s cache of the live workers
    response = post_image(gateway, model="shapes", wait="0")
    assert problem(response, 503)["detail"] == "no live worker serves model 'shapes' right now"
    assert "retry-after" in response.headers
    assert gateway.redis.zrange(gateway.keys.workers, 0, -1) == [b"long"]  # pruned


def test_a_lane_nobody_serves_is_503(gateway: Gateway) -> None:
    gateway.announce(lanes=["fast"])
    response = post_image(gateway, method="occlusion", params='{"window": 4}')
    assert "slow-lane" in problem(response, 503)["detail"]


# --- FastAPI's own errors ---------------------------------------------------------------------


def test_framework_errors_are_problems_too(gateway: Gateway) -> None:
    body = problem(gateway.http.get("/v1/jobs/" + "0" * 32, params={"heatmap_data": "maybe"}), 422)
    assert body["errors"][0]["loc"] == ["query", "heatmap_data"]
    assert problem(gateway.http.get("/v1/nothing"), 404)["type"] == "about:blank"
    response = gateway.http.put("/v1/explanations")
    assert "PUT is not allowed" in problem(response, 405)["detail"]
    assert response.headers["allow"] == "POST"
