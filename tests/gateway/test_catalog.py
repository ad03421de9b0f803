"""GET /v1/models (live workers) and GET /v1/methods (the contract's catalogue)."""

from __future__ import annotations

from app.contract.methods import method_specs
from app.contract.metrics import EVALUATIONS
from tests.gateway.conftest import Gateway


def test_models_merge_the_live_workers_and_prune_the_dead(gateway: Gateway) -> None:
    assert gateway.http.get("/v1/models").json() == {"models": []}
    gateway.announce("shapes", worker_id="a", lanes=["fast"])
    gateway.announce("shapes", "digits", worker_id="b", lanes=["slow"])
    gateway.redis.zadd(gateway.keys.workers, {"ghost": 1.0})  # a member without announcement
    models = {m["name"]: m for m in gateway.http.get("/v1/models").json()["models"]}
    assert sorted(models) == ["digits", "shapes"]
    shapes = models["shapes"]
    assert shapes["workers"] == 2 and shapes["lanes"] == ["fast", "slow"]
    assert shapes["input_size"] == [8, 8] and shapes["labels"] == ["disc", "square", "triangle"]
    assert shapes["default_layer"] == "features.4" and shapes["devices"] == ["cpu"]
    assert models["digits"]["workers"] == 1
    assert sorted(gateway.redis.zrange(gateway.keys.workers, 0, -1)) == [b"a", b"b"]
    gateway.redis.delete(gateway.keys.worker("b"))  # b's heartbeat expired
    models = {m["name"]: m for m in gateway.http.get("/v1/models").json()["models"]}
    assert sorted(models) == ["shapes"] and models["shapes"]["lanes"] == ["fast"]


def test_methods_publish_every_spec_with_schema_and_defaults(gateway: Gateway) -> None:
    catalog = gateway.http.get("/v1/methods").json()
    assert catalog["evaluations"] == EVALUATIONS
    published = {m["name"]: m for m in catalog["methods"]}
    specs = method_specs()
    assert set(published) == set(specs)
    for name, spec in specs.items():
        method = published[name]
        assert (method["lane"], method["family"]) == (spec.lane, spec.family)
        assert method["summary"] == spec.summary and method["paper"] == spec.paper
        schema = method["params_schema"]
        assert set(schema.get("properties", {})) == set(spec.params.model_fields)
        assert schema.get("additionalProperties") is False
        assert method["defaults"] == spec.params().model_dump(mode="json")
    occlusion = published["occlusion"]["params_schema"]["properties"]
    window = occlusion["window"]  # an integer ≥ 1, or null for the size-scaled default
    assert {"type": "integer", "minimum": 1, "maximum": 4096} in window["anyOf"]
    assert "scaled" in window["description"]
