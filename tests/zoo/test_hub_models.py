"""timm and Hugging Face models from local files: built without any download, preprocessing
and labels from the library, the CAM layer found by the probe (token grids for the ViTs), the
weights really loaded (same maps as the model they were saved from)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.explainers import get_explainer
from workers.zoo import ModelsFileError, load_models

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def serve(folder: Path, entry: str) -> dict:  # type: ignore[type-arg]
    (folder / "models.toml").write_text("[[models]]\n" + entry, encoding="utf-8")
    return load_models(str(folder / "models.toml"), torch.device("cpu"))


def test_a_timm_cnn_with_weights_from_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    torch.save(original.state_dict(), tmp_path / "r.pt")
    handle = serve(tmp_path, 'name = "r"\ntimm = "resnet10t"\nweights = "r.pt"\nnum_classes = 3\n'
                   'input_size = [64, 64]\n')["r"]  # fmt: skip
    assert handle.architecture == "timm:resnet10t"
    assert handle.mean == tuple(original.pretrained_cfg["mean"])
    assert handle.default_layer == "layer4"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(handle.model(x), original(x))  # the weights were loaded


def test_a_timm_vit_gets_its_last_block_norm_as_a_token_grid(tmp_path: Path) -> None:
    handle = serve(tmp_path, 'name = "v"\ntimm = "vit_tiny_patch16_224"\nweights = "none"\n'
                   "num_classes = 3\n")["v"]  # fmt: skip
    assert handle.input_size == (224, 224)
    assert handle.default_layer == "blocks.11.norm1"
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    explanation = get_explainer("gradcam")(handle, x, torch.tensor([1]))
    assert explanation.meta[0]["layer_layout"] == "tokens 14x14 (+1 dropped)"
    assert bool(torch.isfinite(explanation.saliency).all())


def saved_vit(folder: Path) -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3, id2label={0: "red", 1: "green", 2: "blue"},
        label2id={"red": 0, "green": 1, "blue": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    ))  # fmt: skip
    return model


def test_a_hugging_face_classifier_from_a_save_pretrained_folder(tmp_path: Path) -> None:
    original = saved_vit(tmp_path / "vit")
    handle = serve(tmp_path, 'name = "hf"\nhuggingface = "vit"\n')["hf"]
    assert handle.labels == ("red", "green", "blue")
    assert handle.input_size == (32, 32) and handle.mean == (0.5, 0.5, 0.5)
    # the last block's first norm (its module path differs between transformers versions)
    assert str(handle.default_layer).endswith("1.layernorm_before")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(handle.model(x), original(pixel_values=x).logits)
    for method in ("gradcam", "occlusion"):
        maps = get_explainer(method)(handle, x, torch.tensor([0, 2])).saliency
        assert maps.shape == (2, 32, 32) and bool(torch.isfinite(maps).all())


def test_hub_entries_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="timm has no model"):
        serve(tmp_path, 'name = "x"\ntimm = "no_such_net"\nweights = "none"\n')
    with pytest.raises(ModelsFileError, match="does not exist"):
        serve(tmp_path, 'name = "x"\nhuggingface = "missing"\n')
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelsFileError, match=r"config\.json"):
        serve(tmp_path, 'name = "x"\nhuggingface = "empty"\n')
