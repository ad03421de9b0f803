"""The cascading randomisation benchmark's known answers (``benchmarks/sanity.py``)."""

from __future__ import annotations

import torch

from benchmarks.sanity import cascade, image_edges
from workers.demo.scenes import EVAL_SEED, make_scenes
from workers.zoo import load_models


def test_the_classifier_alone_leaves_the_activation_energy_and_the_cascade_reaches_the_input() -> (
    None
):
    handle = load_models(None, torch.device("cpu"))["shapes"]
    scenes = make_scenes(2, seed=EVAL_SEED)
    layers, rows, versus_energy = cascade(
        handle, handle.from_display(scenes.images), scenes.labels, seed=0
    )
    assert layers[0] == "classifier" and layers[-1] == "features.0.0"
    assert all(len(values) == len(layers) for values in rows.values())
    # the CAM layer's activations do not depend on the classifier above it
    assert rows["activation energy"][0][0] > 0.999
    # Grad-CAM's signed weights come from the classifier: re-initialising it changes the map
    assert rows["gradcam"][0][0] < 0.7
    assert versus_energy["scorecam"] > 0.9  # the methods' nature the benchmark documents
    # randomising the layers below the CAM layer is what moves the activation-energy-like maps
    for name in ("gradcam_pp", "layercam", "scorecam", "activation energy"):
        assert rows[name][-1][0] < rows[name][0][0] - 0.3


def test_image_edges_peak_on_a_step() -> None:
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    edges = image_edges(image)[0]
    assert edges[:, 3:5].min() > 0 and edges[:, :2].max() == 0 and edges[:, 6:].max() == 0
