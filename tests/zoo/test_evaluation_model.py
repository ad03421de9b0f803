"""The quality benchmark's other evaluation models and their textured and crowded scenes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.demo.scenes import DISTRACTORS, EVAL_SEED, make_scenes
from workers.explainers import get_explainer
from workers.explainers.metrics import pointing_game
from workers.zoo import load_models

MODELS_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / "models.toml"


def test_textured_scenes_have_small_objects_on_gratings() -> None:
    plain = make_scenes(64, seed=5)
    textured = make_scenes(64, seed=5, style="textured")
    assert torch.equal(textured.images, make_scenes(64, seed=5, style="textured").images)
    area = textured.masks.float().mean(dim=(1, 2))
    assert area.min() > 0.004 and area.max() < 0.07  # 1–6 % of the image
    assert area.mean() < 0.5 * plain.masks.float().mean(dim=(1, 2)).mean()

    # the gratings add fine structure: more pixel-to-pixel change in the background
    def roughness(images: torch.Tensor, masks: torch.Tensor) -> float:
        steps = (images[..., 1:] - images[..., :-1]).abs().mean(dim=1)
        return float(steps[~(masks[..., 1:] | masks[..., :-1])].mean())

    assert roughness(textured.images, textured.masks) > 1.3 * roughness(plain.images, plain.masks)
    with pytest.raises(ValueError, match="style"):
        make_scenes(2, seed=0, style="noisy")


def test_crowded_scenes_add_smaller_shapes_of_the_other_classes() -> None:
    """The object is the largest shape; three smaller ones of other classes lie around it
    (painted before it, so the object's mask stays exactly its visible pixels)."""
    crowded = make_scenes(64, seed=5, style="crowded")
    assert torch.equal(crowded.images, make_scenes(64, seed=5, style="crowded").images)
    assert make_scenes(4, seed=5).distractors is None
    area = crowded.masks.float().mean(dim=(1, 2))
    assert area.min() > 0.015 and area.max() < 0.12
    others = crowded.distractors
    assert others is not None and not (others & crowded.masks).any()
    other_area = others.float().mean(dim=(1, 2))
    assert (other_area > 0).float().mean() > 0.95  # hardly ever all hidden by the object
    assert (other_area < DISTRACTORS * area).all()  # each is smaller than the object


@pytest.mark.parametrize(
    ("name", "size", "style"),
    [
        ("shapes_residual", 112, "textured"),
        ("shapes_residual224", 224, "textured"),
        ("shapes_crowded", 112, "crowded"),
    ],
)
def test_the_evaluation_models_classify_their_scenes_and_grad_cam_finds_the_object(
    name: str, size: int, style: str
) -> None:
    handle = load_models(str(MODELS_FILE), torch.device("cpu"))[name]
    assert handle.default_layer == "layer4" and handle.input_size == (size, size)
    scenes = make_scenes(64, seed=EVAL_SEED, size=size, style=style)
    inputs = handle.from_display(scenes.images)
    with torch.inference_mode():
        accuracy = (handle.model(inputs).argmax(dim=1) == scenes.labels).float().mean()
        last_map = handle.model.layer4(
            handle.model.layer3(
                handle.model.layer2(handle.model.layer1(handle.model.stem(inputs[:1])))
            )
        )
    assert last_map.shape[-2:] == (7, 7)  # a ResNet's 7×7 at either size
    assert accuracy >= 0.85  # 93–98 % on 2,048 held-out scenes (models/<name>.json)
    maps = get_explainer("gradcam")(handle, inputs[:16], scenes.labels[:16]).saliency
    assert pointing_game(maps, scenes.masks[:16]).mean() >= 0.75


def test_the_training_blur_is_torchvisions_gaussian_blur() -> None:
    """The training fill (``train_demo.occlude``: the engine's separable blur truncated at
    round(σ)) draws the same image as torchvision's 2-D ``gaussian_blur``, which the first two
    models were trained with."""
    from torchvision.transforms.functional import gaussian_blur as torchvision_blur

    from workers.explainers.perturbation.engine import gaussian_blur

    images = make_scenes(3, seed=1, size=64).images
    expected = torchvision_blur(images, kernel_size=[21, 21], sigma=[10.0, 10.0])
    torch.testing.assert_close(
        gaussian_blur(images, 10.0, truncate=1.0), expected, rtol=0, atol=1e-5
    )
