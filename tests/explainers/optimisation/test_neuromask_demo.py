"""NeuroMask on a trained model it was not written for: the defaults find the object, the
authors' code setting finds an adversarial mask off it (the docstring's figures, in small)."""

from __future__ import annotations

import pytest
import torch

from workers.demo.scenes import EVAL_SEED, make_scenes
from workers.explainers import get_explainer
from workers.explainers.metrics import pointing_game
from workers.zoo import load_models

CODE_SETTING = {
    "fill": "black", "init_limit": 10.0, "mask_sigma": 0.0, "sparsity_growth": 1.0,
    "keep_prediction": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    handle = load_models(None, torch.device("cpu"))["shapes"]
    scenes = make_scenes(4, seed=EVAL_SEED)
    return handle, handle.from_display(scenes.images), scenes.labels, scenes.masks


def test_the_defaults_point_at_the_object_and_the_code_setting_does_not(demo) -> None:  # type: ignore[no-untyped-def]
    handle, inputs, labels, masks = demo
    explain = get_explainer("neuromask")
    defaults = explain(handle, inputs, labels, iterations=500).saliency
    code = explain(handle, inputs, labels, iterations=500, **CODE_SETTING).saliency
    assert pointing_game(defaults, masks).mean() >= 0.75
    assert pointing_game(code, masks).mean() <= 0.25
    # the mask's mass is on the object, not only its maximum
    on_object = [float(defaults[i][masks[i]].mean()) for i in range(4)]
    off_object = [float(defaults[i][~masks[i]].mean()) for i in range(4)]
    assert all(on > 2 * off for on, off in zip(on_object, off_object, strict=True))
