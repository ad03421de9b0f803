"""Health, readiness, metrics, API key, web page, problem-type docs and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import STATIC_DIR
from tests.gateway.conftest import Gateway, post_image, problem


def test_healthz_and_readyz(gateway: Gateway) -> None:
    assert gateway.http.get("/healthz").json() == {"status": "ok"}
    response = gateway.http.get("/readyz")
    assert "no live worker" in problem(response, 503)["detail"]
    assert response.headers["retry-after"]
    gateway.announce("shapes", "digits")
    ready = gateway.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "workers": 1, "models": ["digits", "shapes"]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_export_http_queue_and_worker_series(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway()
    gateway.announce()
    for _ in range(2):
        gateway.http.get("/v1/jobs/" + "0" * 32)
    assert post_image(gateway, wait="0").status_code == 202
    worker_hash = {
        "jobs_total:gradcam:succeeded": 3,
        "jobs_total:rise:failed": 1,
        "job_seconds_bucket:gradcam:0.05": 1,
        "job_seconds_bucket:gradcam:0.1": 3,
        "job_seconds_bucket:gradcam:+Inf": 3,
        "job_seconds_sum:gradcam": 0.21,
        "job_seconds_count:gradcam": 3,
        "batch_size_bucket:1": 1,
        "batch_size_bucket:2": 2,
        "batch_size_bucket:+Inf": 2,
        "batch_size_sum": 3,
        "batch_size_count": 2,
    }
    gateway.redis.hset(gateway.keys.metrics, mapping=worker_hash)
    response = gateway.http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404"))
    assert values[("xplain_http_requests_total", route)] == 2
    latency = (("method", "GET"), ("route", "/v1/jobs/{job_id}"))
    assert values[("xplain_http_request_duration_seconds_count", latency)] == 2
    assert values[("xplain_queue_depth", (("lane", "fast"),))] == 1
    assert values[("xplain_queue_depth", (("lane", "slow"),))] == 0
    assert values[("xplain_workers_live", ())] == 1 and values[("xplain_redis_up", ())] == 1
    jobs = (("method", "gradcam"), ("status", "succeeded"))
    assert values[("xplain_jobs_total", jobs)] == 3
    assert values[("xplain_job_seconds_bucket", (("le", "0.05"), ("method", "gradcam")))] == 1
    assert values[("xplain_job_seconds_count", (("method", "gradcam"),))] == 3
    assert values[("xplain_job_seconds_sum", (("method", "gradcam"),))] == pytest.approx(0.21)
    assert values[("xplain_batch_size_bucket", (("le", "2.0"),))] == 2
    assert values[("xplain_batch_size_sum", ())] == 3


def test_an_enqueue_without_its_replicas_is_counted(
    make_gateway: Callable[..., Gateway],
) -> None:
    # The test Redis has no replica: WAIT 1 times out, the job is still queued, and the
    # shortfall shows in the metrics (an operator's alert that acknowledged jobs are at risk).
    gateway = make_gateway(redis_wait_replicas=1, redis_wait_timeout_ms=20)
    gateway.announce()
    before = samples(gateway.http.get("/metrics").text)
    assert before[("xplain_redis_replica_shortfalls_total", ())] == 0
    assert post_image(gateway, wait="0").status_code == 202
    after = samples(gateway.http.get("/metrics").text)
    assert after[("xplain_redis_replica_shortfalls_total", ())] == 1
    assert after[("xplain_queue_depth", (("lane", "fast"),))] == 1


def test_api_key_guards_v1_only(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(api_key="s3cret")
    missing = gateway.http.get("/v1/methods")
    assert "X-API-Key" in problem(missing, 401)["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert (
        "wrong"
        in problem(gateway.http.get("/v1/models", headers={"X-API-Key": "no"}), 401)["detail"]
    )
    assert gateway.http.get("/v1/methods", headers={"X-API-Key": "s3cret"}).status_code == 200
    bearer = {"Authorization": "Bearer s3cret"}
    assert gateway.http.get("/v1/models", headers=bearer).status_code == 200
    problem(post_image(gateway), 401)
    for path in ("/healthz", "/metrics", "/openapi.json", "/"):
        assert gateway.http.get(path).status_code == 200


def test_web_page_and_static_assets(gateway: Gateway) -> None:
    page = gateway.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    index = STATIC_DIR / "index.html"
    if index.is_file():
        assert page.content == index.read_bytes()
        assets = [p for p in STATIC_DIR.iterdir() if p.is_file()]
        for asset in assets:
            assert gateway.http.get(f"/static/{asset.name}").content == asset.read_bytes()
    else:
        assert "/docs" in page.text


def test_problem_types_are_documented(gateway: Gateway) -> None:
    doc = gateway.http.get("/problems/queue-full").json()
    assert doc["status"] == 503 and doc["type"] == "/problems/queue-full"
    problem(gateway.http.get("/problems/nope"), 404)


def test_openapi_documents_both_bodies_and_every_field(gateway: Gateway) -> None:
    spec = gateway.http.get("/openapi.json").json()
    post = spec["paths"]["/v1/explanations"]["post"]
    content = post["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "application/problem+json" in post["responses"]["422"]["content"]
    assert "image/png" in post["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    ours = [
        "Job", "Heatmap", "Timings", "TargetOut", "ImageSize", "JobLinks", "ModelOut",
        "ModelList", "MethodOut", "MethodCatalog", "ProblemDetail", "Readiness", "Health",
    ]  # fmt: skip
    for name in ours:
        for field, schema in schemas[name]["properties"].items():
            assert schema.get("description"), f"{name}.{field} has no description"
