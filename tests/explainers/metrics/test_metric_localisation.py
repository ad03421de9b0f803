"""Pointing game and energy-based pointing game on maps with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.explainers.metrics.known_models import SIZE, square_region
from workers.explainers.metrics import (
    boxes_to_masks,
    energy_pointing_game,
    near_region,
    pointing_game,
    pointing_tolerance,
)


def distance_from(region: Tensor) -> Tensor:
    """``(H, W)`` Euclidean distance of every pixel to the nearest region pixel."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(region.shape[0]), torch.arange(region.shape[1]), indexing="ij"
    )
    d2 = (grid_y[..., None] - ys) ** 2 + (grid_x[..., None] - xs) ** 2
    return d2.min(dim=-1).values.float().sqrt()


def test_tolerance_is_15_pixels_at_224_scaled() -> None:
    assert pointing_tolerance((224, 224)) == 15.0
    assert pointing_tolerance((112, 112)) == 7.5
    assert pointing_tolerance((112, 448)) == 7.5  # the shorter side


def test_near_region_is_a_strict_disc() -> None:
    dot = torch.zeros(1, 9, 9, dtype=torch.bool)
    dot[0, 4, 4] = True
    # distance < 2: the 3×3 block (√2 < 2) but not (±2, 0), which is at exactly 2
    assert near_region(dot, 2.0).sum().item() == 9
    # distance < 7.5 from one pixel: every offset with dy² + dx² < 56.25
    expected = sum(1 for dy in range(-8, 9) for dx in range(-8, 9) if dy * dy + dx * dx < 56.25)
    big = torch.zeros(1, 21, 21, dtype=torch.bool)
    big[0, 10, 10] = True
    assert near_region(big, 7.5).sum().item() == expected
    d = distance_from(square_region(4, 12, 8)[None][0])
    assert torch.equal(near_region(square_region(4, 12, 8)[None], 3.0)[0], d < 3.0)


def test_pointing_perfect_inverted_and_constant_maps(region: Tensor) -> None:
    regions = region[None].expand(3, -1, -1)
    perfect = region.float()
    inverted = distance_from(region)  # the maximum is the pixel farthest from the object
    constant = torch.full((SIZE, SIZE), 0.2)
    scores = pointing_game(torch.stack([perfect, inverted, constant]), regions, tolerance=3.0)
    chance = near_region(region[None], 3.0).float().mean().item()
    assert scores.tolist() == pytest.approx([1.0, 0.0, chance])
    assert 0 < chance < 1


def test_hit_is_strictly_within_the_tolerance(region: Tensor) -> None:
    # the object spans columns 12..19; a peak on row 6 at column 22 is 3 px from column 19
    near, far = torch.zeros(SIZE, SIZE), torch.zeros(SIZE, SIZE)
    near[6, 21] = 1.0  # 2 px away: hit
    far[6, 22] = 1.0  # exactly 3 px away: miss
    scores = pointing_game(torch.stack([near, far]), region[None].expand(2, -1, -1), 3.0)
    assert scores.tolist() == [1.0, 0.0]


def test_shared_maximum_scores_the_share_that_hits(region: Tensor) -> None:
    two = torch.zeros(SIZE, SIZE)
    two[8, 15] = 1.0  # inside the object
    two[30, 2] = 1.0  # far away
    assert pointing_game(two[None], region[None], 3.0).item() == 0.5


def test_pointing_default_tolerance_and_coarse_maps(region: Tensor) -> None:
    coarse = torch.zeros(1, 8, 8)
    coarse[0, 0, 7] = 1.0  # top-right corner cell, ~11 px from the object at 32 px
    assert pointing_game(coarse, region[None]).item() == 0.0  # tolerance 32·15/224 ≈ 2.1
    assert pointing_game(coarse, region[None], tolerance=20.0).item() == 1.0


def test_energy_perfect_inverted_constant_and_half(region: Tensor) -> None:
    perfect = region.float() + 5.0  # an offset is removed by the min-max normalisation
    inverted = 1.0 - region.float()
    constant = torch.full((SIZE, SIZE), 7.0)
    half = region.float().clone()
    half[20:28, 0:8] = 1.0  # as much mass again outside
    scores = energy_pointing_game(
        torch.stack([perfect, inverted, constant, half]), region[None].expand(4, -1, -1)
    )
    assert scores.tolist() == pytest.approx([1.0, 0.0, 64 / 1024, 0.5])


def test_energy_ignores_nan_and_uses_boxes() -> None:
    boxes = torch.tensor([[1, 2, 4, 3]])  # x0, y0, x1, y1 (exclusive): row 2, columns 1..3
    box = boxes_to_masks(boxes, (5, 5))
    assert box.shape == (1, 5, 5)
    assert torch.nonzero(box[0]).tolist() == [[2, 1], [2, 2], [2, 3]]
    sal = torch.zeros(1, 5, 5)
    sal[0, 2, 1:4] = 1.0
    sal[0, 0, 0] = float("nan")
    assert energy_pointing_game(sal, box).item() == pytest.approx(1.0)
    assert pointing_game(sal, box, 0.5).item() == 1.0
