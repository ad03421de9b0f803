"""LRP: conservation, agreement with Zennit's attributor, batches, model hygiene, caching."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.explainers.propagation.prop_models import (
    CLASSES,
    bn_cnn,
    forward_overrides,
    handle_for,
    images,
    plain_cnn,
    small_resnet,
    zennit_relevance,
)
from workers.explainers import Cancelled, get_explainer
from workers.explainers.propagation.lrp import lrp_relevance

COMPOSITES = [
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_alpha2_beta1_flat",
    "epsilon_alpha2_beta1",
    "epsilon_gamma_box",
    "epsilon",
]


def test_epsilon_rule_conserves_relevance_on_a_bias_free_relu_network() -> None:
    handle = handle_for(plain_cnn(bias=False).double())
    x, targets = images(3, dtype=torch.float64), torch.tensor([0, 3, 4])
    relevance, logits = lrp_relevance(handle, x, targets, composite="epsilon", epsilon=1e-9)
    totals = relevance.sum(dim=(1, 2, 3))
    expected = logits.gather(1, targets.view(-1, 1))[:, 0]
    torch.testing.assert_close(totals, expected, rtol=1e-6, atol=1e-9)


def test_epsilon_rule_loses_relevance_to_biases() -> None:
    """With biases the ε rule no longer conserves: the check above can fail."""
    handle = handle_for(plain_cnn(bias=True).double())
    x, targets = images(3, dtype=torch.float64), torch.tensor([0, 3, 4])
    relevance, logits = lrp_relevance(handle, x, targets, composite="epsilon", epsilon=1e-9)
    gap = relevance.sum(dim=(1, 2, 3)) - logits.gather(1, targets.view(-1, 1))[:, 0]
    assert gap.abs().max() > 1e-3


@pytest.mark.parametrize(
    ("model_name", "composites"),
    [
        ("bn_cnn", COMPOSITES),
        ("basic", COMPOSITES),
        ("bottleneck", ["epsilon_plus_flat", "epsilon_gamma_box"]),
    ],
)
def test_maps_equal_zennits_attributor(model_name: str, composites: list[str]) -> None:
    """Same rules, canonizers and batch-norm merge as Zennit: equal to float64 precision."""
    if model_name == "bn_cnn":
        model = bn_cnn(eps=0.0).double()
    else:
        model = small_resnet(model_name, eps=0.0).double()
    handle = handle_for(model)
    x, targets = images(2, dtype=torch.float64), torch.tensor([1, 4])
    for composite in composites:
        reference = zennit_relevance(model, x, targets, composite, handle)
        for _ in range(2):  # first call validates the graph, the second uses cheaper rules
            ours, _ = lrp_relevance(handle, x, targets, composite=composite)
            error = (ours - reference).abs().max() / reference.abs().max()
            assert error < 1e-9, (composite, float(error))


def test_default_batch_norm_eps_is_merged_exactly_where_zennit_is_approximate() -> None:
    """Zennit leaves a merged norm computing ``x / sqrt(1 + eps)``; the merge here is exact,
    so the merged model's logits equal the model's own and maps differ from Zennit's by ~eps.
    """
    model = small_resnet("basic", eps=1e-5).double()
    handle = handle_for(model)
    x, targets = images(2, dtype=torch.float64), torch.tensor([1, 4])
    ours, logits = lrp_relevance(handle, x, targets)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)
    reference = zennit_relevance(model, x, targets, "epsilon_plus_flat", handle)
    error = (ours - reference).abs().max() / reference.abs().max()
    assert 1e-12 < error < 1e-3


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_a_batch_with_different_targets_equals_each_image_alone(composite: str) -> None:
    handle = handle_for(small_resnet("basic"))
    explain = get_explainer("lrp")
    x, targets = images(4, seed=3), torch.tensor([0, 2, 2, 4])
    together = explain(handle, x, targets, composite=composite).saliency
    for i in range(4):
        alone = explain(handle, x[i : i + 1], targets[i : i + 1], composite=composite).saliency
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-4, atol=1e-7)


def test_pixel_map_is_the_channel_sum_and_meta_reports_the_totals() -> None:
    handle = handle_for(bn_cnn())
    x, targets = images(2), torch.tensor([1, 2])
    explanation = get_explainer("lrp")(handle, x, targets, composite="epsilon_plus")
    relevance, logits = lrp_relevance(handle, x, targets, composite="epsilon_plus")
    torch.testing.assert_close(explanation.saliency, relevance.sum(dim=1))
    assert explanation.saliency.shape == (2, 32, 32)
    assert explanation.saliency.dtype == torch.float32
    for row, meta in enumerate(explanation.meta):
        assert meta["forward_passes"] == 2  # its first call on the model checks the merge
        assert meta["composite"] == "epsilon_plus"
        assert meta["relevance_total"] == pytest.approx(float(relevance[row].sum()), rel=1e-4)
        assert meta["target_logit"] == pytest.approx(float(logits[row, targets[row]]), rel=1e-5)


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, {k: p.requires_grad for k, p in model.named_parameters()}


def assert_untouched(model: nn.Module, before: tuple[dict, dict]) -> None:
    state, flags = snapshot(model)
    assert flags == before[1]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], v) for k, v in before[0].items())
    assert forward_overrides(model) == []
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_model_is_unchanged_after_a_call_a_cancel_and_an_error() -> None:
    model = small_resnet("bottleneck")
    handle = handle_for(model)
    before = snapshot(model)
    x, targets = images(2), torch.tensor([0, 1])
    get_explainer("lrp")(handle, x, targets)
    assert_untouched(model, before)

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        get_explainer("lrp")(handle, x, targets, progress=cancel)
    assert_untouched(model, before)

    def explode(_module: nn.Module, _args: object, _out: object) -> None:
        raise RuntimeError("boom")

    hook = model.layer3.register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            lrp_relevance(handle, x, targets)
        assert forward_overrides(model) == []
    finally:
        hook.remove()
    assert_untouched(model, before)


def test_cached_rules_follow_changed_weights() -> None:
    model = bn_cnn()
    handle = handle_for(model)
    x, targets = images(2), torch.tensor([1, 3])
    lrp_relevance(handle, x, targets)
    with torch.no_grad():
        model[0].weight.mul_(-1.5)
        model[1].running_mean.add_(0.3)
    changed, _ = lrp_relevance(handle, x, targets)
    fresh = bn_cnn()
    fresh.load_state_dict(model.state_dict())
    expected, _ = lrp_relevance(handle_for(fresh), x, targets)
    torch.testing.assert_close(changed, expected)


def test_frozen_parameters_and_targets_out_of_range() -> None:
    model = plain_cnn().requires_grad_(False)
    handle = handle_for(model)
    relevance, _ = lrp_relevance(handle, images(1), torch.tensor([2]))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    from workers.explainers import ExplainerError

    with pytest.raises(ExplainerError, match="classes"):
        lrp_relevance(handle, images(1), torch.tensor([CLASSES]))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_a_channels_last_model_gives_the_same_map(composite: str) -> None:
    """The zoo stores models channels-last on CUDA; their views of channels-last activations
    (``as_strided`` in the graph) are reshapes, which pass relevance unchanged."""
    model = small_resnet("bottleneck").eval()
    x, targets = images(2), torch.tensor([1, 4])
    dense, _ = lrp_relevance(handle_for(model), x, targets, composite=composite)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    ours, _ = lrp_relevance(
        handle_for(nhwc), x.contiguous(memory_format=torch.channels_last), targets,
        composite=composite,
    )  # fmt: skip
    torch.testing.assert_close(ours, dense, rtol=1e-4, atol=1e-6 * float(dense.abs().max()))
