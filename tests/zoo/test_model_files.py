"""TorchScript and ONNX models: loaded from models.toml, gradient-free methods give the maps of
the same network in PyTorch, and what they cannot run is announced with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.nets import build
from tests.zoo.model_files import export
from workers.explainers import ExplainerError, get_explainer
from workers.explainers.base import ModelHandle
from workers.runtime import describe
from workers.zoo import ModelsFileError, load_models, parse_models

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
GRADIENT_FREE = {
    "occlusion": {"window": 8, "stride": 4},
    "rise": {"n_masks": 40},
    "fmo": {},
    "lime": {"num_samples": 30, "segmentation": "slic", "segments": 8},
}


def reference() -> ModelHandle:
    return ModelHandle("torch", build().eval(), (32, 32), (0.5,) * 3, (0.25,) * 3,
                       ("red", "green", "blue"))  # fmt: skip


@pytest.fixture(scope="module")
def handles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelHandle]:
    return load_models(str(export(tmp_path_factory.mktemp("files"))), torch.device("cpu"))


@pytest.mark.parametrize("method", sorted(GRADIENT_FREE))
@pytest.mark.parametrize("name", ["tiny_ts", "tiny_onnx"])
def test_gradient_free_maps_equal_the_pytorch_models(
    handles: dict[str, ModelHandle], name: str, method: str
) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = (x - 0.5) / 0.25
    targets = torch.tensor([0, 1, 2])
    explain = get_explainer(method)
    ours = explain(handles[name], x, targets, **GRADIENT_FREE[method]).saliency
    expected = explain(reference(), x, targets, **GRADIENT_FREE[method]).saliency
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_what_each_file_model_cannot_run_is_announced(handles: dict[str, ModelHandle]) -> None:
    onnx = describe(handles["tiny_onnx"], batch_size=8)
    assert (onnx.layers == [] and onnx.gradient_ms == 0.0) or onnx.layers == []
    assert {"gradcam", "lrp", "extremal_perturbation", "scorecam"} <= set(onnx.unsupported)
    assert not {"occlusion", "rise", "fmo", "lime"} & set(onnx.unsupported)
    assert "gives no gradients" in onnx.unsupported["gradcam"]
    script = describe(handles["tiny_ts"], batch_size=8)
    assert {"gradcam", "scorecam", "lrp", "gradcam_lrp"} <= set(script.unsupported)
    assert "cannot be hooked" in script.unsupported["gradcam"]
    assert "extremal_perturbation" not in script.unsupported  # input gradients still flow
    with pytest.raises(ExplainerError, match="does not expose its layers"):
        get_explainer("gradcam")(handles["tiny_ts"], torch.zeros(1, 3, 32, 32), torch.tensor([0]))


def test_torchscript_still_gives_input_gradients(handles: dict[str, ModelHandle]) -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = get_explainer("extremal_perturbation")(
        handles["tiny_ts"], x, torch.tensor([1]), iterations=5, step=3, sigma=4.0
    ).saliency
    assert bool(torch.isfinite(maps).all()) and float(maps.std()) > 0


def test_a_fixed_batch_onnx_graph_takes_any_batch(tmp_path: Path) -> None:
    handle = load_models(str(export(tmp_path, fixed_batch=4)), torch.device("cpu"))["tiny_onnx"]
    x = torch.rand(7, 3, 32, 32)
    torch.testing.assert_close(handle.evaluate(x), reference().evaluate(x), rtol=1e-4, atol=1e-5)


def test_entries_are_checked(tmp_path: Path) -> None:
    base = {"name": "m", "input_size": [32, 32]}
    with pytest.raises(ModelsFileError, match="exactly one of"):
        parse_models({"models": [{**base, "onnx": "a.onnx", "factory": "x:y"}]}, tmp_path)
    with pytest.raises(ModelsFileError, match="does not exist"):
        parse_models({"models": [{**base, "onnx": "missing.onnx"}]}, tmp_path)
    (tmp_path / "a.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelsFileError, match="holds its weights"):
        parse_models({"models": [{**base, "onnx": "a.onnx", "weights": "w.pt"}]}, tmp_path)
    entries = parse_models({"models": [{**base, "onnx": "a.onnx"}]}, tmp_path)
    with pytest.raises(ModelsFileError, match="cannot load ONNX file"):
        load_models_from(entries[0], tmp_path)


def load_models_from(entry, folder: Path) -> None:  # type: ignore[no-untyped-def]
    (folder / "bad.toml").write_text(
        f'[[models]]\nname = "{entry.name}"\nonnx = "{entry.onnx}"\ninput_size = [32, 32]\n'
    )
    load_models(str(folder / "bad.toml"), torch.device("cpu"))
