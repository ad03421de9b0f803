"""TorchScript and ONNX models served by a real worker behind a real gateway: gradient-free
methods answer, the others are refused before queueing with the reason, and /v1/models says
which is which."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.worker.support import REPO, png, start_worker, stop_process, wait_for, worker_env
from tests.zoo.model_files import export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def gateway(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("files")
    env = worker_env(redis_server, f"f{time.time_ns()}", export(folder))
    worker = start_worker(env, "files-worker", folder)
    port = free_port()
    log = (folder / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 90, "the gateway and the worker")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        stop_process(worker)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def explain(url: str, model: str, method: str, **params: object) -> httpx.Response:
    image = png(np.full((32, 32, 3), 90, dtype=np.uint8))
    return httpx.post(
        f"{url}/v1/explanations",
        files={"file": ("x.png", image, "image/png")},
        data={"model": model, "method": method, "wait": "60", "params": json.dumps(params)},
        params={"heatmap_data": "false"},
        timeout=90,
    )


def test_file_models_serve_what_they_can_and_refuse_the_rest(gateway: str) -> None:
    models = {m["name"]: m for m in httpx.get(f"{gateway}/v1/models").json()["models"]}
    assert models["tiny_onnx"]["architecture"] == "onnx:tiny.onnx"
    assert "gives no gradients" in models["tiny_onnx"]["unsupported"]["gradcam"]
    assert "occlusion" not in models["tiny_onnx"]["unsupported"]
    assert "cannot be hooked" in models["tiny_ts"]["unsupported"]["lrp"]
    done = explain(gateway, "tiny_onnx", "occlusion", window=8, stride=8)
    assert done.status_code == 200, done.text
    assert done.json()["meta"]["forward_passes"] >= 16
    refused = explain(gateway, "tiny_onnx", "extremal_perturbation")
    assert refused.status_code == 422 and "gives no gradients" in refused.json()["detail"]
    script = explain(gateway, "tiny_ts", "meaningful_perturbation", iterations=3)
    assert script.status_code == 200, script.text
    cam = explain(gateway, "tiny_ts", "gradcam")
    assert cam.status_code == 422 and "cannot be hooked" in cam.json()["detail"]
