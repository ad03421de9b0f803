"""The Kubernetes manifests: rendered with kustomize, validated against the Kubernetes schemas
offline (``kubernetes-validate``), the KEDA objects checked field by field, and every name,
port, probe path, command-line option and setting they use checked against the code.

Rendering needs ``kubectl`` (its built-in kustomize); without it these tests skip.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Match

from app.__main__ import main as gateway_main
from app.contract.keys import GROUP, LANES, Keys
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.30.0"
pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (for its kustomize) is not installed"
)


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(deployment).get("env", [])}


def serves(app: Starlette, path: str) -> bool:
    """Whether a GET of ``path`` reaches one of the application's routes."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    return any(route.matches(scope)[0] is Match.FULL for route in app.routes)


def test_every_object_is_valid_kubernetes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    assert len(core) >= 12
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_keda_scales_each_lane_on_its_streams_lag(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    scaled = by_kind(docs, "ScaledObject")
    deployments = by_kind(docs, "Deployment")
    auth = by_kind(docs, "TriggerAuthentication")
    secret = by_kind(docs, "Secret")["xplain-secrets"]
    keys = Keys(Settings().key_prefix)
    assert sorted(scaled) == [f"xplain-worker-{lane}" for lane in sorted(LANES)]
    for lane in LANES:
        spec = scaled[f"xplain-worker-{lane}"]["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert env_of(target)["XPLAIN_LANES"] == lane
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        startup = container(target)["startupProbe"]
        loading_s = startup["periodSeconds"] * startup["failureThreshold"]
        assert spec["cooldownPeriod"] >= loading_s  # longer than a worker's model loading
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis-streams"
        meta = trigger["metadata"]
        assert meta["stream"] == keys.stream(lane)
        assert meta["consumerGroup"] == GROUP
        assert int(meta["lagCount"]) >= 1 and int(meta["activationLagCount"]) >= 0
        host, _, port = meta["address"].partition(":")
        assert host in by_kind(docs, "Service") and port == "6379"
        secret_ref = auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        for ref in secret_ref:
            assert ref["name"] == "xplain-secrets" and ref["key"] in secret["stringData"]


def test_names_ports_probes_and_settings_exist_in_the_code(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = overlay
    deployments = by_kind(docs, "Deployment")
    settings_env = {f"XPLAIN_{field.upper()}" for field in Settings.model_fields}
    app = create_app(Settings())
    gateway = deployments["xplain-gateway"]
    gateway_container = container(gateway)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert serves(app, gateway_container[probe]["httpGet"]["path"])
    assert gateway_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = gateway_container["ports"][0]
    assert env_of(gateway)["PORT"] == str(port["containerPort"])
    service = by_kind(docs, "Service")["xplain-gateway"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    with pytest.raises(SystemExit) as shown:  # the gateway's command line knows its options
        gateway_main(["--help"])
    assert shown.value.code == 0
    for deployment in deployments.values():
        for variable in env_of(deployment):
            if variable.startswith("XPLAIN_"):
                assert variable in settings_env, f"{variable} is not a setting"
    for lane in LANES:
        worker = deployments[f"xplain-worker-{lane}"]
        env = env_of(worker)
        probe = " ".join(container(worker)["livenessProbe"]["exec"]["command"])
        assert env["XPLAIN_HEALTH_FILE"] in probe
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(env["XPLAIN_DRAIN_S"]) + 30
        mounts = {m["mountPath"] for m in container(worker)["volumeMounts"]}
        assert env["XPLAIN_MODELS_FILE"] in mounts
        expected = {"cpu": "cpu", "gpu": "cuda"}[name]
        assert env["XPLAIN_DEVICE"] == expected
        limits = container(worker)["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == (name == "gpu")
    keys_mount = {m["mountPath"] for m in gateway_container["volumeMounts"]}
    assert str(Path(env_of(gateway)["XPLAIN_KEYS_FILE"]).parent) in keys_mount
    models = by_kind(docs, "ConfigMap")
    (models_map,) = [m for n, m in models.items() if n.startswith("xplain-models")]
    entries = tomllib.loads(models_map["data"]["models.toml"])["models"]
    assert entries and all("name" in entry for entry in entries)


def test_pods_run_unprivileged_and_only_gateways_and_workers_reach_redis(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["automountServiceAccountToken"] is False
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    allowed = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in policy["spec"]["ingress"][0]["from"]
        if "podSelector" in peer
    }
    assert allowed == {"gateway", "worker"}
    assert by_kind(docs, "HorizontalPodAutoscaler") and by_kind(docs, "PodDisruptionBudget")


def test_the_scale_to_zero_component_lets_the_slow_lane_sleep(tmp_path: Path) -> None:
    tree = tmp_path / "k8s"  # kustomize takes only relative paths, so a copy of the tree
    shutil.copytree(K8S, tree)
    overlay = tree / "overlays" / "gpu-scale-to-zero"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - ../gpu\ncomponents:\n  - ../../components/scale-to-zero\n"
    )
    scaled = by_kind(render(overlay), "ScaledObject")
    assert scaled["xplain-worker-slow"]["spec"]["minReplicaCount"] == 0
    assert scaled["xplain-worker-fast"]["spec"]["minReplicaCount"] >= 1
