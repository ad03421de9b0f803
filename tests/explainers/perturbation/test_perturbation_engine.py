"""The shared engine: box painting, fills, chunking, progress and cancellation."""

from __future__ import annotations

import pytest
import torch

from tests.explainers.perturbation.perturbation_models import LinearModel, handle_for
from workers.explainers import Cancelled, get_explainer
from workers.explainers.perturbation.engine import (
    Evaluator,
    Fill,
    box_average,
    box_masks,
    occlude,
    paint_boxes,
    precision_used,
    target_scores,
)


def random_boxes(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(count, 4)`` random boxes inside a ``size``² image, some empty."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randint(0, size + 1, (count, 2), generator=generator).sort(dim=1).values
    b = torch.randint(0, size + 1, (count, 2), generator=generator).sort(dim=1).values
    return torch.cat([a, b], dim=1)


def test_paint_boxes_equals_the_sum_of_explicit_masks() -> None:
    boxes = random_boxes(40, 12)
    rows = torch.arange(40) % 3
    values = torch.randn(40)
    masks = box_masks(boxes, (12, 12))[:, 0].double()
    expected = torch.zeros(3, 12, 12, dtype=torch.float64)
    expected.index_add_(0, rows, values.double()[:, None, None] * masks)
    painted = paint_boxes(values, boxes, rows, 3, (12, 12))
    assert torch.allclose(painted, expected, atol=1e-12)
    average, covered = box_average(values, boxes, rows, 3, (12, 12))
    count = torch.zeros(3, 12, 12, dtype=torch.float64).index_add_(0, rows, masks)
    assert torch.equal(covered, count > 0)
    assert torch.allclose(average.double(), expected / count.clamp(min=1), atol=1e-6)


def test_local_mean_fill_is_the_mean_colour_of_each_box() -> None:
    inputs = torch.randn(2, 3, 10, 10)
    boxes = torch.tensor([[1, 4, 2, 9], [0, 10, 0, 10], [5, 6, 7, 8]])
    rows = torch.tensor([0, 1, 1])
    fill = Fill(inputs, "local_mean")
    got = fill.values(rows, boxes)[:, :, 0, 0]
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        expected = inputs[rows[i], :, y0:y1, x0:x1].mean(dim=(1, 2))
        assert torch.allclose(got[i], expected, atol=1e-5)
    occluded = occlude(inputs, fill, rows, boxes)
    assert torch.allclose(occluded[0, :, 1:4, 2:9], got[0][:, None, None].expand(3, 3, 7))
    assert torch.equal(occluded[0, :, 5:, :], inputs[0, :, 5:, :])


def test_blur_fill_keeps_a_constant_image_and_smooths_an_edge() -> None:
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(Fill(flat, "blur").blurred, flat, atol=1e-6)
    edge = torch.zeros(1, 3, 32, 32)
    edge[..., 16:] = 1
    blurred = Fill(edge, "blur").blurred
    assert 0.2 < blurred[0, 0, 5, 15].item() < 0.5 < blurred[0, 0, 5, 16].item() < 0.8


def test_target_scores_and_precision() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 0])
    assert target_scores(logits, targets, "logit").tolist() == [3.0, 0.0]
    probs = target_scores(logits, targets, "prob")
    assert torch.allclose(probs, torch.tensor([logits[0].softmax(0)[2].item(), 1 / 3]))
    assert precision_used(torch.device("cpu"), "float16") == "float32"
    assert precision_used(torch.device("cuda"), "bfloat16") == "bfloat16"


def test_progress_counts_every_evaluation_and_ends_at_the_plan() -> None:
    handle = handle_for(LinearModel(16), 16)
    calls: list[tuple[int, int]] = []
    evaluator = Evaluator(
        handle, torch.tensor([0, 1]), max_batch_size=7, progress=lambda d, t: calls.append((d, t))
    )
    evaluator.planned = 20
    list(evaluator.chunks(20))
    assert [done for done, _ in calls] == [7, 14, 20]
    assert all(total == 20 for _, total in calls)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("occlusion", {"window": 8, "stride": 4}),
        ("fmo", {}),
        ("rise", {"n_masks": 40}),
        ("lime", {"num_samples": 40, "segmentation": "slic", "segments": 6}),
    ],
)
def test_cancellation_stops_between_chunks(method: str, params: dict) -> None:
    handle = handle_for(LinearModel(32), 32)
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done >= 8:
            raise Cancelled

    with pytest.raises(Cancelled):
        get_explainer(method)(
            handle,
            torch.rand(2, 3, 32, 32),
            torch.tensor([0, 1]),
            max_batch_size=4,
            progress=progress,
            **params,
        )
    assert seen == [6, 10]  # the clean pass of both images (2), then chunks of 4
