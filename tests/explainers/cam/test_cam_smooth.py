"""Smooth Grad-CAM++: noise-free limit, the three modes, seeds and batching invariance."""

from __future__ import annotations

import pytest
import torch
from cam_models import images, make_handle

from workers.explainers import ExplainerError, ModelHandle, get_explainer
from workers.explainers.cam import cam_maps
from workers.explainers.cam.base import layer_gradients
from workers.explainers.cam.formulas import gradcam_pp_weights, gradcam_pp_weights_from_moments

LAYER = "features.5"


def clean_pass(
    handle: ModelHandle, x: torch.Tensor, targets: torch.Tensor, layer: str = LAYER
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and gradients of one forward + backward at ``layer``."""
    module = handle.model.get_submodule(layer)
    got = layer_gradients(handle, x, targets, [layer], [module])
    return got.activations[0], got.gradients[0]


def test_without_noise_it_is_gradcam_pp() -> None:
    handle = make_handle()
    x, targets = images(2), torch.tensor([1, 4])
    _, smooth = cam_maps("smooth_gradcam_pp", handle, x, targets, LAYER, n_samples=3, sigma=0.0)
    _, plain = cam_maps("gradcam_pp", handle, x, targets, LAYER)
    torch.testing.assert_close(smooth, plain)


def test_noise_averages_the_gradient_moments() -> None:
    """Against D_p computed from explicitly built noisy copies (σ·range·z_m).

    At features.3 the gradient depends on the input (ReLU gates above it), so noise matters.
    """
    handle = make_handle()
    x, targets = images(2), torch.tensor([0, 3])
    n, sigma, seed, layer = 4, 0.2, 11, "features.3"
    z = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    A, G = clean_pass(handle, x, targets, layer)
    weights = []
    for b in range(2):
        spread = sigma * (x[b].max() - x[b].min())
        noisy = x[b : b + 1] + spread * z
        _, g = clean_pass(handle, noisy, targets[b].repeat(n), layer)
        assert not torch.allclose(g.mean(0), G[b])
        d1, d2, d3 = g.mean(0), (g**2).mean(0), (g**3).mean(0)
        weights.append(gradcam_pp_weights_from_moments(A[b : b + 1], d1, d2, d3)[0])
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", torch.stack(weights), A))
    _, maps = cam_maps(
        "smooth_gradcam_pp", handle, x, targets, layer, n_samples=n, sigma=sigma, seed=seed
    )
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_channels_mode_keeps_only_the_chosen_feature_maps() -> None:
    handle = make_handle()
    x, targets = images(1), torch.tensor([2])
    A, G = clean_pass(handle, x, targets)
    weights = gradcam_pp_weights(A, G)[0]
    best = int(weights.argmax())
    _, maps = cam_maps(
        "smooth_gradcam_pp", handle, x, targets, LAYER, sigma=0.0, n_samples=1,
        mode="channels", channels=[best],
    )  # fmt: skip
    torch.testing.assert_close(maps[0], weights[best] * A[0, best])
    _, every = cam_maps(
        "smooth_gradcam_pp", handle, x, targets, LAYER, sigma=0.0, n_samples=1,
        mode="channels", channels=list(range(16)),
    )  # fmt: skip
    _, layer = cam_maps("smooth_gradcam_pp", handle, x, targets, LAYER, sigma=0.0, n_samples=1)
    torch.testing.assert_close(every, layer)


def test_neuron_mode_weights_come_from_one_position() -> None:
    handle = make_handle()
    x, targets = images(2), torch.tensor([2, 1])
    A, G = clean_pass(handle, x, targets)
    i, j = 3, 9
    g = G[:, :, i, j]
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + A.sum(dim=(2, 3)) * g**3), 0.0)
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", alpha * torch.relu(g), A))
    _, maps = cam_maps(
        "smooth_gradcam_pp", handle, x, targets, LAYER, sigma=0.0, n_samples=2,
        mode="neuron", neuron=[i, j],
    )  # fmt: skip
    torch.testing.assert_close(maps, expected)


def test_same_seed_same_map_whatever_the_batching() -> None:
    """At features.1 the gradients depend on the input (at features.5 they are W/hw)."""
    handle = make_handle()
    x, targets = images(3), torch.tensor([0, 1, 2])
    explain = get_explainer("smooth_gradcam_pp")
    common = {"n_samples": 6, "layer": "features.1"}
    a = explain(handle, x, targets, seed=5, max_batch_size=64, **common).saliency
    b = explain(handle, x, targets, seed=5, max_batch_size=4, **common).saliency
    c = explain(handle, x, targets, seed=6, max_batch_size=4, **common).saliency
    alone = explain(handle, x[1:2], targets[1:2], seed=5, max_batch_size=5, **common).saliency
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:2], alone)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "channels", "channels": [16]}, "out of range"),
        ({"mode": "neuron", "neuron": [16, 0]}, "outside"),
        ({"mode": "neuron", "neuron": None}, "needs"),
    ],
)
def test_bad_mode_arguments_are_explainer_errors(kwargs: dict, message: str) -> None:
    handle = make_handle()
    with pytest.raises(ExplainerError, match=message):
        get_explainer("smooth_gradcam_pp")(
            handle, images(1), torch.tensor([0]), n_samples=1, **kwargs
        )
