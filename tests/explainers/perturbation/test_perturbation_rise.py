"""RISE: mask statistics, the expectation identity, localisation and seeding."""

from __future__ import annotations

import torch

from tests.explainers.perturbation.perturbation_models import (
    RegionModel,
    TinyConvNet,
    box_mask,
    handle_for,
)
from workers.explainers.perturbation.rise import draw_grids, rise, upsample_masks

SIZE = 32


def test_masks_are_smooth_shifted_and_keep_a_fraction_p() -> None:
    grids, shifts = draw_grids(2000, 4, 0.3, seed=1, size=(SIZE, SIZE))
    assert shifts.min() >= 0 and shifts.max() < SIZE // 4
    masks = upsample_masks(grids, shifts, (SIZE, SIZE))
    assert masks.shape == (2000, SIZE, SIZE)
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert ((masks > 0.01) & (masks < 0.99)).float().mean() > 0.2  # bilinear, not binary
    assert abs(masks.mean().item() - 0.3) < 0.02
    # an all-ones grid gives an all-ones mask whatever the shift
    ones = upsample_masks(
        torch.ones(2, 4, 4, dtype=torch.bool), torch.tensor([[0, 0], [7, 3]]), (SIZE, SIZE)
    )
    assert torch.allclose(ones, torch.ones_like(ones))


class ConstantModel(torch.nn.Module):
    """The same logits for every input."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.5, 1.5, -1.0]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_constant_model_gives_its_probability_everywhere() -> None:
    # S(u) = P · mean_i M_i(u) / p and E[M(u)] = p, so S ≈ P at every pixel.
    handle = handle_for(ConstantModel(), SIZE)
    got = rise(handle, torch.rand(1, 3, SIZE, SIZE), torch.tensor([1]), n_masks=3000, cells=4)
    prob = ConstantModel().logits.softmax(0)[1].item()
    assert abs(got.saliency.mean().item() - prob) < 0.01 * prob
    assert got.saliency.std().item() < 0.05 * prob


def test_mass_goes_to_the_region_that_drives_the_score() -> None:
    box = (4, 12, 18, 28)
    handle = handle_for(RegionModel(box_mask(SIZE, box)), SIZE)
    got = rise(handle, torch.ones(2, 3, SIZE, SIZE), torch.tensor([0, 0]), n_masks=600, cells=4)
    inside = box_mask(SIZE, box)
    far = torch.ones(SIZE, SIZE, dtype=torch.bool)
    far[: box[1] + 8, box[2] - 8 :] = False  # more than a cell away from the box
    for row in got.saliency:
        assert inside.flatten()[row.flatten().argmax()]
        assert row[inside].mean() - row[far].mean() > 0.1


def test_seed_and_batch_size() -> None:
    handle = handle_for(TinyConvNet(), SIZE)
    inputs = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 2])
    params = {"n_masks": 100, "cells": 4}
    big = rise(handle, inputs, targets, seed=3, max_batch_size=64, **params)
    again = rise(handle, inputs, targets, seed=3, max_batch_size=64, **params)
    one = rise(handle, inputs, targets, seed=3, max_batch_size=1, **params)
    alone = rise(handle, inputs[1:], targets[1:], seed=3, max_batch_size=7, **params)
    other = rise(handle, inputs, targets, seed=4, max_batch_size=64, **params)
    assert torch.equal(big.saliency, again.saliency)
    assert torch.allclose(big.saliency, one.saliency, rtol=1e-5, atol=1e-6)
    assert torch.allclose(big.saliency[1], alone.saliency[0], rtol=1e-5, atol=1e-6)
    assert (big.saliency - other.saliency).abs().max() > 1e-3
    assert big.meta[0]["forward_passes"] == 101  # the clean pass + 100 masks
