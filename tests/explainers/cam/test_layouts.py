"""Layer outputs that are not (B, C, h, w): Swin's channels-last maps, ViT's token sequences.

Known answers: a channels-last layer gives the map of its permuted twin, and a ViT layer the
map of pytorch-grad-cam with the documented ``reshape_transform`` (class token dropped, patch
tokens on their grid). The automatic layer of a ViT is the first norm of the last block (the
last token map the class token depends on); an output with no grid is refused by name.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from workers.explainers import ExplainerError, get_explainer
from workers.explainers.base import ModelHandle
from workers.explainers.layouts import Layout, infer_layout

SIZE = 32
CAMS = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "scorecam", "integrated_gradcam",
        "smooth_gradcam_pp"]  # fmt: skip
FAST = {"integrated_gradcam": {"steps": 4}, "smooth_gradcam_pp": {"n_samples": 3}}


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=5)  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                            window_size=[2, 2], num_classes=5)  # fmt: skip
    return model.eval()


def handle(model: nn.Module) -> ModelHandle:
    return ModelHandle("tiny", model, (SIZE, SIZE))


def images(n: int = 2) -> Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_layouts_are_read_from_shapes() -> None:
    size = (224, 224)
    assert infer_layout((1, 2048, 7, 7), size) == Layout("nchw", (7, 7))
    assert infer_layout((1, 7, 7, 768), size) == Layout("nhwc", (7, 7))
    assert infer_layout((1, 197, 768), size) == Layout("tokens", (14, 14), 1)
    assert infer_layout((1, 197, 768), size, prefix=1) == Layout("tokens", (14, 14), 1)
    assert infer_layout((1, 201, 768), size) == Layout("tokens", (14, 14), 5)  # 4 registers
    assert infer_layout((1, 49, 768), size) == Layout("tokens", (7, 7), 0)
    assert infer_layout((1, 14 * 20, 64), (224, 320)) == Layout("tokens", (14, 20), 0)
    for pooled in [(1, 2048, 1, 1), (1, 2048), (1, 1, 768)]:
        assert infer_layout(pooled, size) is None
    tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)  # one class token, a 2x2 grid, D = 3
    grid = Layout("tokens", (2, 2), 1).to_map(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[1, :, 0, 1], tokens[1, 2])  # patch (0, 1) is token 1 + 1


def test_vit_auto_layer_is_the_last_blocks_first_norm_and_gradcam_matches_the_reference() -> None:
    model = tiny_vit()
    h, x, targets = handle(model), images(), torch.tensor([1, 3])
    assert h.resolve_layer(None)[0] == "encoder.layers.encoder_layer_1.ln_1"
    ours = get_explainer("gradcam")(h, x, targets)
    assert ours.meta[0]["layer_layout"] == "tokens 4x4 (+1 dropped)"
    grid = SIZE // 8

    def reshape(t: Tensor) -> Tensor:
        return t[:, 1:, :].reshape(t.size(0), grid, grid, t.size(2)).permute(0, 3, 1, 2)

    cam = GradCAM(model=model, target_layers=[model.encoder.layers[-1].ln_1],
                  reshape_transform=reshape)  # fmt: skip
    reference = torch.tensor(cam(input_tensor=x, targets=[ClassifierOutputTarget(1),
                                                          ClassifierOutputTarget(3)]))  # fmt: skip
    for row in range(2):
        a, b = ours.saliency[row].flatten(), reference[row].flatten()
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.999


def test_a_channels_last_swin_layer_gives_the_map_of_its_permuted_twin() -> None:
    h, x, targets = handle(tiny_swin()), images(), torch.tensor([0, 2])
    assert h.resolve_layer(None)[0] == "permute"
    explain = get_explainer("gradcam")
    nhwc = explain(h, x, targets, layer="norm")
    nchw = explain(h, x, targets, layer="permute")
    assert nhwc.meta[0]["layer_layout"] == "nhwc 4x4"
    torch.testing.assert_close(nhwc.saliency, nchw.saliency)


@pytest.mark.parametrize("method", CAMS)
@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_every_cam_gives_a_finite_varying_map_on_token_models(method: str, build) -> None:  # type: ignore[no-untyped-def]
    h, x = handle(build()), images()
    maps = get_explainer(method)(h, x, torch.tensor([1, 3]), **FAST.get(method, {})).saliency
    assert maps.shape == (2, SIZE, SIZE) and bool(torch.isfinite(maps).all())
    assert bool((maps.flatten(1).std(dim=1) > 0).any())


@pytest.mark.parametrize(("build", "layer"), [(tiny_vit, "heads"), (tiny_swin, "avgpool")])
def test_a_layer_without_a_grid_is_refused_with_its_shape(build, layer: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExplainerError, match=r"cannot be read as a spatial map|single row"):
        get_explainer("gradcam")(handle(build()), images(), torch.tensor([0, 1]), layer=layer)
