"""The Grad-CAM × LRP hybrid: its composition, the denoising threshold, the blur, batches."""

from __future__ import annotations

import pytest
import torch

from tests.explainers.propagation.prop_models import bn_cnn, handle_for, images
from workers.explainers import get_explainer
from workers.explainers.cam.common import cam_maps
from workers.explainers.postprocess import normalise, upsample
from workers.explainers.propagation.gradcam_lrp import effective_sigma, gaussian_blur
from workers.explainers.propagation.lrp import lrp_relevance

explain = get_explainer("gradcam_lrp")


def parts(base: str = "gradcam_pp") -> tuple[torch.Tensor, torch.Tensor, object, torch.Tensor]:
    handle = handle_for(bn_cnn())
    x, targets = images(3, seed=7), torch.tensor([0, 2, 4])
    _, cams = cam_maps(base, handle, x, targets, None)
    cam = normalise(upsample(cams, (32, 32)))
    relevance, _ = lrp_relevance(handle, x, targets)
    return cam, relevance.sum(dim=1), handle, (x, targets)


def test_without_threshold_and_blur_it_is_the_cam_times_the_positive_lrp_map() -> None:
    cam, pixel, handle, (x, targets) = parts()
    result = explain(handle, x, targets, threshold=0.0, sigma=0.0)
    torch.testing.assert_close(result.saliency, cam * pixel.clamp(min=0))
    signed = explain(handle, x, targets, threshold=0.0, sigma=0.0, lrp_positive=False)
    torch.testing.assert_close(signed.saliency, cam * pixel)
    assert (signed.saliency < 0).any()
    assert result.meta[0]["base"] == "gradcam_pp" and result.meta[0]["forward_passes"] == 2


def test_the_threshold_removes_the_weak_part_of_the_cam() -> None:
    cam, pixel, handle, (x, targets) = parts("gradcam")
    result = explain(handle, x, targets, base="gradcam", threshold=0.5, sigma=0.0)
    weak = cam < 0.5
    assert weak.any() and (~weak).any()
    assert (result.saliency[weak] == 0).all()
    torch.testing.assert_close(result.saliency[~weak], (cam * pixel.clamp(min=0))[~weak])


def test_the_blur_is_a_normalised_gaussian_of_the_given_sigma() -> None:
    delta = torch.zeros(1, 41, 41)
    delta[0, 20, 20] = 1.0
    sigma = 2.5
    blurred = gaussian_blur(delta, sigma)[0]
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)
    offsets = torch.arange(41.0) - 20
    variance = float((blurred.sum(dim=0) * offsets**2).sum())
    assert variance == pytest.approx(sigma**2, rel=0.02)
    constant = torch.full((2, 9, 9), 3.0)
    torch.testing.assert_close(gaussian_blur(constant, 4.0), constant)  # replicated borders
    assert gaussian_blur(delta, 0.0) is delta


def test_default_sigma_is_two_pixels_at_224_scaled_to_the_input() -> None:
    assert effective_sigma(None, (224, 224)) == 2.0
    assert effective_sigma(None, (112, 160)) == 1.0
    assert effective_sigma(0.5, (224, 224)) == 0.5
    handle = handle_for(bn_cnn())
    result = explain(handle, images(1), torch.tensor([1]))
    assert result.meta[0]["sigma"] == pytest.approx(2 * 32 / 224)


def test_a_batch_with_different_targets_equals_each_image_alone() -> None:
    handle = handle_for(bn_cnn())
    x, targets = images(3, seed=9), torch.tensor([3, 0, 3])
    together = explain(handle, x, targets).saliency
    for i in range(3):
        alone = explain(handle, x[i : i + 1], targets[i : i + 1]).saliency
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-4, atol=1e-7)
