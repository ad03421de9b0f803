"""Which methods a model can run, probed once at load (``workers/support.py``)."""

from __future__ import annotations

import torch
from torch import nn

from tests.explainers.cam.test_layouts import tiny_swin
from tests.worker.nets import build
from workers.explainers.base import ModelHandle
from workers.runtime import describe
from workers.support import layer_methods, unsupported_methods


def handle(model: nn.Module, size: int = 32) -> ModelHandle:
    return ModelHandle("probe", model.eval(), (size, size), labels=("a", "b", "c"))


def test_a_plain_cnn_runs_every_method() -> None:
    assert unsupported_methods(handle(build())) == {}


def test_lrp_and_its_hybrid_are_refused_where_a_layer_has_no_rule() -> None:
    torch.manual_seed(0)
    hard = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip
    refused = unsupported_methods(handle(hard))
    assert set(refused) == {"lrp", "gradcam_lrp"}
    assert all("Sigmoid" in reason for reason in refused.values())
    norm = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip
    refused = unsupported_methods(handle(norm))
    assert set(refused) == {"lrp", "gradcam_lrp"} and "GroupNorm" in refused["lrp"]


def test_a_swin_runs_every_method() -> None:  # window attention has its conservative rule
    assert unsupported_methods(ModelHandle("swin", tiny_swin(), (32, 32))) == {}


def test_a_model_without_a_spatial_layer_refuses_every_layer_based_method() -> None:
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))
    refused = unsupported_methods(handle(flat, 8))
    assert set(layer_methods()) <= set(refused)
    assert "spatial" in refused["gradcam"]
    assert "occlusion" not in refused and "rise" not in refused


def test_the_worker_announces_them() -> None:
    torch.manual_seed(0)
    hard = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip
    info = describe(handle(hard), batch_size=4)
    assert set(info.unsupported) == {"lrp", "gradcam_lrp"}
