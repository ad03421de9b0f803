"""Fixtures of the metric tests: an object, an image of it and a model that measures it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.explainers.metrics.known_models import (
    SIZE,
    MaskFractionModel,
    handle_for,
    square_region,
)
from workers.explainers.base import ModelHandle


@pytest.fixture
def region() -> Tensor:
    """An 8×8 object (64 of 1024 pixels)."""
    return square_region(4, 12, 8)


@pytest.fixture
def fraction_handle(region: Tensor) -> ModelHandle:
    """The handle of :class:`MaskFractionModel` over ``region``."""
    return handle_for(MaskFractionModel(region))


@pytest.fixture
def object_image(region: Tensor) -> Tensor:
    """``(1, 3, 32, 32)``: channel 0 is 1 on the object, everything else 0."""
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[0, 0][region] = 1.0
    return image
