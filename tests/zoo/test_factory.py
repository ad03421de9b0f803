"""Factory entries, and what load_models promises about every model it returns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.zoo.factories import TinyNet
from workers.zoo import ModelsFileError, load_models, model_info

CPU = torch.device("cpu")


def entry(factory: str = "tests.zoo.factories:tiny", **keys: str) -> str:
    lines = ["[[models]]", 'name = "tiny"', f'factory = "{factory}"']
    keys = {"weights": '"none"', "input_size": "[16, 16]", **keys}
    return "\n".join([*lines, *(f"{key} = {value}" for key, value in keys.items())]) + "\n"


def load(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return load_models(str(path), CPU)


def test_factory_with_random_weights(tmp_path: Path) -> None:
    handle = load(tmp_path, entry(mean="[0.5, 0.5, 0.5]", std="[0.2, 0.2, 0.2]"))["tiny"]
    assert isinstance(handle.model, TinyNet)
    assert handle.input_size == (16, 16)
    assert handle.labels == ("class 0", "class 1", "class 2")
    assert handle.mean == (0.5, 0.5, 0.5) and handle.std == (0.2, 0.2, 0.2)
    # No target_layer: the last module with a spatial output, found at load and announced.
    assert handle.default_layer == "features"
    info = model_info(handle)
    assert info.layers == ["features", "features.0", "features.1", "pool", "head"]
    assert info.default_layer == "features"
    assert info.architecture == "tests.zoo.factories:tiny:TinyNet"


def test_factory_with_a_weights_file_and_labels(tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = TinyNet(num_classes=2).eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "tiny.pt")
    handle = load(
        tmp_path,
        entry(
            weights='"tiny.pt"',
            num_classes="2",
            labels='["yes", "no"]',
            target_layer='"features.0"',
        ),
    )["tiny"]
    assert handle.labels == ("yes", "no")
    assert handle.default_layer == "features.0"
    probe = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(handle.model(probe), reference(probe))


def test_eval_mode_and_requires_grad_untouched(tmp_path: Path) -> None:
    handle = load(tmp_path, entry("tests.zoo.factories:tiny_frozen_features"))["tiny"]
    assert not any(module.training for module in handle.model.modules())
    flags = {name: p.requires_grad for name, p in handle.model.named_parameters()}
    assert flags == {
        "features.0.weight": False,
        "features.0.bias": True,
        "head.weight": True,
        "head.bias": True,
    }
    assert all(p.grad is None for p in handle.model.parameters())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (entry("tests.zoo.nowhere:tiny"), "cannot import factory module 'tests.zoo.nowhere'"),
        (entry("tests.zoo.factories:absent"), "has no attribute 'absent'"),
        (entry("tests.zoo.factories:NOT_CALLABLE"), "is not callable"),
        (entry("tests.zoo.factories:not_a_module"), "returned str"),
        (entry("tests.zoo.factories:image_output"), "must return logits"),
        (entry(labels='["a", "b"]'), "has 3 outputs but 2 labels"),
        (entry(target_layer='"features.7"'), "target_layer 'features.7' does not exist"),
        (entry(input_size="[16, 16]", mean="[0.5]", std="[1.0]"), "warm-up forward"),
        (entry(weights='"absent.pt"'), "does not exist"),
    ],
)
def test_factory_refusals(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelsFileError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert "tiny" in str(caught.value)


def test_a_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    torch.save(TinyNet(num_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(ModelsFileError, match="do not fit the model"):
        load(tmp_path, entry(weights='"five.pt"'))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ModelsFileError, match="does not hold a state dict"):
        load(tmp_path, entry(weights='"list.pt"'))
