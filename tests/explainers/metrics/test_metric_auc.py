"""The trapezoid AUC on hand-computed curves."""

from __future__ import annotations

import pytest
import torch

from workers.explainers.metrics import trapezoid_auc


def test_hand_computed_curves() -> None:
    # a straight line from 1 to 0: area 1/2
    assert trapezoid_auc(torch.tensor([[1.0, 0.5, 0.0]])).tolist() == pytest.approx([0.5])
    # (0 + 1 + 1 + 1 − 0/2 − 1/2) / 3 = 2.5 / 3
    assert trapezoid_auc(torch.tensor([[0.0, 1.0, 1.0, 1.0]])).item() == pytest.approx(2.5 / 3)
    # a step curve 1,1,0,0,0: (2 − 1/2) / 4
    assert trapezoid_auc(torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])).item() == pytest.approx(0.375)


def test_constant_curve_has_its_value_as_area() -> None:
    curves = torch.full((3, 17), 0.7)
    assert torch.allclose(trapezoid_auc(curves), torch.full((3,), 0.7))


def test_rows_are_independent_and_single_points_allowed() -> None:
    curves = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert trapezoid_auc(curves).tolist() == pytest.approx([0.5, 1.0])
    assert trapezoid_auc(torch.tensor([[0.25]])).tolist() == [0.25]


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        trapezoid_auc(torch.ones(4))
    with pytest.raises(ValueError):
        trapezoid_auc(torch.ones(2, 0))
