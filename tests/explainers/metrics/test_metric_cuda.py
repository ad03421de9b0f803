"""The metrics on CUDA, in half precision, agree with the CPU (skipped without CUDA)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from workers.explainers.base import ModelHandle
from workers.explainers.metrics import evaluate, pointing_game, spearman


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_matches_cpu(
    fraction_handle: ModelHandle, object_image: Tensor, region: Tensor
) -> None:
    maps = torch.stack([region.float(), 1 - region.float()])
    inputs = object_image.expand(2, -1, -1, -1)
    targets = torch.tensor([1, 1])
    on_cpu = evaluate(fraction_handle, inputs, targets, maps, ["deletion", "insertion"], step=16)
    cuda = torch.device("cuda")
    half = dataclasses.replace(fraction_handle, model=fraction_handle.model.to(cuda).half())
    on_gpu = evaluate(
        half,
        inputs.to(cuda).half(),
        targets.to(cuda),
        maps.to(cuda),
        ["deletion", "insertion"],
        step=16,
    )
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert a == pytest.approx(b, abs=5e-3)
    regions = region[None].expand(2, -1, -1)
    assert torch.equal(
        pointing_game(maps, regions), pointing_game(maps.to(cuda), regions.to(cuda)).cpu()
    )
    assert torch.allclose(
        spearman(maps, maps.flip(0)), spearman(maps.to(cuda), maps.flip(0).to(cuda)).cpu()
    )
