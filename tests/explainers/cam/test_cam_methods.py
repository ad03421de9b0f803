"""Known answers of the CAM explainers on tiny models (no shapes-only checks)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from cam_models import CLASSES, gap_net, images, make_handle

from workers.explainers import ExplainerError, get_explainer
from workers.explainers.cam import CAM_METHODS, cam_maps
from workers.explainers.cam.base import layer_gradients
from workers.explainers.postprocess import upsample

CHEAP: dict[str, dict[str, Any]] = {
    "integrated_gradcam": {"steps": 6, "max_batch_size": 5},
    "smooth_gradcam_pp": {"n_samples": 5, "seed": 3, "max_batch_size": 4},
    "scorecam": {"max_batch_size": 7},
    "layercam": {"layers": ["features.3", "features.5"]},
}


def test_gradcam_equals_classic_cam_on_gap_and_linear() -> None:
    """Zhou et al.'s CAM M_c = Σ_k W_ck A_k; Grad-CAM's weights are W_ck / hw."""
    handle = make_handle()
    x, targets = images(4), torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        A = handle.model.features(x)
    cam = torch.einsum("bk,bkhw->bhw", handle.model.fc.weight[targets], A)
    layer, maps = cam_maps("gradcam", handle, x, targets, "features")
    assert layer == "features"
    hw = A.shape[-2] * A.shape[-1]
    torch.testing.assert_close(maps * hw, torch.relu(cam), rtol=1e-5, atol=1e-6)
    assert (maps > 0).any()


@pytest.mark.parametrize("method", CAM_METHODS)
def test_a_batch_gives_each_image_its_map_alone(method: str) -> None:
    handle = make_handle()
    x, targets = images(3, seed=7), torch.tensor([3, 0, 3])
    explain = get_explainer(method)
    together = explain(handle, x, targets, **CHEAP.get(method, {}))
    for row in range(3):
        alone = explain(handle, x[row : row + 1], targets[row : row + 1], **CHEAP.get(method, {}))
        torch.testing.assert_close(together.saliency[row], alone.saliency[0], rtol=1e-4, atol=1e-6)
        assert together.meta[row] == alone.meta[0]
    assert together.saliency.shape == (3, 32, 32)
    assert together.saliency.dtype == torch.float32
    assert not torch.equal(together.saliency[0], together.saliency[1])


@pytest.mark.parametrize("method", CAM_METHODS)
def test_explainer_is_the_upsampled_cam_maps(method: str) -> None:
    handle = make_handle()
    x, targets = images(2), torch.tensor([1, 2])
    name, maps = cam_maps(method, handle, x, targets, None, **CHEAP.get(method, {}))
    result = get_explainer(method)(handle, x, targets, **CHEAP.get(method, {}))
    assert (maps >= 0).all()
    torch.testing.assert_close(result.saliency, upsample(maps, (32, 32)).float())
    assert result.meta[0]["layer"] == name


def test_scorecam_equals_its_formula_whatever_the_batch_size() -> None:
    """s_k = softmax(f(x ⊙ N(U(A_k))))_c, L = ReLU(Σ_k s_k A_k), one channel at a time."""
    handle = make_handle()
    model = handle.model
    x, targets = images(2, seed=4), torch.tensor([2, 4])
    with torch.no_grad():
        A = model.features(x)
        expected = torch.zeros(2, *A.shape[-2:])
        for b in range(2):
            for k in range(A.shape[1]):
                up = F.interpolate(A[b : b + 1, k : k + 1], size=(32, 32), mode="bilinear")
                if up.max() == up.min():
                    continue
                mask = (up - up.min()) / (up.max() - up.min())
                prob = model(x[b : b + 1] * mask).softmax(dim=1)[0, targets[b]]
                expected[b] += prob * A[b, k]
    expected = torch.relu(expected)
    for batch_size in (1, 5, 64):
        _, maps = cam_maps("scorecam", handle, x, targets, "features", max_batch_size=batch_size)
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)


def test_scorecam_skips_constant_channels() -> None:
    model = gap_net()
    with torch.no_grad():
        model.features[4].weight[:3] = 0.0
        model.features[4].bias[:3] = 0.5  # channels 0-2 are constant 0.5 after the ReLU
    result = get_explainer("scorecam")(make_handle(model), images(1), torch.tensor([0]))
    assert result.meta[0]["forward_passes"] == 1 + 16 - 3


def test_layer_errors_are_explainer_errors() -> None:
    handle = make_handle()
    x, targets = images(1), torch.tensor([0])
    with pytest.raises(ExplainerError, match="no layer"):
        get_explainer("gradcam")(handle, x, targets, layer="features.99")
    with pytest.raises(ExplainerError, match=r"\(B, C, h, w\)"):
        get_explainer("gradcam")(handle, x, targets, layer="fc")


def test_a_dead_layer_is_refused_with_a_clear_message() -> None:
    model = gap_net()
    with torch.no_grad():
        model.features[4].weight.zero_()
        model.features[4].bias.fill_(-1.0)  # features.5 = ReLU(-1) = 0 everywhere
    handle = make_handle(model)
    for method in ("gradcam", "gradcam_pp", "layercam", "scorecam"):
        with pytest.raises(ExplainerError, match="all-zero"):
            get_explainer(method)(handle, images(2), torch.tensor([0, 1]), layer="features.5")


def test_a_layer_outside_the_forward_pass_is_refused() -> None:
    model = gap_net()
    model.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ExplainerError, match="not executed"):
        get_explainer("gradcam")(make_handle(model), images(1), torch.tensor([0]), layer="unused")


def test_unknown_architecture_gets_an_automatic_layer_named_in_the_result() -> None:
    handle = make_handle(default_layer=None)
    result = get_explainer("gradcam")(handle, images(2), torch.tensor([0, 1]))
    assert result.meta[0]["layer"] == "features"
    assert result.meta[0]["layer_source"] == "auto"
    explicit = get_explainer("gradcam")(handle, images(2), torch.tensor([0, 1]), layer="features")
    torch.testing.assert_close(result.saliency, explicit.saliency)
    assert explicit.meta[0]["layer_source"] == "request"


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam", "integrated_gradcam"])
def test_in_place_ops_after_the_layer_do_not_change_the_map(method: str) -> None:
    """features.4 is a conv whose output an in-place ReLU overwrites in the second model."""
    x, targets = images(2), torch.tensor([1, 3])
    kwargs = CHEAP.get(method, {}) if method != "layercam" else {}
    plain = get_explainer(method)(make_handle(gap_net()), x, targets, layer="features.4", **kwargs)
    inplace_model = gap_net(inplace=True)
    inplace = get_explainer(method)(
        make_handle(inplace_model), x, targets, layer="features.4", **kwargs
    )
    torch.testing.assert_close(plain.saliency, inplace.saliency)


def test_layercam_fusion_follows_execution_order_not_argument_order() -> None:
    handle = make_handle()
    x, targets = images(2), torch.tensor([1, 2])
    a = cam_maps("layercam", handle, x, targets, None, layers=["features.3", "features.5"])
    b = cam_maps("layercam", handle, x, targets, None, layers=["features.5", "features.3"])
    assert a[0] == b[0] == "features.3+features.5"
    torch.testing.assert_close(a[1], b[1])
    assert a[1].amax() <= 1.0 + 1e-6


def test_layercam_fused_map_combines_the_single_layer_maps() -> None:
    handle = make_handle()
    x, targets = images(2), torch.tensor([1, 2])
    _, shallow = cam_maps("layercam", handle, x, targets, "features.1")
    _, deep = cam_maps("layercam", handle, x, targets, "features.5")
    _, fused = cam_maps("layercam", handle, x, targets, None, layers=["features.1", "features.5"])
    deep_up = F.interpolate(deep.unsqueeze(1), size=(32, 32), mode="bilinear")[:, 0]
    expected = torch.maximum(
        torch.tanh(2 * shallow / shallow.flatten(1).amax(1).view(-1, 1, 1)),
        deep_up / deep.flatten(1).amax(1).view(-1, 1, 1),
    )
    torch.testing.assert_close(fused, expected)


def test_gradients_come_from_each_rows_own_target() -> None:
    handle = make_handle()
    x = images(2)
    targets = torch.tensor([0, CLASSES - 1])
    got = layer_gradients(handle, x, targets, ["features"], [handle.model.features])
    hw = got.activations[0].shape[-1] * got.activations[0].shape[-2]
    for row, target in enumerate(targets.tolist()):
        expected = (handle.model.fc.weight[target] / hw).view(-1, 1, 1).expand(-1, 16, 16)
        torch.testing.assert_close(got.gradients[0][row], expected.detach())


def naive_gradients(
    model: torch.nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂S/∂A with the whole graph recorded from the input (no cut, no clone)."""
    stored: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: stored.append(o))
    try:
        logits = model(x.clone().requires_grad_(True))
        score = logits.gather(1, targets.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(score, stored[-1])
    finally:
        handle.remove()
    return stored[-1].detach(), gradient


@pytest.mark.parametrize("layer", ["layer3.0.downsample", "layer3.0.conv2", "layer4"])
def test_gradients_with_the_upstream_run_without_recording_are_exact(layer: str) -> None:
    """Residual blocks: the skip branch and the main branch, against a full-graph gradient."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    handle = make_handle(model, default_layer=None)
    x, targets = torch.randn(2, 3, 64, 64), torch.tensor([1, 5])
    got = layer_gradients(handle, x, targets, [layer], [model.get_submodule(layer)])
    A, G = naive_gradients(model, layer, x, targets)
    torch.testing.assert_close(got.activations[0], A)
    torch.testing.assert_close(got.gradients[0], G)


class NoGradInside(torch.nn.Module):
    """A model whose forward switches gradients off around the hooked layer."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner model's features under no_grad, then its head."""
        with torch.no_grad():
            features = self.inner.features(x)
        return self.inner.fc(self.inner.pool(features).flatten(1))


def test_a_model_that_turns_gradients_off_gets_the_same_map() -> None:
    inner = gap_net()
    x, targets = images(2), torch.tensor([0, 4])
    plain = get_explainer("gradcam")(make_handle(inner), x, targets, layer="features.5")
    wrapped = make_handle(NoGradInside(inner))
    odd = get_explainer("gradcam")(wrapped, x, targets, layer="inner.features.5")
    torch.testing.assert_close(plain.saliency, odd.saliency)
