"""Occlusion against its closed form on linear models."""

from __future__ import annotations

import pytest
import torch

from app.contract.jobs import ModelInfo
from app.contract.params.perturbation import OcclusionParams
from tests.explainers.perturbation.perturbation_models import (
    LinearModel,
    TinyConvNet,
    handle_for,
)
from workers.explainers import ExplainerError
from workers.explainers.perturbation.occlusion import occlusion, window_starts

SIZE = 20


def closed_form(model: LinearModel, inputs, targets, window, stride, fill, score):
    """Mean drop per pixel, window by window in plain Python (the definition)."""
    logits = torch.einsum("bchw,kchw->bk", inputs, model.weight)
    base = logits.softmax(1) if score == "prob" else logits
    total = torch.zeros(inputs.shape[0], SIZE, SIZE)
    count = torch.zeros(SIZE, SIZE)
    for y in window_starts(SIZE, window, stride):
        for x in window_starts(SIZE, window, stride):
            patch = inputs[:, :, y : y + window, x : x + window]
            if fill == "zero":
                replaced = torch.zeros_like(patch)
            else:  # local_mean
                replaced = patch.mean(dim=(2, 3), keepdim=True).expand_as(patch)
            occluded = inputs.clone()
            occluded[:, :, y : y + window, x : x + window] = replaced
            after = torch.einsum("bchw,kchw->bk", occluded, model.weight)
            after = after.softmax(1) if score == "prob" else after
            drop = (base - after).gather(1, targets[:, None])[:, 0]
            total[:, y : y + window, x : x + window] += drop[:, None, None]
            count[y : y + window, x : x + window] += 1
    return total / count


@pytest.mark.parametrize(
    ("window", "stride", "fill", "score"),
    [(6, 4, "zero", "logit"), (5, 3, "local_mean", "logit"), (8, 8, "zero", "prob")],
)
def test_linear_model_matches_the_closed_form(window, stride, fill, score) -> None:
    model = LinearModel(SIZE, seed=1)
    inputs = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 0.1
    targets = torch.tensor([0, 2, 1])
    got = occlusion(
        handle_for(model, SIZE),
        inputs,
        targets,
        window=window,
        stride=stride,
        fill=fill,
        score=score,
        max_batch_size=7,
    )
    expected = closed_form(model, inputs, targets, window, stride, fill, score)
    assert torch.allclose(got.saliency, expected, atol=1e-5, rtol=1e-4)
    windows = len(window_starts(SIZE, window, stride)) ** 2
    assert got.meta[0]["forward_passes"] == windows + 1


def test_logit_drop_is_the_sum_of_weight_times_input_under_each_window() -> None:
    # A 1-pixel window with stride 1: the map is exactly W_c ⊙ x summed over channels.
    model = LinearModel(SIZE, seed=3)
    inputs = torch.randn(2, 3, SIZE, SIZE)
    targets = torch.tensor([1, 0])
    got = occlusion(handle_for(model, SIZE), inputs, targets, window=1, stride=1, score="logit")
    expected = (model.weight[targets] * inputs).sum(dim=1)
    assert torch.allclose(got.saliency, expected, atol=1e-4)


def test_window_starts_cover_the_border() -> None:
    assert window_starts(20, 6, 4) == [0, 4, 8, 12, 14]
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(20, 20, 4) == [0]


def test_batch_size_and_batch_company_do_not_change_a_map() -> None:
    handle = handle_for(TinyConvNet(), 24)
    inputs = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 1])
    big = occlusion(handle, inputs, targets, window=6, stride=3, max_batch_size=64)
    one = occlusion(handle, inputs, targets, window=6, stride=3, max_batch_size=1)
    alone = occlusion(handle, inputs[1:2], targets[1:2], window=6, stride=3, max_batch_size=5)
    assert torch.allclose(big.saliency, one.saliency, atol=1e-6)
    assert torch.allclose(big.saliency[1], alone.saliency[0], atol=1e-6)


def test_window_larger_than_the_input_is_refused() -> None:
    handle = handle_for(LinearModel(SIZE), SIZE)
    with pytest.raises(ExplainerError):
        occlusion(handle, torch.rand(1, 3, SIZE, SIZE), torch.tensor([0]), window=21)


def test_default_window_and_stride_scale_with_the_input() -> None:
    """32 / 8 px at 224 px, 16 / 4 px at 112 px, 4 / 1 px at 28 px; a client's value wins; the
    contract counts the passes the explainer makes."""
    handle = handle_for(TinyConvNet(), 28)
    inputs = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    default = occlusion(handle, inputs, targets)
    explicit = occlusion(handle, inputs, targets, window=4, stride=1)
    assert torch.equal(default.saliency, explicit.saliency)
    assert default.meta[0]["forward_passes"] == 1 + 25 * 25
    for side, expected in ((224, (32, 8)), (112, (16, 4)), (28, (4, 1)), (8, (1, 1))):
        info = ModelInfo(
            name="m", input_size=(side, side), num_classes=3, labels=["a", "b", "c"],
            mean=[0.0] * 3, std=[1.0] * 3, default_layer=None, layers=[],
        )  # fmt: skip
        assert OcclusionParams().geometry(info) == expected
        assert OcclusionParams(window=5).geometry(info)[0] == 5
    info = info.model_copy(update={"input_size": (28, 28)})
    assert OcclusionParams().passes(info).forward == default.meta[0]["forward_passes"]
