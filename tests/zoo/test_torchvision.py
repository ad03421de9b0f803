"""torchvision entries: random, file and local-cache weights; default CAM layers per family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

from workers import zoo_torchvision as tv
from workers.zoo import ModelsFileError, load_models, model_info

CPU = torch.device("cpu")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_weights_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[models]]\nname = "r18"\ntorchvision = "resnet18"\nweights = "none"\n'
        "input_size = [64, 64]\nnum_classes = 4\n",
    )
    handle = load_models(path, CPU)["r18"]
    info = model_info(handle)
    assert info.input_size == (64, 64)
    assert info.labels == ["class 0", "class 1", "class 2", "class 3"]
    assert info.num_classes == 4
    assert info.mean == pytest.approx([0.485, 0.456, 0.406])
    assert info.std == pytest.approx([0.229, 0.224, 0.225])
    assert info.default_layer == "layer4"
    assert {"layer4", "layer4.1.conv2", "fc", "conv1"} <= set(info.layers)
    assert "" not in info.layers
    assert info.architecture == "torchvision:resnet18"
    assert not handle.model.training


def test_weights_file_entry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = mobilenet_v3_small(num_classes=3)
    torch.save(reference.state_dict(), tmp_path / "small.pt")
    path = write(
        tmp_path,
        '[[models]]\nname = "small"\ntorchvision = "mobilenet_v3_small"\nweights = "small.pt"\n'
        'labels = ["a", "b", "c"]\ninput_size = [64, 64]\n',
    )
    handle = load_models(path, CPU)["small"]
    assert same_parameters(handle.model, reference)
    assert handle.labels == ("a", "b", "c")
    probe = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(handle.model(probe), reference.eval()(probe))


def test_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    torch.save(mobilenet_v3_small(num_classes=3).state_dict(), tmp_path / "small.pt")
    path = write(
        tmp_path,
        '[[models]]\nname = "small"\ntorchvision = "mobilenet_v3_small"\nweights = "small.pt"\n',
    )
    with pytest.raises(ModelsFileError, match=r"model 'small'.*do not fit the model"):
        load_models(path, CPU)
    path = write(
        tmp_path,
        '[[models]]\nname = "r18"\ntorchvision = "resnet18"\nweights = "absent.pt"\n',
    )
    with pytest.raises(ModelsFileError, match=r"absent\.pt' does not exist"):
        load_models(path, CPU)


def test_enum_weights_come_from_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = write(
        tmp_path,
        '[[models]]\nname = "small"\ntorchvision = "mobilenet_v3_small"\n'
        'weights = "IMAGENET1K_V1"\ninput_size = [64, 64]\n',
    )
    weights = MobileNet_V3_Small_Weights.IMAGENET1K_V1
    expected = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    with pytest.raises(ModelsFileError) as caught:
        load_models(path, CPU)
    assert str(expected) in str(caught.value)
    assert "never downloaded" in str(caught.value)
    assert not expected.exists()

    torch.manual_seed(1)
    reference = mobilenet_v3_small()
    expected.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), expected)
    handle = load_models(path, CPU)["small"]
    assert same_parameters(handle.model, reference)
    assert handle.labels == tuple(weights.meta["categories"])
    assert handle.labels[1] == "goldfish"
    assert handle.input_size == (64, 64)  # the file's key overrides the enum's 224
    assert handle.default_layer == "features.12"
    assert "IMAGENET1K_V1" in handle.architecture


def test_enum_preprocessing() -> None:
    from torchvision.models import Inception_V3_Weights

    model = nn.Identity()
    facts = tv.preprocessing("inception_v3", Inception_V3_Weights.IMAGENET1K_V1, model)
    assert facts.input_size == (299, 299)
    assert facts.mean == pytest.approx(tv.IMAGENET_MEAN)
    assert facts.labels is not None and len(facts.labels) == 1000
    assert tv.preprocessing("inception_v3", None, model).labels is None


def test_densenet_legacy_keys_are_renamed() -> None:
    legacy = {
        "features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
        "features.denseblock1.denselayer1.conv.2.weight": torch.ones(1),
        "features.norm5.weight": torch.ones(1),
    }
    assert set(tv._fix_densenet_keys(legacy)) == {
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.conv2.weight",
        "features.norm5.weight",
    }


FAMILIES = {
    "resnet18": "layer4",
    "densenet121": "features.norm5",
    "vgg11": "features.19",
    "vgg16": "features.29",
    "vgg16_bn": "features.42",
    "mobilenet_v2": "features.18",
    "mobilenet_v3_small": "features.12",
    "efficientnet_b0": "features.8",
    "convnext_tiny": "features.7",
    "inception_v3": "Mixed_7c",
    "googlenet": "inception5b",
    "shufflenet_v2_x0_5": "conv5",
    "squeezenet1_1": "features",
    "mnasnet0_5": "layers.16",
    "alexnet": "features.11",
}


@pytest.mark.parametrize(("arch", "layer"), FAMILIES.items())
def test_default_layer_is_the_last_spatial_map(arch: str, layer: str) -> None:
    """The default layer outputs a (1, C, h, w) map and no convolution runs after it (except
    SqueezeNet's classifier, a 1×1 conv to the classes). Shapes only: on the meta device."""
    with torch.device("meta"):
        model = tv.build(arch, None).eval()
    assert tv.default_layer(arch, model) == layer
    size = tv.preprocessing(arch, None, model).input_size
    finished: list[tuple[str, nn.Module, object]] = []  # in order of completion
    hooks = [
        module.register_forward_hook(
            lambda m, _i, out, name=name: finished.append((name, m, getattr(out, "shape", None)))
        )
        for name, module in model.named_modules()
        if name
    ]
    try:
        logits = model(torch.zeros(1, 3, *size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (1, 1000)
    names = [name for name, _, _ in finished]
    position = names.index(layer)
    out = finished[position][2]
    assert isinstance(out, torch.Size) and len(out) == 4 and min(out[-2:]) > 1
    later_convs = [n for n, m, _ in finished[position + 1 :] if isinstance(m, nn.Conv2d)]
    assert later_convs == (["classifier.1"] if arch.startswith("squeezenet") else [])


def test_token_models_have_no_default_layer() -> None:
    with torch.device("meta"):
        model = tv.build("vit_b_16", None)
    assert tv.default_layer("vit_b_16", model) is None
    assert tv.preprocessing("vit_b_16", None, model).input_size == (224, 224)
