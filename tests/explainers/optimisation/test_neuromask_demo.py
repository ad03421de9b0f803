"""NeuroMask on a trained model it was not written for: the defaults find the object, the
authors' code setting finds an adversarial mask off it (the docstring's figures, in small)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.demo.scenes import EVAL_SEED, make_scenes
from workers.explainers import get_explainer
from workers.explainers.metrics import boxes_to_masks, energy_pointing_game, pointing_game
from workers.zoo import load_models

MODELS_FILE = Path(__file__).resolve().parents[3] / "benchmarks" / "quality" / "models.toml"

CODE_SETTING = {
    "fill": "black", "init_limit": 10.0, "mask_sigma": 0.0, "sparsity_growth": 1.0,
    "keep_prediction": 0.0, "jitter": 0, "cap_prediction": False,
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


def test_a_growing_sparsity_weight_drops_the_margin_around_small_objects() -> None:
    """On ``shapes_residual`` (small objects on textured scenes), a constant λ_sparse = 16 keeps
    a margin of context around the object and its maximum falls off it; the default (growing
    weight, the sparsest mask that held the prediction) keeps less, points at the object and
    puts more of its mass in the object's box."""
    handle = load_models(MODELS_FILE, torch.device("cpu"))["shapes_residual"]
    scenes = make_scenes(6, seed=EVAL_SEED, style="textured")
    inputs, labels, masks = handle.from_display(scenes.images), scenes.labels, scenes.masks
    explain = get_explainer("neuromask")
    grown = explain(handle, inputs, labels, iterations=500).saliency
    constant = explain(
        handle, inputs, labels, iterations=500, sparsity_growth=1.0, keep_prediction=0.0
    ).saliency
    kept, kept_constant = (grown > 0.5).flatten(1).sum(1), (constant > 0.5).flatten(1).sum(1)
    assert (kept < 0.4 * kept_constant).all()  # 168–422 px against 646–2592 px
    assert (masks.flatten(1).sum(1) < kept_constant).all()  # the margin: more than the object
    assert pointing_game(grown, masks).sum() >= 5
    boxes = boxes_to_masks(scenes.boxes, (112, 112))
    energy = energy_pointing_game(grown, boxes)
    energy_constant = energy_pointing_game(constant, boxes)
    assert energy.mean() > energy_constant.mean() + 0.2, (energy, energy_constant)
