"""``evaluate``: what the worker calls for a job that asks ``evaluate``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from app.contract.metrics import EVALUATIONS
from workers.explainers.base import ExplainerError, ModelHandle
from workers.explainers.metrics import METRICS, deletion_auc, evaluate, insertion_auc

AREA = 64 / 1024


def test_names_match_the_contract() -> None:
    assert set(METRICS) == set(EVALUATIONS)


def test_one_dict_per_row_with_the_requested_names(
    fraction_handle: ModelHandle, object_image: Tensor, region: Tensor
) -> None:
    inputs = object_image.expand(2, -1, -1, -1)
    targets = torch.tensor([1, 1])
    maps = torch.stack([region.float(), 1 - region.float()])
    rows = evaluate(fraction_handle, inputs, targets, maps, ["deletion"], max_batch_size=None)
    assert [set(r) for r in rows] == [{"deletion"}, {"deletion"}]
    # default step at 32×32: 5 pixels, 205 steps; the object (64 px) goes in 12.8 steps
    assert rows[0]["deletion"] < 0.05 < 0.9 < rows[1]["deletion"]
    both = evaluate(fraction_handle, inputs, targets, maps, ["insertion", "deletion", "insertion"])
    assert [set(r) for r in both] == [{"deletion", "insertion"}] * 2
    assert both[0]["deletion"] == pytest.approx(rows[0]["deletion"])
    expected = insertion_auc(fraction_handle, inputs, targets, maps)
    assert [r["insertion"] for r in both] == pytest.approx(expected.tolist())
    assert both[0]["insertion"] > both[1]["insertion"]


def test_step_reaches_the_metric(
    fraction_handle: ModelHandle, object_image: Tensor, region: Tensor
) -> None:
    rows = evaluate(
        fraction_handle,
        object_image,
        torch.tensor([1]),
        region[None].float(),
        ["deletion"],
        step=16,
    )
    assert rows[0]["deletion"] == pytest.approx(AREA / 2, abs=1e-6)
    direct = deletion_auc(
        fraction_handle, object_image, torch.tensor([1]), region[None].float(), step=16
    )
    assert rows[0]["deletion"] == pytest.approx(direct.item())


def test_unknown_name_is_a_client_error(fraction_handle: ModelHandle, object_image: Tensor) -> None:
    with pytest.raises(ExplainerError, match="pointing"):
        evaluate(fraction_handle, object_image, torch.tensor([1]), object_image[:, 0], ["pointing"])
