"""The synthetic scenes and the bundled demo model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from workers.demo.scenes import CLASSES, EVAL_SEED, make_scenes
from workers.zoo import ASSETS, load_models, model_info


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(48, seed=EVAL_SEED + 11)


def test_same_seed_same_scenes_other_seed_other_scenes() -> None:
    a, b = make_scenes(6, seed=42), make_scenes(6, seed=42)
    for field in ("images", "labels", "masks", "boxes"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.images, make_scenes(6, seed=43).images)


def test_shapes_and_ranges(scenes) -> None:
    assert scenes.images.shape == (48, 3, 112, 112) and scenes.images.dtype == torch.float32
    assert scenes.images.min() >= 0 and scenes.images.max() <= 1
    assert scenes.labels.dtype == torch.long and set(scenes.labels.tolist()) <= {0, 1, 2, 3, 4}
    assert scenes.masks.shape == (48, 112, 112) and scenes.masks.dtype == torch.bool
    assert scenes.boxes.shape == (48, 4) and scenes.boxes.dtype == torch.long
    small = make_scenes(3, seed=1, size=64)
    assert small.images.shape == (3, 3, 64, 64) and small.masks.shape == (3, 64, 64)
    assert CLASSES == ("disc", "square", "triangle", "cross", "ring")


def test_boxes_are_the_masks_bounding_boxes(scenes) -> None:
    for mask, box in zip(scenes.masks, scenes.boxes, strict=True):
        ys, xs = mask.nonzero(as_tuple=True)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box.tolist() == [int(v) for v in expected]
        assert box[0] > 0 and box[2] < 112 and box[1] > 0 and box[3] < 112  # fully inside


def test_masks_cover_exactly_the_drawn_object(scenes) -> None:
    """Inside the mask: one colour plus shading (≤ 0.1) and noise (σ ≤ 0.06); a 1-pixel ring
    just outside the mask differs from it (the object is drawn with contrast)."""
    for image, mask in zip(scenes.images, scenes.masks, strict=True):
        inside = image[:, mask]  # (3, pixels)
        spread = (inside - inside.median(dim=1, keepdim=True).values).abs()
        assert spread.median() < 0.06
        grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0
        border = image[:, grown & ~mask]
        luma = torch.tensor([0.299, 0.587, 0.114])
        contrast = (luma @ inside).median() - (luma @ border).median()
        assert contrast.abs() > 0.05


def test_shape_geometry(scenes) -> None:
    """Known answers: a disc fills π/4 of its box, a ring ~0.55 of it with an empty centre,
    a cross and a disc cover their centre."""
    for label, mask, box in zip(scenes.labels, scenes.masks, scenes.boxes, strict=True):
        x0, y0, x1, y1 = box.tolist()
        fill = mask.sum().item() / ((x1 - x0) * (y1 - y0))
        centre = mask[(y0 + y1) // 2, (x0 + x1) // 2].item()
        name = CLASSES[label]
        if name == "disc":
            assert fill == pytest.approx(math.pi / 4, abs=0.06) and centre
        if name == "ring":
            assert fill == pytest.approx(math.pi / 4 * (1 - 0.55**2), abs=0.06) and not centre
        if name == "cross":
            assert centre


def test_demo_model_is_served_by_default() -> None:
    handles = load_models(None, torch.device("cpu"))
    assert list(handles) == ["shapes"]
    info = model_info(handles["shapes"])
    assert info.input_size == (112, 112)
    assert info.labels == list(CLASSES)
    assert info.default_layer == "features.5"
    assert "features.5" in info.layers


def test_demo_model_classifies_held_out_scenes() -> None:
    handle = load_models(None, torch.device("cpu"))["shapes"]
    scenes = make_scenes(64, seed=EVAL_SEED + 3)
    with torch.inference_mode():
        predicted = handle.model(handle.from_display(scenes.images)).argmax(1)
    assert (predicted == scenes.labels).float().mean() >= 0.9


def test_demo_assets_are_small_and_describe_the_training() -> None:
    assert (ASSETS / "shapes.pt").stat().st_size < 2 * 1024 * 1024
    facts = json.loads(Path(ASSETS / "shapes.json").read_text(encoding="utf-8"))
    assert facts["labels"] == list(CLASSES)
    assert facts["evaluation"]["clean_accuracy"] > 0.95


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_demo_model_on_cuda_matches_cpu() -> None:
    cpu = load_models(None, torch.device("cpu"))["shapes"]
    cuda = load_models(None, torch.device("cuda"))["shapes"]
    assert cuda.device.type == "cuda"
    images = make_scenes(8, seed=EVAL_SEED + 5).images
    with torch.inference_mode():
        expected = cpu.model(cpu.from_display(images))
        got = cuda.model(cuda.from_display(images.cuda())).cpu()
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-3)
