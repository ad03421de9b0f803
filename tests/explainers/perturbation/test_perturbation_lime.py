"""LIME: the surrogate equals scikit-learn's, additive models are recovered, the region that
drives the score gets the mass, and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from tests.explainers.perturbation.perturbation_models import (
    LinearModel,
    RegionModel,
    block_image,
    handle_for,
)
from workers.explainers.perturbation.lime import (
    draw_samples,
    hidden_image,
    kernel_weights,
    lime,
    weighted_ridge,
)
from workers.explainers.perturbation.superpixels import superpixels

SIZE = 32
BOX = (4, 14, 18, 28)


def test_kernel_weights_are_lime_s_cosine_kernel() -> None:
    samples = draw_samples([7, 5], 50, seed=2, width=7)
    got = kernel_weights(samples, [7, 5], 0.25)
    for row, count in enumerate([7, 5]):
        data = samples[row, :, :count].numpy().astype(float)
        distance = pairwise_distances(data, data[0:1], metric="cosine").ravel()
        expected = np.sqrt(np.exp(-(distance**2) / 0.25**2))
        assert np.allclose(got[row].numpy(), expected, atol=1e-10)
    assert samples[:, 0, :5].all() and not samples[1, :, 5:].any()


def test_weighted_ridge_equals_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    z = (torch.rand(2, 80, 6, generator=generator) > 0.5).double()
    y = torch.randn(2, 80, generator=generator, dtype=torch.float64)
    w = torch.rand(2, 80, generator=generator, dtype=torch.float64)
    coef, intercept, r2 = weighted_ridge(z, y, w, alpha=1.0)
    for row in range(2):
        reference = Ridge(alpha=1.0).fit(
            z[row].numpy(), y[row].numpy(), sample_weight=w[row].numpy()
        )
        assert np.allclose(coef[row].numpy(), reference.coef_, atol=1e-10)
        assert abs(intercept[row].item() - reference.intercept_) < 1e-10
        score = reference.score(z[row].numpy(), y[row].numpy(), sample_weight=w[row].numpy())
        assert abs(r2[row].item() - score) < 1e-10


@pytest.mark.parametrize("segmentation", ["quickshift", "slic"])
def test_additive_model_over_superpixels_is_recovered(segmentation: str) -> None:
    # logit = Σ_p W_p x_p; with zero fill, hiding superpixel j removes a_j = Σ_{p∈j} W_p x_p,
    # so y(z) = Σ_j a_j z_j exactly and the surrogate's coefficients are the a_j.
    model = LinearModel(SIZE, seed=7)
    image = block_image(SIZE, BOX)
    labels, counts = superpixels(image, segmentation, 8, seed=0)
    assert counts[0] >= 3
    contribution = (model.weight[1] * image[0]).sum(dim=0).flatten()
    expected = torch.zeros(counts[0]).index_add_(0, labels[0].flatten(), contribution)
    got = lime(
        handle_for(model, SIZE),
        image,
        torch.tensor([1]),
        num_samples=300,
        segmentation=segmentation,
        segments=8,
        fill="zero",
        score="logit",
        alpha=1e-6,
    )
    painted = expected[labels[0]]
    assert torch.allclose(got.saliency[0], painted, atol=1e-3 * expected.abs().max().item())
    assert got.meta[0]["r2"] > 0.999999
    assert got.meta[0]["superpixels"] == counts[0]


def test_mass_goes_to_the_superpixel_that_drives_the_score() -> None:
    # The score depends on one superpixel only, so y(z) = a + b·z_j exactly: every other
    # coefficient is zero up to the ridge's leakage.
    image = block_image(SIZE, BOX)
    labels, _counts = superpixels(image, "quickshift", 8, seed=0)
    region = labels[0] == labels[0, BOX[0], BOX[2]]
    handle = handle_for(RegionModel(region), SIZE)
    got = lime(
        handle,
        image.expand(2, -1, -1, -1),
        torch.tensor([0, 0]),
        num_samples=200,
        segmentation="quickshift",
        fill="zero",
    )
    for row in got.saliency:
        assert row[region].min() > 0.3
        assert row[~region].abs().max() < 0.02 * row[region].min()


def test_local_mean_hides_each_superpixel_behind_its_mean_colour() -> None:
    image = torch.rand(1, 3, SIZE, SIZE)
    labels, counts = superpixels(image, "slic", 6, seed=0)
    hidden = hidden_image(image, labels, counts[0], "local_mean")
    for label in range(counts[0]):
        where = labels[0] == label
        mean = image[0][:, where].mean(dim=1)
        assert torch.allclose(hidden[0][:, where], mean[:, None].expand(3, int(where.sum())))


def test_seed_and_batch_size() -> None:
    handle = handle_for(LinearModel(SIZE, seed=3), SIZE)
    noise = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    blocks = torch.cat([block_image(SIZE, BOX), block_image(SIZE, (20, 30, 2, 12)) * 0.5 + 0.25])
    inputs = 0.95 * blocks + 0.05 * noise  # 4 and 5 superpixels: padding is exercised
    targets = torch.tensor([1, 2])
    params = {"num_samples": 60, "segmentation": "slic", "segments": 10, "score": "logit"}
    big = lime(handle, inputs, targets, seed=5, max_batch_size=64, **params)
    again = lime(handle, inputs, targets, seed=5, max_batch_size=64, **params)
    one = lime(handle, inputs, targets, seed=5, max_batch_size=1, **params)
    alone = lime(handle, inputs[1:], targets[1:], seed=5, max_batch_size=9, **params)
    other = lime(handle, inputs, targets, seed=6, max_batch_size=64, **params)
    assert torch.equal(big.saliency, again.saliency)
    tolerance = 1e-5 * big.saliency.abs().max().item()  # float32 logits summed differently
    assert torch.allclose(big.saliency, one.saliency, rtol=1e-5, atol=tolerance)
    assert torch.allclose(big.saliency[1], alone.saliency[0], rtol=1e-5, atol=tolerance)
    assert [m["superpixels"] for m in big.meta] == [4, 5]
    assert (big.saliency - other.saliency).abs().max() > 1e-2 * big.saliency.abs().max()
