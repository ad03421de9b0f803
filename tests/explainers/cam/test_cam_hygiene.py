"""The model is left as found: no hooks, no gradients, no growth over hundreds of calls."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest
import torch
from cam_models import images, make_handle

from workers.explainers import get_explainer
from workers.explainers.cam import CAM_METHODS


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_memory_and_hooks_do_not_grow_over_hundreds_of_calls() -> None:
    """A leaked activation (8×96×96 floats = 295 kB a call) would add 59 MB over 200 calls."""
    handle = make_handle()
    x, targets = torch.randn(1, 3, 96, 96), torch.tensor([1])
    gradcam, integrated = get_explainer("gradcam"), get_explainer("integrated_gradcam")

    def run(calls: int) -> None:
        for call in range(calls):
            gradcam(handle, x, targets, layer="features.1")
            if call % 4 == 0:
                integrated(handle, x, targets, layer="features.1", steps=2, max_batch_size=1)

    run(20)
    gc.collect()
    before = rss_bytes()
    run(200)
    gc.collect()
    assert rss_bytes() - before < 16 * 1024 * 1024
    assert hook_count(handle.model) == 0
    # Python objects (tracemalloc slows torch a lot: fewer calls, a tighter bound).
    tracemalloc.start()
    run(4)
    gc.collect()
    start = tracemalloc.get_traced_memory()[0]
    run(20)
    gc.collect()
    growth = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    assert growth < 20 * 1024


@pytest.mark.parametrize("method", CAM_METHODS)
def test_works_inside_an_inference_mode_block_and_on_a_frozen_model(method: str) -> None:
    """The worker may call a gradient job from inside a perturbation job's inference mode."""
    handle = make_handle()
    for parameter in handle.model.parameters():
        parameter.requires_grad_(False)
    x, targets = images(2), torch.tensor([2, 3])
    kwargs = {"n_samples": 2} if method == "smooth_gradcam_pp" else {}
    kwargs.update({"steps": 2} if method == "integrated_gradcam" else {})
    plain = get_explainer(method)(handle, x, targets, **kwargs).saliency
    with torch.inference_mode():
        inside = get_explainer(method)(handle, x.clone(), targets, **kwargs).saliency
    torch.testing.assert_close(plain, inside)
    assert all(not p.requires_grad and p.grad is None for p in handle.model.parameters())
    assert hook_count(handle.model) == 0
