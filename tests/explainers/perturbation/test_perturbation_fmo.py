"""FMO (reconstruction): exhaustive limits equal occlusion; the default search is cheap and
stays on the region that drives the score."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.explainers.perturbation.perturbation_models import (
    LinearModel,
    RegionModel,
    TinyConvNet,
    box_mask,
    handle_for,
)
from workers.explainers import ExplainerError
from workers.explainers.perturbation.fmo import fmo
from workers.explainers.perturbation.fmo_levels import Grid, plan_grids, select_windows
from workers.explainers.perturbation.occlusion import occlusion

SIZE = 64


@pytest.fixture
def positive_linear() -> tuple:
    """A linear model with positive weights on positive inputs: every occlusion drops the
    logit, so FMO's ReLU on drops changes nothing and occlusion is the exact reference."""
    model = LinearModel(SIZE, seed=4, positive=True)
    inputs = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    return handle_for(model, SIZE), inputs, torch.tensor([0, 2])


def test_select_all_reproduces_exhaustive_occlusion_at_the_finest_level(positive_linear) -> None:
    handle, inputs, targets = positive_linear
    got = fmo(
        handle,
        inputs,
        targets,
        select="all",
        combine="finest",
        border=False,
        score="logit",
        max_batch_size=50,
    )
    # finest grid: 16 cells of 4 px; window 2 cells = 8 px, stride 1 cell = 4 px
    reference = occlusion(handle, inputs, targets, window=8, stride=4, score="logit")
    assert torch.allclose(got.saliency, reference.saliency, rtol=1e-5, atol=1e-4)
    assert got.meta[0]["windows_per_level"] == [9, 49, 225]
    assert got.meta[0]["forward_passes"] == 1 + 9 + 49 + 225


def test_select_all_with_refine_is_the_mean_of_the_occlusion_levels(positive_linear) -> None:
    handle, inputs, targets = positive_linear
    got = fmo(handle, inputs, targets, select="all", border=False, score="logit")
    levels = [
        occlusion(handle, inputs, targets, window=2 * cell, stride=cell, score="logit").saliency
        for cell in (16, 8, 4)
    ]
    assert torch.allclose(got.saliency, sum(levels) / 3, rtol=1e-5, atol=1e-4)


def test_border_windows_cover_every_cell_window_squared_times() -> None:
    grid = plan_grids((SIZE, SIZE), None, 3, 4, 2, True)[0]
    assert grid.shape == (5, 5)
    boxes = grid.boxes(torch.device("cpu"))
    coverage = torch.zeros(SIZE, SIZE)
    for y0, y1, x0, x1 in boxes.tolist():
        coverage[y0:y1, x0:x1] += 1
    assert torch.all(coverage == 4)
    assert boxes[0].tolist() == [0, 16, 0, 16]  # the top-left window hangs over the corner


def test_default_rule_is_cheap_and_peaks_on_the_driving_region() -> None:
    box = (40, 52, 8, 20)
    handle = handle_for(RegionModel(box_mask(SIZE, box)), SIZE)
    inputs = torch.ones(2, 3, SIZE, SIZE)
    targets = torch.tensor([0, 0])
    got = fmo(handle, inputs, targets, max_batch_size=32)
    exhaustive = fmo(handle, inputs, targets, select="all", max_batch_size=32)
    passes = got.meta[0]["forward_passes"]
    assert exhaustive.meta[0]["forward_passes"] == 1 + 25 + 81 + 289
    assert passes < 0.4 * exhaustive.meta[0]["forward_passes"]
    assert got.meta[0]["windows_per_level"][0] == 25
    inside = box_mask(SIZE, box)
    for row in range(2):
        peak = got.saliency[row].flatten().argmax()
        assert inside.flatten()[peak]
        assert got.saliency[row][~inside].max() < got.saliency[row][inside].max()


@pytest.mark.parametrize("select", ["mean", "topk"])
@pytest.mark.parametrize("combine", ["sum", "refine", "depth"])
def test_other_rules_also_find_the_region(select: str, combine: str) -> None:
    box = (8, 20, 36, 48)
    handle = handle_for(RegionModel(box_mask(SIZE, box)), SIZE)
    inputs = box_mask(SIZE, box).float().expand(1, 3, SIZE, SIZE)  # bright box, dark rest
    got = fmo(
        handle,
        inputs,
        torch.tensor([0]),
        select=select,
        combine=combine,
        select_stat="mean",
        fill="blur",
        smoothing=0.5,
    )
    assert box_mask(SIZE, box).flatten()[got.saliency[0].flatten().argmax()]
    assert got.meta[0]["forward_passes"] < 1 + 25 + 81 + 289


def test_topk_keeps_the_requested_fraction() -> None:
    grid = Grid((0, 8, 16, 24, 32), (0, 8, 16, 24, 32), 2, True)
    current = torch.rand(3, 32, 32)
    keep = select_windows(current, grid, "topk", "max", 0.2)
    assert keep.sum(dim=1).tolist() == [5, 5, 5]  # ⌈0.2 · 25⌉
    flat = select_windows(torch.zeros(1, 32, 32), grid, "midrange", "max", 0.2)
    assert not flat.any()  # nothing mattered: stop


def test_window_stats_match_a_direct_reduction() -> None:
    grid = Grid((0, 5, 11, 16), (0, 6, 10, 16), 2, True)
    maps = torch.randn(2, 16, 16)
    boxes = grid.boxes(torch.device("cpu"))
    for stat in ("max", "mean"):
        got = grid.window_stats(maps, stat)
        for index, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
            region = maps[:, y0:y1, x0:x1].flatten(1)
            expected = region.max(dim=1).values if stat == "max" else region.mean(dim=1)
            assert torch.allclose(got[:, index], expected, atol=1e-6)


def test_grids_adapt_to_the_input_size() -> None:
    assert [g.cells for g in plan_grids((224, 224), None, 3, 4, 2, True)] == [
        (4, 4),
        (8, 8),
        (16, 16),
    ]
    assert [g.cells for g in plan_grids((32, 32), None, 3, 4, 2, True)] == [(4, 4), (8, 8)]
    assert [g.cells for g in plan_grids((112, 224), None, 2, 4, 2, True)] == [(4, 8), (8, 16)]
    with pytest.raises(ExplainerError):
        plan_grids((12, 12), [8, 16], 3, 4, 2, True)


def test_batch_size_and_progress(positive_linear) -> None:
    handle = handle_for(TinyConvNet(), 32)
    inputs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 2, 3])
    calls: list[tuple[int, int]] = []
    big = fmo(
        handle, inputs, targets, max_batch_size=64, progress=lambda d, t: calls.append((d, t))
    )
    one = fmo(handle, inputs, targets, max_batch_size=1)
    assert torch.allclose(big.saliency, one.saliency, atol=1e-6)
    assert [m["windows_per_level"] for m in big.meta] == [m["windows_per_level"] for m in one.meta]
    total = sum(m["forward_passes"] for m in big.meta)
    assert calls[-1] == (total, total)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(calls))


def test_depth_ranks_deeper_pixels_first() -> None:
    box = (40, 52, 8, 20)
    handle = handle_for(RegionModel(box_mask(SIZE, box)), SIZE)
    inputs = torch.ones(1, 3, SIZE, SIZE)
    refine = fmo(handle, inputs, torch.tensor([0]))
    depth = fmo(handle, inputs, torch.tensor([0]), combine="depth")
    assert depth.meta == refine.meta  # same search, only the output differs
    levels = depth.saliency[0].floor()  # = number of levels that probed each pixel
    assert levels.max() == 3 and levels.min() == 1
    deepest = levels == 3
    assert deepest[box_mask(SIZE, box)].all()  # the search followed the region to the end
    assert depth.saliency[0][deepest].min() > depth.saliency[0][~deepest].max()
