"""The cost model against what the methods really do, for every method.

(a) A method's estimate of its passes (``params.passes(model)``, what admission and the
scheduler use) equals the forward and backward passes it reports in ``meta`` (an upper bound
for FMO, which decides on the way), and the model really ran that many forward passes: a
counting hook sees every row. (b) The prediction costs no pass of its own: a job with a top-1
target (``-1``) runs exactly as many passes as one with the class given, and the explanation's
``logits`` are the clean input's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from app.contract.jobs import ModelInfo
from app.contract.methods import method_specs
from workers.explainers import ModelHandle, get_explainer

SPECS = method_specs()
SIZE = 32

CHEAP: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"n_masks": 20},
    "lime": {"num_samples": 12, "segmentation": "slic", "segments": 6},
    "integrated_gradcam": {"steps": 3},
    "smooth_gradcam_pp": {"n_samples": 3},
    "meaningful_perturbation": {"iterations": 3},
    "extremal_perturbation": {"iterations": 3, "areas": [0.1, 0.3]},
    "neuromask": {"iterations": 3},
    "gradual_extrapolation": {"base": "scorecam"},
}


class Counted(nn.Module):
    """A tiny CNN that counts the rows of every forward pass and every backward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.head(self.features(x))


def handle_and_info() -> tuple[ModelHandle, ModelInfo, Counted]:
    model = Counted().eval()
    handle = ModelHandle(
        "tiny", model, (SIZE, SIZE), labels=("a", "b", "c", "d"), default_layer="features.4"
    )
    info = ModelInfo(
        name="tiny",
        input_size=(SIZE, SIZE),
        num_classes=4,
        labels=list(handle.labels),
        mean=list(handle.mean),
        std=list(handle.std),
        default_layer="features.4",
        layers=[name for name, _ in model.named_modules() if name],
        layer_channels={"features.4": 16, "features.3": 16},
    )
    return handle, info, model


DATA_DEPENDENT = {"fmo", "scorecam", "gradual_extrapolation"}
"""FMO probes what its coarser levels found; Score-CAM skips constant channels."""

LRP = {"lrp", "gradcam_lrp"}
"""Their first call on a model checks the batch-norm merge with one more forward pass."""


def params_of(name: str) -> dict[str, Any]:
    return SPECS[name].params.model_validate(CHEAP.get(name, {})).model_dump()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_estimate_is_what_the_method_runs(name: str) -> None:
    handle, info, model = handle_and_info()
    params = params_of(name)
    estimate = SPECS[name].params.model_validate(params).passes(info)
    inputs = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    if name in LRP:
        first = get_explainer(name)(handle, inputs, torch.tensor([-1]), **params)
        assert model.rows == first.meta[0]["forward_passes"] == estimate.forward + 1
        model.rows = 0
    got = get_explainer(name)(handle, inputs, torch.tensor([-1]), **params)
    meta = got.meta[0]
    forward = meta["forward_passes"]
    if name in DATA_DEPENDENT:
        assert 1 < forward <= estimate.forward
    else:
        assert forward == estimate.forward, meta
    assert meta.get("backward_passes", 0) == estimate.backward, meta
    assert model.rows == forward  # the model saw every pass the method reports, no more
    assert got.logits is not None and got.logits.shape == (1, 4)
    clean = handle.model(inputs)
    torch.testing.assert_close(got.logits.float(), clean.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gradcam", "lrp", "occlusion", "scorecam"])
def test_a_top1_request_costs_no_extra_pass(name: str) -> None:
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    handle, _, model = handle_and_info()
    chosen = handle.model(inputs).argmax(dim=1)
    get_explainer(name)(handle, inputs, chosen, **params_of(name))  # LRP: check its merge first
    model.rows = 0
    top1 = get_explainer(name)(handle, inputs, torch.tensor([-1, -1]), **params_of(name))
    rows_top1 = model.rows
    model.rows = 0
    given = get_explainer(name)(handle, inputs, chosen, **params_of(name))
    assert rows_top1 == model.rows
    torch.testing.assert_close(top1.saliency, given.saliency)
