"""Deployment files: compose topology, and `docker compose config` where the plugin exists."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())  # type: ignore[no-any-return]


def test_compose_topology() -> None:
    services = compose_file("docker-compose.yml")["services"]
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert services["gateway"]["build"]["target"] == "gateway"
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["build"]["target"] == "worker"
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert worker["stop_grace_period"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    gateway_stage = dockerfile.split("AS gateway")[1].split("AS worker")[0]
    assert "torch" not in gateway_stage and '".[gateway]"' in gateway_stage
    assert "python:3.11-slim" in dockerfile


def _compose_config(*files: str) -> dict[str, Any]:
    args = ["docker", "compose"]
    for name in files:
        args += ["-f", name]
    result = subprocess.run(
        [*args, "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_docker_compose_config_resolves_both_variants() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("the docker compose plugin is not installed")
    gpu = _compose_config("docker-compose.yml")["services"]["worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    cpu = _compose_config("docker-compose.yml", "docker/compose.cpu.yml")["services"]["worker"]
    assert "deploy" not in cpu and cpu["environment"]["XPLAIN_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
