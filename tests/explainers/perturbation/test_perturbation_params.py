"""The perturbation parameter models agree with the explainers and check the model."""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import ValidationError

from app.contract.jobs import ModelInfo
from app.contract.methods import method_specs
from app.contract.params.perturbation import FmoParams, LimeParams, OcclusionParams, RiseParams
from tests.explainers.perturbation.perturbation_models import TinyConvNet, handle_for
from workers.explainers import get_explainer

METHODS = ["occlusion", "fmo", "rise", "lime"]


def model_info(size: int) -> ModelInfo:
    """What a worker would announce for a ``size``² model."""
    return ModelInfo(
        name="m",
        input_size=(size, size),
        num_classes=2,
        labels=["a", "b"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        default_layer=None,
        layers=[],
    )


@pytest.mark.parametrize("name", METHODS)
def test_fields_are_exactly_the_explainer_keywords(name: str) -> None:
    spec = method_specs()[name]
    assert spec.lane == "slow" and spec.family == "perturbation"
    keywords = set(inspect.signature(get_explainer(name)).parameters)
    keywords -= {"handle", "inputs", "targets", "progress"}
    assert keywords == set(spec.params.model_fields)


@pytest.mark.parametrize("name", METHODS)
def test_defaults_from_the_json_dump_run(name: str) -> None:
    # The worker passes `model_dump(mode="json")` values (tuples become lists).
    params = (
        method_specs()[name]
        .params.model_validate(
            {"max_batch_size": 256}
            | ({"num_samples": 20} if name == "lime" else {})
            | ({"n_masks": 20} if name == "rise" else {})
        )
        .model_dump(mode="json")
    )
    handle = handle_for(TinyConvNet(), 32)
    inputs = torch.rand(1, 3, 32, 32)
    got = get_explainer(name)(handle, inputs, torch.tensor([1]), **params)
    assert got.saliency.dtype == torch.float32 and not got.saliency.requires_grad
    assert got.meta[0]["forward_passes"] >= 2 and torch.isfinite(got.saliency).all()


def test_fmo_params_validate_grids_and_fit_the_model() -> None:
    with pytest.raises(ValidationError):
        FmoParams(grids=(8, 4))
    with pytest.raises(ValidationError):
        FmoParams(select="best")
    FmoParams(grids=(4, 8)).check_model(model_info(32))
    with pytest.raises(ValueError, match="no FMO level"):
        FmoParams(grids=(16, 32), min_cell=4).check_model(model_info(32))
    assert FmoParams().model_dump(mode="json")["grids"] is None
    assert FmoParams(grids=[4, 8]).model_dump(mode="json")["grids"] == [4, 8]


def test_sizes_are_checked_against_the_model() -> None:
    with pytest.raises(ValueError, match="larger than the model input"):
        OcclusionParams(window=64).check_model(model_info(32))
    with pytest.raises(ValueError, match="exceed"):
        RiseParams(cells=40).check_model(model_info(32))
    with pytest.raises(ValidationError):
        RiseParams(p=0)
    with pytest.raises(ValidationError):
        LimeParams(segmentation="watershed")
    with pytest.raises(ValidationError):
        LimeParams(unknown=1)
