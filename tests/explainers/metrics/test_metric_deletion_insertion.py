"""Deletion and insertion AUC on a model whose probability curve is known in closed form.

``MaskFractionModel``: p(class 1) = share of the 64-pixel object still present (of 1024
pixels). With 16 pixels per step a curve has 64 steps; the object's mask as saliency removes
the object in the first 4 steps, the inverted mask in the last 4.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.explainers.metrics.known_models import SIZE, handle_for
from workers.explainers.base import ModelHandle
from workers.explainers.metrics import (
    blur,
    default_step,
    deletion_auc,
    deletion_curves,
    insertion_auc,
    saliency_ranks,
    transfer_curves,
)

TARGET = torch.tensor([1])
AREA = 64 / 1024  # the object's share of the image


def test_perfect_and_inverted_maps_give_best_and_worst_deletion(
    fraction_handle: ModelHandle, object_image: Tensor, region: Tensor
) -> None:
    perfect = region.float()[None]
    curve = deletion_curves(fraction_handle, object_image, TARGET, perfect, step=16)
    assert curve.shape == (1, 65)
    assert curve[0, :6].tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0], abs=1e-6)
    best = deletion_auc(fraction_handle, object_image, TARGET, perfect, step=16).item()
    worst = deletion_auc(fraction_handle, object_image, TARGET, 1 - perfect, step=16).item()
    assert best == pytest.approx(AREA / 2, abs=1e-6)  # (2.5 − 0.5) / 64
    assert worst == pytest.approx(1 - AREA / 2, abs=1e-6)  # (61 + 1.5 − 0.5) / 64
    noise = torch.rand(8, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    others = deletion_auc(
        fraction_handle, object_image.expand(8, -1, -1, -1), TARGET.repeat(8), noise, step=16
    )
    assert bool(((others > best) & (others < worst)).all())


def test_constant_map_scores_the_chance_value(
    fraction_handle: ModelHandle, object_image: Tensor
) -> None:
    """Ties are broken at random, so a constant map is a random ranking: E[AUC] = 1/2."""
    flat = torch.full((1, SIZE, SIZE), 3.0)
    scores = [
        deletion_auc(fraction_handle, object_image, TARGET, flat, step=16, seed=seed).item()
        for seed in range(6)
    ]
    assert all(abs(s - 0.5) < 0.15 for s in scores)
    assert sum(scores) / len(scores) == pytest.approx(0.5, abs=0.06)
    assert len(set(scores)) > 1  # the seed picks the order


def test_transfer_from_substrate_is_insertion_mirror(
    fraction_handle: ModelHandle, object_image: Tensor, region: Tensor
) -> None:
    perfect = region.float()[None]
    ranks = saliency_ranks(perfect, (SIZE, SIZE))
    zeros = torch.zeros_like(object_image)
    rising = transfer_curves(fraction_handle, zeros, object_image, TARGET, ranks, 16)
    assert rising[0, :5].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-6)
    ranks_inv = saliency_ranks(1 - perfect, (SIZE, SIZE))
    late = transfer_curves(fraction_handle, zeros, object_image, TARGET, ranks_inv, 16)
    assert late[0, :61].max().item() == pytest.approx(0.0, abs=1e-6)


def test_insertion_starts_from_the_blurred_image(
    fraction_handle: ModelHandle, object_image: Tensor, region: Tensor
) -> None:
    """One step = the 64 object pixels: the curve is q0 then 1 (perfect) or q0 … q0, 1."""
    q0 = blur(object_image)[0, 0][region].mean().item()
    assert 0.1 < q0 < 0.9
    perfect = region.float()[None]
    best = insertion_auc(fraction_handle, object_image, TARGET, perfect, step=64).item()
    worst = insertion_auc(fraction_handle, object_image, TARGET, 1 - perfect, step=64).item()
    assert best == pytest.approx((15.5 + q0 / 2) / 16, abs=1e-5)
    assert worst == pytest.approx((15.5 * q0 + 0.5) / 16, abs=1e-5)


def test_blur_is_the_normalised_gaussian_with_zero_padding() -> None:
    delta = torch.zeros(1, 3, 21, 21)
    delta[:, :, 10, 10] = 1.0
    out = blur(delta)
    g = torch.exp(-(torch.arange(-5.0, 6.0) ** 2) / 50)
    g = g / g.sum()
    assert torch.allclose(out[0, 1, 5:16, 5:16], g[:, None] * g[None, :], atol=1e-6)
    assert out.sum().item() == pytest.approx(3.0, abs=1e-5)
    ones = blur(torch.ones(1, 3, 21, 21))
    assert ones[0, 0, 10, 10].item() == pytest.approx(1.0, abs=1e-6)
    assert ones[0, 0, 0, 0].item() == pytest.approx(g[5:].sum().item() ** 2, abs=1e-6)


def test_coarse_maps_are_resized_and_default_step_matches_rise() -> None:
    assert default_step((224, 224)) == 224
    assert default_step((112, 112)) == 56
    assert default_step((32, 32)) == 5


def test_coarse_map_ranks_like_the_full_map(
    fraction_handle: ModelHandle, object_image: Tensor
) -> None:
    coarse = torch.zeros(1, 8, 8)
    coarse[0, 1:3, 3:5] = 1.0  # the object's 4×4 cells at 1/4 resolution
    score = deletion_auc(fraction_handle, object_image, TARGET, coarse, step=16).item()
    assert score == pytest.approx(AREA / 2, abs=1e-6)


class CountingNet(nn.Module):
    """A small random conv net that records the batch size of every forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        self.calls: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(x.shape[0])
        return self.body(x)


def test_batched_over_images_and_steps_and_independent_of_batching() -> None:
    net = CountingNet()
    handle = handle_for(net)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, SIZE, SIZE, generator=gen)
    maps = torch.rand(3, SIZE, SIZE, generator=gen)
    targets = torch.tensor([0, 2, 1])
    together = deletion_auc(handle, images, targets, maps, step=16, max_batch_size=64)
    assert net.calls == [64, 64, 64, 3]  # 3 images × 65 states, every forward filled
    alone = torch.cat(
        [
            deletion_auc(
                handle,
                images[i : i + 1],
                targets[i : i + 1],
                maps[i : i + 1],
                step=16,
                max_batch_size=7,
            )
            for i in range(3)
        ]
    )
    assert torch.allclose(together, alone, atol=1e-5)
    inserted = insertion_auc(handle, images, targets, maps, step=16)
    assert bool(((inserted >= 0) & (inserted <= 1)).all())


def test_rejects_a_zero_step(fraction_handle: ModelHandle, object_image: Tensor) -> None:
    with pytest.raises(ValueError):
        deletion_auc(fraction_handle, object_image, TARGET, object_image[:, 0], step=0)
