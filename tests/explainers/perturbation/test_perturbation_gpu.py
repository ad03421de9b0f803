"""CUDA: the half-precision paths run and agree with float32 (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests.explainers.perturbation.perturbation_models import TinyConvNet, handle_for
from workers.explainers import get_explainer

CUDA = torch.cuda.is_available()
# Logit scores: this small random network's softmax probabilities all sit near 1/K and differ
# by less than a half-precision step, so a probability score would compare rounding noise.
CHEAP = {
    "occlusion": {"window": 8, "stride": 4, "score": "logit"},
    "fmo": {"score": "logit"},
    "rise": {"n_masks": 200},
    "lime": {"num_samples": 100, "segmentation": "slic", "segments": 8, "score": "logit"},
}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CHEAP))
def test_half_precision_agrees_with_float32(name: str, precision: str) -> None:
    handle = handle_for(TinyConvNet().cuda(), 32)
    # Blocky images (4×4 colour cells): SLIC finds one superpixel in pure noise.
    cells = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    inputs = torch.nn.functional.interpolate(cells, size=(32, 32), mode="nearest").cuda()
    targets = torch.tensor([0, 1], device="cuda")
    explain = get_explainer(name)
    full = explain(handle, inputs, targets, **CHEAP[name])
    half = explain(handle, inputs, targets, precision=precision, **CHEAP[name])
    assert half.meta[0]["precision"] == precision
    a, b = full.saliency.flatten(1), half.saliency.flatten(1)
    correlation = torch.nn.functional.cosine_similarity(
        a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    )
    assert (correlation > 0.9).all()
