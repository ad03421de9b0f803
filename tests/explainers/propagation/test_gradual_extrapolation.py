"""Gradual Extrapolation: hand-computed refinement on a toy model, sharper localisation, the
code-quirk mode, forward-pass reuse, batches and hooks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from workers.explainers import ExplainerError, get_explainer
from workers.explainers.base import ModelHandle
from workers.explainers.cam.common import cam_maps

explain = get_explainer("gradual_extrapolation")


def toy(seed: int = 0) -> nn.Sequential:
    """16 px: 1×1 conv, ReLU, pool (8 px), 1×1 conv, ReLU, pool (4 px), 1×1 conv, ReLU, GAP, fc."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 2, 1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2, bias=False),
    )
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Conv2d):
                module.weight.uniform_(-0.2, 1.0)
        model[10].weight.uniform_(0.1, 1.0)  # both classes get a non-empty Grad-CAM
    return model.eval()


def handle(model: nn.Module, size: int = 16) -> ModelHandle:
    return ModelHandle(name="toy", model=model, input_size=(size, size), default_layer="7")


def up2(m: Tensor) -> Tensor:
    """Bilinear ×2 up-sampling (align_corners=False) by its weights: 3/4 own, 1/4 neighbour."""
    for dim in (-2, -1):
        n = m.shape[dim]
        before = m.index_select(dim, torch.clamp(torch.arange(n) - 1, min=0))
        after = m.index_select(dim, torch.clamp(torch.arange(n) + 1, max=n - 1))
        even, odd = 0.75 * m + 0.25 * before, 0.75 * m + 0.25 * after
        m = torch.stack([even, odd], dim=dim).flatten(dim - 1, dim)  # even, odd, even, ...
    return m


def standardised(m: Tensor, clip: float = 5.0) -> Tensor:
    z = ((m - m.mean()) / m.std()).clamp(-clip, clip)
    return (z - z.min()) / (z.max() - z.min())


def hand_computed(model: nn.Sequential, x: Tensor, target: int) -> Tensor:
    """METHODS.md §4.3 with the spec defaults, one image, written out layer by layer."""
    w0, w1, w2 = (model[i].weight[:, :, 0, 0] for i in (0, 3, 6))
    a0 = torch.relu(torch.einsum("oc,chw->ohw", w0, x))  # E0: input of the first pool, 16 px
    e1 = torch.nn.functional.max_pool2d(a0[None], 2)[0]  # E1: 8 px
    a1 = torch.relu(torch.einsum("oc,chw->ohw", w1, e1))
    e2 = torch.nn.functional.max_pool2d(a1[None], 2)[0]  # E2: 4 px = the map's size: unused
    a2 = torch.relu(torch.einsum("oc,chw->ohw", w2, e2))  # the CAM layer, 4 px
    weights = model[10].weight[target] / 16  # d logit / d a2 is uniform after GAP + fc
    m = torch.relu((weights[:, None, None] * a2).sum(0))  # Grad-CAM, 4 × 4
    m = up2(m) * e1.clamp(min=0).sum(0) / e1.max()  # post-ReLU: Σ ReLU(e) = Σ e
    m = up2(m) * a0.clamp(min=0).sum(0) / a0.max()
    return standardised(m)


def test_refined_map_is_the_up_sampled_map_modulated_by_the_activations() -> None:
    model = toy()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 1])
    result = explain(handle(model), x, targets, base="gradcam")
    for row in range(3):
        with torch.no_grad():
            expected = hand_computed(model, x[row], int(targets[row]))
        torch.testing.assert_close(result.saliency[row], expected, rtol=1e-4, atol=1e-5)
    assert result.meta[0]["excitations"] == 2
    assert result.meta[0]["forward_passes"] == 1  # the base's own forward pass was reused


def test_code_quirks_use_every_layer_and_batch_wide_statistics() -> None:
    model = toy()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1])
    h = handle(model)
    quirky = explain(h, x, targets, reproduce_code_quirks=True)
    assert quirky.meta[0]["excitations"] == 3
    with torch.no_grad():
        a0 = model[1](model[0](x))
        e1 = model[2](a0)
        e2 = model[5](model[4](model[3](e1)))
    _, m = cam_maps("gradcam", h, x, targets, None)
    m = m[:, None] * e2.sum(1, keepdim=True) / e2.max()  # same size: no resize
    m = up2(m) * e1.sum(1, keepdim=True) / e1.max()
    m = up2(m) * a0.sum(1, keepdim=True) / a0.max()
    torch.testing.assert_close(quirky.saliency, standardised(m[:, 0], 1.0), rtol=1e-4, atol=1e-5)
    alone = explain(h, x[:1], targets[:1], reproduce_code_quirks=True).saliency
    assert not torch.allclose(alone, quirky.saliency[:1], atol=1e-3)  # depends on the batch


def square_scene(size: int = 32) -> tuple[Tensor, Tensor]:
    """A bright 6×6 square on a dark, faintly textured image, and its mask."""
    image = 0.1 * torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    image[..., 9:15, 17:23] = 1.0
    return image, image[0, 0] == 1.0


def brightness_net() -> nn.Sequential:
    """Positive weights only: every unit responds to brightness in its receptive field."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.fill_(0.1)
                module.bias.zero_()
    return model.eval()


def energy_inside(saliency: Tensor, mask: Tensor) -> float:
    positive = saliency.clamp(min=0)
    return float(positive[mask].sum() / positive.sum())


def test_extrapolation_sharpens_localisation_on_a_synthetic_scene() -> None:
    image, mask = square_scene()
    h = ModelHandle(name="bright", model=brightness_net(), input_size=(32, 32), default_layer="7")
    target = torch.tensor([0])
    coarse = get_explainer("gradcam")(h, image, target).saliency[0]
    refined = explain(h, image, target).saliency[0]
    before, after = energy_inside(coarse, mask), energy_inside(refined, mask)
    assert before < 0.2  # the 8-px map, up-sampled, spreads over the surroundings
    assert after > 0.7 and after > 4 * before


def test_a_base_with_several_forward_passes_gets_one_clean_extra_pass() -> None:
    model = toy()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([1, 0])
    h = handle(model)
    result = explain(h, x, targets, base="integrated_gradcam")
    assert result.meta[0]["forward_passes"] > 2
    _, maps = cam_maps("integrated_gradcam", h, x, targets, None)
    from workers.explainers.propagation.gradual_extrapolation import extrapolate

    with torch.no_grad():
        a0 = model[1](model[0](x))
        e1 = model[2](a0)
    expected = extrapolate(maps, [a0, e1], quirks=False)
    torch.testing.assert_close(result.saliency, expected, rtol=1e-4, atol=1e-5)


def test_a_batch_equals_each_image_alone_and_hooks_are_removed() -> None:
    model = toy()
    h = handle(model)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([0, 1, 0])
    together = explain(h, x, targets).saliency
    for i in range(3):
        alone = explain(h, x[i : i + 1], targets[i : i + 1]).saliency
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ExplainerError):
        explain(h, x, targets, layer="no.such.layer")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_pre_activation_excitations_keep_their_positive_channels() -> None:
    """A stride-2 convolution's output can have negative channel sums everywhere (before its
    batch norm); only the positive part of each channel modulates the map, so it is not blanked.
    """
    from workers.explainers.propagation.gradual_extrapolation import extrapolate

    pattern = torch.zeros(4, 4)
    pattern[1, 2] = 2.0
    pattern[3, 0] = 1.0
    e = torch.stack([pattern, torch.full((4, 4), -5.0)])[None]  # Σ_c e < 0 at every pixel
    coarse = torch.ones(1, 2, 2)
    refined = extrapolate(coarse, [e], quirks=False)[0]
    torch.testing.assert_close(refined, standardised(pattern / 2.0))
    assert refined[1, 2] == 1.0 and refined.max() == 1.0


def test_the_map_keeps_its_peak_where_the_code_would_flatten_it() -> None:
    """The code's clip at ±1σ gives every pixel above mean + 1σ the value 1 (a plateau that
    ties for the maximum); the default clip at ±5σ keeps their order."""
    from workers.explainers.propagation.gradual_extrapolation import standardise

    m = torch.zeros(1, 8, 8)
    m[0, 2:4, 2:4] = torch.tensor([[4.0, 3.0], [2.5, 2.0]])  # all four above mean + 1σ
    refined = standardise(m, quirks=False)[0]
    code = standardise(m, quirks=True)[0]
    assert int((code == 1.0).sum()) == 4  # the plateau
    assert int((refined == 1.0).sum()) == 1 and refined[2, 2] == 1.0
    assert refined[2, 3] > refined[3, 2] > refined[3, 3] > refined[0, 0] == 0.0


def test_the_network_input_is_not_used_as_an_excitation() -> None:
    """A first layer with stride 2 (ResNet-style): E₀ would be the normalised image; skipped."""
    from workers.explainers.propagation.gradual_extrapolation import extrapolate

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    h = handle(model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([0, 1])
    result = explain(h, x, targets, layer="4")
    assert result.meta[0]["excitations"] == 1
    _, maps = cam_maps("gradcam", h, x, targets, "4")
    with torch.no_grad():
        strided = model[0](x)  # pre-activation output of the stride-2 convolution, 8 px
    expected = upsample_to(extrapolate(maps, [strided], quirks=False), 16)
    torch.testing.assert_close(result.saliency, expected, rtol=1e-4, atol=1e-5)
    quirky = explain(h, x, targets, layer="4", reproduce_code_quirks=True)
    assert quirky.meta[0]["excitations"] == 3  # the image, the strided output, the pool


def upsample_to(maps: Tensor, size: int) -> Tensor:
    return torch.nn.functional.interpolate(
        maps[:, None], size=(size, size), mode="bilinear", align_corners=False
    )[:, 0]
