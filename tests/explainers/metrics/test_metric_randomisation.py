"""Spearman rank correlation and the model-randomisation sanity check."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.explainers.metrics.known_models import SIZE, handle_for
from workers.explainers.base import ModelHandle
from workers.explainers.metrics import (
    average_ranks,
    layers_from,
    randomisable_layers,
    randomise_layers,
    randomise_top_layers,
    sanity_correlation,
    spearman,
)


def test_average_ranks_share_ties() -> None:
    values = torch.tensor([[3.0, 1.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    assert average_ranks(values).tolist() == [[3.0, 0.5, 0.5, 2.0], [1.5, 1.5, 1.5, 1.5]]


def test_spearman_hand_computed() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    # 1 − 6·Σd² / (n(n²−1)) = 1 − 12/60; with ties: Pearson of ranks 4.5 / √(4.5·5)
    assert spearman(a, b).tolist() == pytest.approx([0.8, 4.5 / (4.5 * 5) ** 0.5, -1.0])


def test_spearman_is_rank_only_and_constant_gives_zero() -> None:
    a = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0))
    assert spearman(a, a.exp() * 3).tolist() == pytest.approx([1.0, 1.0])
    assert spearman(a, torch.zeros_like(a)).tolist() == [0.0, 0.0]


class LinearNet(nn.Module):
    """conv -> linear: the input gradient of class c is known, and the top layer matters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
        self.pool = nn.Flatten()
        self.classifier = nn.Linear(2 * SIZE * SIZE, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


def test_randomisable_layers_in_order_and_from_a_block() -> None:
    net = LinearNet()
    assert randomisable_layers(net) == ["features.0", "features.1", "classifier"]
    assert layers_from(net, "features.1") == ["features.1", "classifier"]
    assert layers_from(net, "features") == ["features.0", "features.1", "classifier"]
    with pytest.raises(ValueError):
        layers_from(net, "nope")


def test_randomise_copies_reseeds_and_restores_global_rng() -> None:
    net = LinearNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    clone = randomise_top_layers(net, 1, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # the global stream is untouched
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])  # the original is untouched
    assert not torch.equal(clone.classifier.weight, net.classifier.weight)
    assert torch.equal(clone.features[0].weight, net.features[0].weight)
    again = randomise_layers(net, ["classifier"], seed=5)
    assert torch.equal(again.classifier.weight, clone.classifier.weight)
    with pytest.raises(ValueError):
        randomise_top_layers(net, 0)


def input_gradient(handle: ModelHandle, inputs: Tensor, targets: Tensor) -> Tensor:
    """|∂ logit_c / ∂ x| summed over channels: depends on every weight."""
    with torch.enable_grad():
        x = inputs.clone().requires_grad_(True)
        score = handle.model(x).gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.abs().sum(dim=1)


def edge_detector(handle: ModelHandle, inputs: Tensor, targets: Tensor) -> Tensor:
    """A 'method' that never looks at the model."""
    return (inputs[..., 1:, :] - inputs[..., :-1, :]).abs().sum(dim=1)


def test_sanity_check_separates_a_model_free_map_from_a_gradient() -> None:
    handle = handle_for(LinearNet())
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1])
    ignores = sanity_correlation(edge_detector, handle, inputs, targets, ["classifier"])
    assert ignores.tolist() == pytest.approx([1.0, 1.0])
    depends = sanity_correlation(input_gradient, handle, inputs, targets, ["classifier"])
    # a fresh random classifier: the map's ranks are unrelated to the trained ones
    assert depends.abs().max().item() < 0.15
    original = input_gradient(handle, inputs, targets)
    reused = sanity_correlation(
        input_gradient, handle, inputs, targets, ["classifier"], original=original
    )
    assert torch.allclose(reused, depends)
    assert not any(p.grad is not None for p in handle.model.parameters())
