"""Many clients sharing the service, through two real gateway processes (``python -m app``) on
the shared Redis and worker: keys as identities, job ownership, revocation, per-key rate limit
(held across both gateways), active-job quota, cost cap and models, CORS, webhooks with
signatures and retries, idempotency, reuse of identical work, request ids, offline docs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from app.identity import key_digest
from tests.conftest import free_port
from tests.e2e.conftest import Service
from tests.e2e.test_http import noise
from tests.e2e.test_web import browser, picture, tick_only  # noqa: F401 - the browser fixture
from tests.worker.support import REPO, wait_for

KEYS = {name: f"xpl_test_{name}_{'x' * 20}" for name in ("alice", "bob", "carol", "dave")}
ALICE_SECRET = "alice-webhook-secret-0123456789"
ORIGIN = "https://app.example.com"


@dataclass
class Receiver:
    """A local HTTP server that records webhook calls; the first ``fail_first`` get a 500."""

    port: int
    fail_first: int = 1
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(receiver.calls) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@dataclass
class Gateways:
    """Two gateway processes sharing the e2e Redis, worker and a keys file."""

    urls: list[str]
    keys_file: Path
    receiver: Receiver
    env: dict[str, str]

    def client(self, index: int = 0, key: str | None = None, **headers: str) -> httpx.Client:
        if key is not None:
            headers["X-API-Key"] = KEYS.get(key, key)
        return httpx.Client(base_url=self.urls[index], timeout=30, headers=headers)


def keys_toml() -> str:
    entries = [
        {"name": "alice", "rate_per_minute": 3, "webhook_secret": ALICE_SECRET},
        {"name": "bob", "max_active_jobs": 1},
        {"name": "carol", "models": ["tiny"], "max_job_cost": 0.05},
        {"name": "dave"},
    ]
    blocks = []
    for entry in entries:
        lines = ["[[keys]]", f'sha256 = "{key_digest(KEYS[entry["name"]])}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def gateways(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    workdir = tmp_path_factory.mktemp("clients")
    keys_file = workdir / "keys.toml"
    keys_file.write_text(keys_toml())
    receiver = Receiver(free_port())
    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), receiver.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **service.worker_env,
        "XPLAIN_KEYS_FILE": str(keys_file),
        "XPLAIN_CORS_ORIGINS": ORIGIN,
        "XPLAIN_WEBHOOK_HOSTS": f"127.0.0.1:{receiver.port}",
        "XPLAIN_WEBHOOK_SECRET": "global-webhook-secret-0123456789",
    }
    processes, urls = [], []
    for index in range(2):
        port = free_port()
        log = (workdir / f"gateway{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "app", "--port", str(port)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_for(lambda url=url: _ready(url), 60, f"gateway {url}")
        yield Gateways(urls, keys_file, receiver, env)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
        server.shutdown()
        for log in sorted(workdir.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-2000:]}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def submit(
    client: httpx.Client, *, seed: int = 0, wait: float = 0, **fields: Any
) -> httpx.Response:
    data = {"method": "gradcam", "model": "tiny", "wait": str(wait)}
    data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    files = {"file": ("x.png", noise(32, 32, seed), "image/png")}
    return client.post("/v1/explanations", data=data, files=files)


def test_a_job_is_visible_to_its_key_alone_and_keys_are_required(gateways: Gateways) -> None:
    with gateways.client(0, "dave") as dave, gateways.client(1, "bob") as bob:
        job = submit(dave, seed=1).json()
        url = f"/v1/jobs/{job['job_id']}"
        assert dave.get(url).status_code == 200  # its owner, through either gateway
        for path in (url, url + "/heatmap.png", url + "/events"):
            assert bob.get(path).json()["status"] == 404
        assert bob.delete(url).status_code == 404
        assert "no job" in bob.get(url).json()["detail"]
    with gateways.client(0) as anonymous:
        response = anonymous.get("/v1/models")
        assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
        assert anonymous.get(url, headers={"X-API-Key": "xpl_wrong"}).status_code == 401


def test_a_key_added_and_revoked_with_xplain_keys_works_then_is_refused(gateways: Gateways) -> None:
    command = [sys.executable, "-m", "app.keyadmin", "--file", str(gateways.keys_file)]
    added = subprocess.run([*command, "add", "erin"], capture_output=True, text=True, check=True)
    key = added.stdout.strip()
    assert key.startswith("xpl_") and key not in gateways.keys_file.read_text()
    assert key_digest(key) in gateways.keys_file.read_text()
    with gateways.client(1, key) as erin:
        wait_for(lambda: erin.get("/v1/models").status_code == 200, 5, "the new key to work")
        subprocess.run([*command, "revoke", "erin"], capture_output=True, check=True)
        wait_for(lambda: erin.get("/v1/models").status_code == 401, 5, "the key to be revoked")
        assert "revoked" in erin.get("/v1/models").json()["detail"]


def test_the_rate_limit_holds_across_two_gateways(gateways: Gateways) -> None:
    clients = [gateways.client(0, "alice"), gateways.client(1, "alice")]
    try:
        answers = [submit(clients[i % 2], seed=10 + i) for i in range(4)]
    finally:
        for client in clients:
            client.close()
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert [a.headers["ratelimit"].split(";")[1] for a in answers[:3]] == ["r=2", "r=1", "r=0"]
    refused = answers[3]
    assert refused.headers["ratelimit-policy"] == '"jobs";q=3;w=60'
    assert refused.headers["ratelimit"].startswith('"jobs";r=0;t=')
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # one job comes back every 20 s
    body = refused.json()
    assert body["type"] == "/problems/rate-limited" and body["status"] == 429


def test_a_key_over_its_active_jobs_gets_429_until_one_ends(gateways: Gateways) -> None:
    long = {"model": "tiny_slow", "method": "occlusion",
            "params": {"window": 4, "stride": 1, "max_batch_size": 1}}  # fmt: skip
    with gateways.client(0, "bob") as bob:
        first = submit(bob, seed=20, **long)
        assert first.status_code == 202, first.text
        second = submit(bob, seed=21)
        assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
        assert second.json()["active_jobs"] == 1
        assert bob.delete(first.headers["location"]).status_code == 200
        third = submit(bob, seed=22)
        assert third.status_code == 202


def test_a_keys_models_and_cost_cap(gateways: Gateways) -> None:
    with gateways.client(1, "carol") as carol:
        assert [m["name"] for m in carol.get("/v1/models").json()["models"]] == ["tiny"]
        refused = submit(carol, seed=30, model="tiny_slow")
        assert refused.status_code == 403 and refused.json()["type"] == "/problems/forbidden"
        costly = submit(carol, seed=31, method="rise", params={"n_masks": 20000})
        body = costly.json()
        assert costly.status_code == 422 and body["type"] == "/problems/job-too-costly"
        assert body["max_cost"] == 0.05 and "max_job_cost of API key 'carol'" in body["detail"]


def test_cors_preflight_allowed_and_refused(gateways: Gateways) -> None:
    with gateways.client(0) as client:
        asked = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key, idempotency-key"}  # fmt: skip
        allowed = client.options("/v1/explanations", headers={"Origin": ORIGIN, **asked})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        refused = client.options(
            "/v1/explanations", headers={"Origin": "https://evil.example", **asked}
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "access-control-allow-origin" not in refused.headers
        simple = client.get("/v1/methods", headers={"Origin": ORIGIN, "X-API-Key": KEYS["dave"]})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert "ratelimit" in simple.headers["access-control-expose-headers"].lower()


def test_a_webhook_is_signed_and_retried_until_received(gateways: Gateways) -> None:
    receiver = gateways.receiver
    receiver.calls.clear()
    callback = f"http://127.0.0.1:{receiver.port}/hook"
    with gateways.client(1, "dave") as dave:
        outside = submit(dave, seed=40, callback_url="http://example.org/hook")
        assert outside.status_code == 422 and "does not call back" in outside.json()["detail"]
        job = submit(dave, seed=41, callback_url=callback).json()
    wait_for(lambda: len(receiver.calls) >= 2, 30, "the webhook's second attempt")
    (first_headers, _), (headers, body) = receiver.calls[:2]
    assert first_headers["x-xplain-delivery"] == f"{job['job_id']}/1"  # answered 500
    assert headers["x-xplain-delivery"] == f"{job['job_id']}/2"
    secret = b"global-webhook-secret-0123456789"  # dave has no secret of his own
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-xplain-signature"], expected)
    delivered = json.loads(body)
    assert delivered["job_id"] == job["job_id"] and delivered["status"] == "succeeded"
    assert headers["x-request-id"] == job["request_id"]


def test_idempotent_posts_and_reused_results(gateways: Gateways) -> None:
    with gateways.client(0, "dave") as one, gateways.client(1, "dave") as two:
        key = {"Idempotency-Key": f"order-{time.time_ns()}"}

        def post(client: httpx.Client, seed: int) -> httpx.Response:
            files = {"file": ("x.png", noise(32, 32, seed), "image/png")}
            data = {"model": "tiny", "wait": "0"}
            return client.post("/v1/explanations", data=data, files=files, headers=key)

        first, again = post(one, 50), post(two, 50)
        assert first.json()["job_id"] == again.json()["job_id"]
        other = post(one, 51)
        assert other.status_code == 422 and other.json()["type"] == "/problems/idempotency-conflict"
        # Identical work is answered from the stored result, unless the client opts out.
        computed = submit(one, seed=52, wait=20).json()
        reused = submit(two, seed=52, wait=20).json()
        fresh = submit(one, seed=52, wait=20, cache="false").json()
        assert computed["cached"] is False and fresh["cached"] is False
        assert reused["cached"] is True and reused["job_id"] != computed["job_id"]
        assert reused["heatmap"]["data"] == computed["heatmap"]["data"]
        assert reused["timings"]["compute_ms"] == 0
        png = two.get(f"/v1/jobs/{reused['job_id']}/heatmap.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_request_ids_travel_to_the_job_and_the_worker_log(
    gateways: Gateways, service: Service
) -> None:
    with gateways.client(0, "dave", **{"X-Request-ID": "trace-4242"}) as dave:
        response = submit(dave, seed=60, wait=20)
        assert response.headers["x-request-id"] == "trace-4242"
        assert response.json()["request_id"] == "trace-4242"
        made = dave.get("/v1/methods", headers={"X-Request-ID": "bad id!"})
        assert len(made.headers["x-request-id"]) == 32  # an unusable id is replaced
    logs = "".join(p.read_text() for p in service.log_dir.glob("e2e-*.log"))
    assert "request_id=trace-4242" in logs


def test_the_docs_work_offline(gateways: Gateways) -> None:
    with gateways.client(0) as client:
        page = client.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in page
        assert "http://" not in page.replace("http://127.0.0.1", "") and "https://" not in page
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert "https://" not in client.get("/redoc").text
        schema = client.get("/openapi.json").json()
        assert set(schema["components"]["securitySchemes"]) == {"apiKey", "bearer"}
        assert schema["paths"]["/v1/explanations"]["post"]["security"] == [
            {"apiKey": []},
            {"bearer": []},
        ]


def test_huge_headers_are_refused_by_the_server(gateways: Gateways) -> None:
    with gateways.client(0) as client:
        try:
            response = client.get("/healthz", headers={"X-Filler": "a" * 2_000_000})
        except httpx.TransportError:
            return  # the parser dropped the connection: nothing was buffered
        assert response.status_code in (400, 431)


def test_the_page_with_a_key_runs_jobs_and_follows_their_events(
    gateways: Gateways,
    browser: Browser,  # noqa: F811 - the fixture of test_web
    tmp_path: Path,
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        page.goto(gateways.urls[0] + "/")
        expect(page.locator("#key-state")).to_contain_text("needs a valid API key")
        page.fill("#apikey", KEYS["dave"])
        page.click("#key-save")
        expect(page.locator("#model option")).not_to_have_count(0)
        assert page.evaluate("() => sessionStorage.getItem('xplain-api-key')") == KEYS["dave"]
        assert page.evaluate("() => localStorage.length") == 0
        page.set_input_files("#file", str(picture(tmp_path)))
        page.select_option("#model", "tiny_slow")
        tick_only(page, "occlusion")
        page.fill("#p-occlusion-window", "8")
        page.fill("#p-occlusion-stride", "2")
        page.fill("#p-occlusion-max_batch_size", "1")  # 170 passes of 20 ms: progress events
        page.click("#run")
        card = page.locator('#results .card[data-method="occlusion"]')
        page.wait_for_function(
            "() => { const bar = document.querySelector('#results .card progress');"
            " return bar && bar.value > 0 && bar.value < 1; }",
            timeout=30_000,
        )
        expect(card).to_have_attribute("data-status", "succeeded", timeout=60_000)
        heat = card.locator("img.heat")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=heat.element_handle()
        )
        assert (heat.get_attribute("src") or "").startswith("blob:")
        page.screenshot(path=str(tmp_path / "with-key.png"), full_page=True)
    finally:
        context.close()
