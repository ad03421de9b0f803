"""LRP through vision transformers (``lrp_transformer``): a known answer written out by hand,
conservation, the composites, and clear refusals where attention is not the supported kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

from workers.explainers import ExplainerError, get_explainer
from workers.explainers.base import ModelHandle
from workers.explainers.propagation.lrp_plan import COMPOSITE_NAMES, plan_for
from workers.explainers.propagation.lrp_transformer import is_attention

SIZE = 32
lrp = get_explainer("lrp")


def vit(seed: int = 0, *, biases: bool = True) -> VisionTransformer:
    """A 2-block ViT on 32 px (16 tokens of 8×8 px, a class token), every parameter random
    (torchvision starts the head, the class token and some biases at zero), in float64."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=5)  # fmt: skip
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "pos_embedding" in name or "class_token" in name:
                if biases:
                    parameter.normal_(std=0.1)
                else:
                    parameter.zero_()
            elif parameter.dim() == 1:  # LayerNorm scales
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(std=1 / math.sqrt(parameter[0].numel()))
    return model.double().eval()


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    centred = x - x.mean(dim=-1, keepdim=True)
    scale = (centred.pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt().detach()
    return centred / scale * norm.weight + norm.bias


def attention(x: Tensor, mha: nn.MultiheadAttention) -> Tensor:
    batch, tokens, dim = x.shape
    heads = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, tokens, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), -1).detach()
    mixed = (probabilities @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return F.linear(mixed, mha.out_proj.weight, mha.out_proj.bias)


def gelu_gated(h: Tensor) -> Tensor:
    return h * (F.gelu(h) / h).detach()


def cp_lrp_by_hand(model: VisionTransformer, x: Tensor, targets: Tensor) -> Tensor:
    """Gradient × input of the ViT with its attention probabilities, LayerNorm scales and GELU
    gates detached (Ali et al. 2022: this is LRP-0 / ε → 0 through a transformer)."""
    x = x.clone().requires_grad_(True)
    tokens = model.conv_proj(x).flatten(2).transpose(1, 2)
    token = model.class_token.expand(x.shape[0], -1, -1)
    h = torch.cat([token, tokens], dim=1) + model.encoder.pos_embedding
    for block in model.encoder.layers:
        h = h + attention(layer_norm(h, block.ln_1), block.self_attention)
        mlp = block.mlp
        h = h + mlp[3](gelu_gated(mlp[0](layer_norm(h, block.ln_2))))
    logits = model.heads(layer_norm(h, model.encoder.ln)[:, 0])
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return (x * grad).sum(dim=1).detach()


def handle(model: nn.Module) -> ModelHandle:
    return ModelHandle("vit", model, (SIZE, SIZE))


def images(n: int = 3) -> Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).double()


def test_lrp_epsilon_equals_gradient_times_input_with_attention_and_norms_held_constant() -> None:
    model, x, targets = vit(), images(), torch.tensor([0, 3, 4])
    result = lrp(handle(model), x, targets, composite="epsilon", epsilon=1e-12)
    torch.testing.assert_close(result.saliency.double(), cp_lrp_by_hand(model, x, targets))
    with torch.no_grad():
        torch.testing.assert_close(result.logits.double(), model(x))  # the same forward


def test_relevance_is_conserved_where_no_bias_takes_a_share() -> None:
    """No biases, a zero class token and positional embedding: the input relevance sums to the
    target logit (attention with constant probabilities, the centring, residual sums and the
    identity rule of GELU all conserve it)."""
    model, x = vit(1, biases=False), images()
    result = lrp(handle(model), x, torch.tensor([1, 2, 0]), composite="epsilon", epsilon=1e-12)
    totals = torch.tensor([m["relevance_total"] for m in result.meta])
    logits = torch.tensor([m["target_logit"] for m in result.meta])
    torch.testing.assert_close(totals, logits, rtol=1e-5, atol=1e-6)  # float32 sums
    assert logits.abs().min() > 0.01 and logits.abs().max() > 0.1  # not trivially zero


@pytest.mark.parametrize("composite", COMPOSITE_NAMES)
def test_every_composite_gives_a_finite_varying_map_per_target(composite: str) -> None:
    model, x = vit(2), images(2)
    one = lrp(handle(model), x, torch.tensor([0, 0]), composite=composite).saliency
    other = lrp(handle(model), x, torch.tensor([1, 1]), composite=composite).saliency
    assert torch.isfinite(one).all() and one.flatten(1).std(dim=1).min() > 0
    assert not torch.allclose(one, other)
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left patched


def test_the_hybrid_runs_on_a_vision_transformer() -> None:
    result = get_explainer("gradcam_lrp")(
        handle(vit(3).float()), images(2).float(), torch.tensor([0, 1])
    )
    assert torch.isfinite(result.saliency).all() and result.saliency.std() > 0


class MaskedAttention(nn.Module):
    """Self-attention called with a mask, which the conservative rule does not cover."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        mask = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).triu(1)
        mixed, _ = self.attention(tokens, tokens, tokens, attn_mask=mask, need_weights=False)
        return self.head(mixed.mean(dim=1))


def test_attention_with_a_mask_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model = MaskedAttention().eval()
    with pytest.raises(ExplainerError, match="attention 'attention' with a mask"):
        lrp(handle(model), torch.rand(1, 3, SIZE, SIZE), torch.tensor([0]))


def tiny_convnext(biases: bool) -> nn.Module:
    """Two ConvNeXt stages (8 and 16 channels), layer scales and biases random or zero."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(4)
    stages = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    model = ConvNeXt(stages, num_classes=5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(std=0.1 if biases else 0.0)
            elif "layer_scale" in name:
                parameter.uniform_(0.5, 1.5)
    return model.double().eval()


def test_convnext_conserves_relevance_through_its_norms_and_layer_scales() -> None:
    model, x = tiny_convnext(biases=False), images()
    result = lrp(handle(model), x, torch.tensor([0, 1, 2]), composite="epsilon", epsilon=1e-12)
    totals = torch.tensor([m["relevance_total"] for m in result.meta])
    logits = torch.tensor([m["target_logit"] for m in result.meta])
    torch.testing.assert_close(totals, logits, rtol=1e-5, atol=1e-6)
    assert logits.abs().max() > 1e-3
    default = lrp(handle(tiny_convnext(biases=True)), x, torch.tensor([0, 1, 2])).saliency
    assert torch.isfinite(default).all() and default.flatten(1).std(dim=1).min() > 0


def timm_twin(model: VisionTransformer) -> nn.Module:
    """timm's ViT with the weights of torchvision's ``model`` (the same network)."""
    timm = pytest.importorskip("timm")
    twin = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, embed_dim=16,
        depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5,
    ).double()  # fmt: skip
    source = {
        "patch_embed.proj": "conv_proj",
        "cls_token": "class_token",
        "pos_embed": "encoder.pos_embedding",
        "norm": "encoder.ln",
        "head": "heads.head",
    }
    for i in range(2):
        block, theirs = f"blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
        source |= {
            block + "norm1": theirs + "ln_1",
            block + "attn.qkv": theirs + "self_attention.in_proj",
            block + "attn.proj": theirs + "self_attention.out_proj",
            block + "norm2": theirs + "ln_2",
            block + "mlp.fc1": theirs + "mlp.0",
            block + "mlp.fc2": theirs + "mlp.3",
        }
    state = model.state_dict()
    mapped = {}
    for key in twin.state_dict():
        stem, _, leaf = key.rpartition(".")
        if key in source:
            mapped[key] = state[source[key]]
        elif source.get(stem, "").endswith("in_proj"):
            mapped[key] = state[f"{source[stem]}_{leaf}"]
        else:
            mapped[key] = state[f"{source[stem]}.{leaf}"]
    twin.load_state_dict(mapped)
    return twin.eval()


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
def test_a_timm_vit_gets_the_maps_of_the_same_torchvision_vit(composite: str) -> None:
    model, x, targets = vit(5), images(2), torch.tensor([2, 4])
    twin = timm_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))  # the same network
    ours = lrp(handle(model), x, targets, composite=composite).saliency
    theirs = lrp(handle(twin), x, targets, composite=composite).saliency
    torch.testing.assert_close(theirs, ours)
    assert not any(k in m.__dict__ for m in twin.modules() for k in ("forward", "_pos_embed"))


def hugging_face_twin(model: VisionTransformer) -> nn.Module:
    """Hugging Face's ViT with the weights of torchvision's ``model``, served as the zoo
    serves it (logits out of the output object)."""
    transformers = pytest.importorskip("transformers")
    from workers.zoo_hub import HuggingFaceClassifier

    config = transformers.ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=5, layer_norm_eps=1e-6, qkv_bias=True,
    )  # fmt: skip
    twin = transformers.ViTForImageClassification(config).double()
    state = model.state_dict()
    mapped = {
        "vit.embeddings.cls_token": state["class_token"],
        "vit.embeddings.position_embeddings": state["encoder.pos_embedding"],
        "vit.embeddings.patch_embeddings.projection.weight": state["conv_proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": state["conv_proj.bias"],
        "vit.layernorm.weight": state["encoder.ln.weight"],
        "vit.layernorm.bias": state["encoder.ln.bias"],
        "classifier.weight": state["heads.head.weight"],
        "classifier.bias": state["heads.head.bias"],
    }
    version_4 = "vit.encoder.layer.0.attention.attention.query.weight" in twin.state_dict()
    for i in range(2):
        theirs = f"encoder.layers.encoder_layer_{i}."
        if version_4:  # transformers 4: ViTSelfAttention, ViTSelfOutput, intermediate, output
            ours = f"vit.encoder.layer.{i}."
            names = ("attention.attention.query", "attention.attention.key",
                     "attention.attention.value", "attention.output.dense",
                     "intermediate.dense", "output.dense")  # fmt: skip
        else:
            ours = f"vit.layers.{i}."
            names = ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                     "attention.o_proj", "mlp.fc1", "mlp.fc2")  # fmt: skip
        q_name, k_name, v_name, o_name, fc1, fc2 = names
        for kind in ("weight", "bias"):
            q, k, v = state[f"{theirs}self_attention.in_proj_{kind}"].chunk(3)
            mapped |= {
                f"{ours}{q_name}.{kind}": q,
                f"{ours}{k_name}.{kind}": k,
                f"{ours}{v_name}.{kind}": v,
                f"{ours}{o_name}.{kind}": state[f"{theirs}self_attention.out_proj.{kind}"],
                f"{ours}layernorm_before.{kind}": state[f"{theirs}ln_1.{kind}"],
                f"{ours}layernorm_after.{kind}": state[f"{theirs}ln_2.{kind}"],
                f"{ours}{fc1}.{kind}": state[f"{theirs}mlp.0.{kind}"],
                f"{ours}{fc2}.{kind}": state[f"{theirs}mlp.3.{kind}"],
            }
    twin.load_state_dict(mapped)
    return HuggingFaceClassifier(twin.eval()).eval()


def test_a_hugging_face_vit_gets_the_maps_of_the_same_torchvision_vit() -> None:
    model, x, targets = vit(6), images(2), torch.tensor([1, 3])
    twin = hugging_face_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))  # the same network
    for composite in ("epsilon", "epsilon_plus_flat"):
        ours = lrp(handle(model), x, targets, composite=composite).saliency
        theirs = lrp(handle(twin), x, targets, composite=composite).saliency
        torch.testing.assert_close(theirs, ours)


def randomised(model: nn.Module, seed: int, *, biases: bool) -> nn.Module:
    """Every bias, position-bias table and batch-norm mean random (or zero), norm scales
    around 1, in float64."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "relative_position_bias_table" in name:
                parameter.normal_(std=0.1 if biases else 0.0)
            elif parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(std=0.1 if biases else 0.0)
                module.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


def window_model(kind: str, seed: int = 0, *, biases: bool = True) -> tuple[nn.Module, int]:
    """A two-stage Swin v1 / v2 on 48 px (the second stage's 6×6 tokens are padded to two
    4×4 windows and shifted), or a two-block MaxViT on 32 px; and its input size."""
    from torchvision.models.maxvit import MaxVit
    from torchvision.models.swin_transformer import (
        PatchMergingV2,
        SwinTransformer,
        SwinTransformerBlockV2,
    )

    torch.manual_seed(seed)
    if kind == "maxvit":
        model: nn.Module = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2,
                                  block_channels=[16, 32], block_layers=[1, 1], head_dim=8,
                                  stochastic_depth_prob=0.0, num_classes=5)  # fmt: skip
        return randomised(model, seed, biases=biases), 32
    v2 = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2}
    model = SwinTransformer([4, 4], 16, [2, 2], [2, 2], [4, 4], num_classes=5,
                            **(v2 if kind == "swin_v2" else {}))  # fmt: skip
    return randomised(model, seed, biases=biases), 48


def held_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch torch so that the model's attention probabilities, LayerNorm scales, GELU and
    tanh gates and squeeze-and-excitation gates are detached in its own forward."""
    from torchvision.ops.misc import SqueezeExcitation

    softmax, gelu, tanh = F.softmax, F.gelu, torch.tanh
    scale = SqueezeExcitation._scale

    def norm(x: Tensor, shape: list[int], weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        dims = tuple(range(-len(shape), 0))
        centred = x - x.mean(dim=dims, keepdim=True)
        sigma = (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt().detach()
        return centred / sigma * weight + bias

    monkeypatch.setattr(F, "softmax", lambda x, dim=None, **kw: softmax(x, dim=dim).detach())
    monkeypatch.setattr(F, "layer_norm", norm)
    monkeypatch.setattr(F, "gelu", lambda x, approximate="none": x * (gelu(x) / x).detach())
    monkeypatch.setattr(torch, "tanh", lambda x: x * (tanh(x) / x).detach())
    monkeypatch.setattr(SqueezeExcitation, "_scale", lambda self, x: scale(self, x).detach())


@pytest.mark.parametrize("kind", ["swin", "swin_v2", "maxvit"])
def test_window_attention_lrp_is_gradient_times_input_with_its_probabilities_held_constant(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference is torchvision's own forward (window partition, cyclic shift and its
    mask, relative position bias, v2's cosine logits) with torch's softmax, layer norm and
    gates patched to detach: LRP-ε with ε → 0 must equal its gradient × input."""
    model, size = window_model(kind)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
    targets = torch.tensor([0, 3, 4])
    ours = lrp(ModelHandle(kind, model, (size, size)), x, targets, composite="epsilon",
               epsilon=1e-12).saliency.double()  # fmt: skip
    held_constant(monkeypatch)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    expected = (x * grad).sum(dim=1).detach()
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * expected.abs().max())
    monkeypatch.undo()
    (grad,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    plain = (x * grad).sum(dim=1).detach()  # without the patches: not the same map
    assert not torch.allclose(plain, ours, rtol=1e-2, atol=1e-3 * expected.abs().max())


@pytest.mark.parametrize("kind", ["swin", "swin_v2", "maxvit"])
def test_window_attention_conserves_relevance_where_no_bias_takes_a_share(kind: str) -> None:
    model, size = window_model(kind, 1, biases=False)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2)).double()
    result = lrp(ModelHandle(kind, model, (size, size)), x, torch.tensor([1, 2, 0]),
                 composite="epsilon", epsilon=1e-12)  # fmt: skip
    totals = torch.tensor([m["relevance_total"] for m in result.meta])
    logits = torch.tensor([m["target_logit"] for m in result.meta])
    torch.testing.assert_close(totals, logits, rtol=1e-4, atol=1e-6)
    assert logits.abs().max() > 1e-3
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left patched
    # the projections are ruled inside the attention's forward, not again as layers
    plan = plan_for(model, "epsilon", 1e-12, (0.5,) * 3, (0.25,) * 3)
    blocks = [name for name, module in model.named_modules() if is_attention(module)]
    assert blocks and not [r for r in plan.rules if any(r.startswith(f"{b}.") for b in blocks)]
