"""CUDA: models as the zoo prepares them there (channels-last weights) give the CPU's maps.

The zoo stores models channels-last on CUDA, which changes their autograd graphs (views become
``as_strided``): LRP once refused every model there. Each family is checked end to end: the
automatic layer, the methods the worker says the model supports, and the maps against the
same model on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.explainers import get_explainer
from workers.support import unsupported_methods
from workers.zoo import load_models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
MODELS = """
[[models]]
name = "resnet"
torchvision = "resnet18"
weights = "none"
num_classes = 10
input_size = [96, 96]

[[models]]
name = "swin"
torchvision = "swin_t"
weights = "none"
num_classes = 10
input_size = [96, 96]
"""
METHODS = {"gradcam": {}, "layercam": {}, "scorecam": {}, "lrp": {}, "gradcam_lrp": {},
           "occlusion": {"window": 16, "stride": 16}, "rise": {"n_masks": 64}}  # fmt: skip


@pytest.mark.parametrize("name", ["resnet", "swin"])
def test_cuda_models_match_the_cpu(tmp_path: Path, name: str) -> None:
    (tmp_path / "models.toml").write_text(MODELS)
    torch.manual_seed(0)
    cpu = load_models(str(tmp_path / "models.toml"), torch.device("cpu"))[name]
    torch.manual_seed(0)
    cuda = load_models(str(tmp_path / "models.toml"), torch.device("cuda"))[name]
    assert cuda.resolve_layer(None)[0] == cpu.resolve_layer(None)[0]
    refused = unsupported_methods(cuda)
    assert refused == unsupported_methods(cpu)
    if name == "resnet":
        assert refused == {}
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 4])
    for method, params in METHODS.items():
        if method in refused:
            continue
        want = get_explainer(method)(cpu, cpu.from_display(x), targets, **params).saliency
        got = get_explainer(method)(cuda, cuda.from_display(x.cuda()), targets.cuda(), **params)
        a, b = want.flatten(1), got.saliency.cpu().flatten(1)
        blank = (a.std(dim=1) == 0) & (b.std(dim=1) == 0)  # negative evidence everywhere
        r = torch.nn.functional.cosine_similarity(a - a.mean(1, keepdim=True),
                                                  b - b.mean(1, keepdim=True))  # fmt: skip
        assert bool(((r > 0.99) | blank).all()), (method, r)
