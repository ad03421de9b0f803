"""LRP through vision transformers: conservative propagation through attention and LayerNorm.

Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation"
(ICML 2022, CP-LRP) and Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers" (ICML 2024, Sec. 3.3) give the rules, written here, like the rest
of :mod:`lrp_plan`, as forwards whose gradient × input is the relevance:

* **attention** ``softmax(q kᵀ / √d) v``: the attention probabilities are held constant (CP-LRP
  Eq. 7; AttnLRP's rule for the value path), so relevance flows through the value projection
  alone, each output token's relevance split among the tokens in proportion to
  ``A_ij · v_j``; the value and output projections get the ε-rule (AttnLRP: ε for every linear
  layer of a transformer); queries and keys get none;
* **LayerNorm** ``(x − μ) / σ · w + b``: ``σ`` is held constant (CP-LRP Eq. 8, AttnLRP's identity
  rule on the normalisation), so the centring is linear and conserves relevance; the element-wise
  affine part gets the ε-rule (its bias keeps its share, as every ε-rule bias does);
* **positional embedding** ``x + p``: the ε-rule of an added bias (``p`` keeps its share);
* **class token**: a constant input; the relevance that reaches it stays there.

With these, a transformer is a chain of ε-rule linear maps, residual sums and products with
constants, and LRP-ε with ε → 0 equals gradient × input of the network whose attention
probabilities, LayerNorm scales and activation gates are detached (the tests check this
against such a network written out by hand, and conservation where every bias is zero).

The same LayerNorm rule serves ConvNeXt (its ``LayerNorm2d`` normalises the channels), whose
blocks scale their output by a learnt per-channel constant (relevance passes it unchanged).

Supported: ``torch.nn.MultiheadAttention`` used as self-attention without masks,
``torch.nn.LayerNorm`` over one dimension, torchvision's ``VisionTransformer`` (ViT-B/16 …,
class token and positional embedding) and ConvNeXt, and timm's ``VisionTransformer`` (ViT,
DeiT, register tokens, average pooling, layer scale; its ``Attention`` on either the fused or
the plain path), and Hugging Face's ``ViTForImageClassification`` (transformers 5's
layout); both tested to give the same maps as the same network built by torchvision.
Swin's and MaxViT's window attention, timm's distilled DeiT and EVA compute with parameters
of their own outside any layer and stay refused, by name.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from workers.explainers.base import ExplainerError
from workers.explainers.propagation import lrp_rules as lr

Forward = Callable[..., Any]
Replacement = tuple[str, Forward, list[lr.Rule]]
"""(name of the method replaced, our function, the rules it applies)."""

TRANSFORMER_MODULES = (nn.MultiheadAttention, Encoder, VisionTransformer, CNBlock)
"""Module types whose forward :func:`transformer_forward` replaces, with ``nn.LayerNorm`` and
ConvNeXt's ``LayerNorm2d`` (exactly those: another subclass may normalise otherwise) and, when
timm is loaded, :func:`timm_types`."""


def timm_types() -> dict[str, type]:
    """timm's ViT, attention and layer-scale classes, if timm is loaded (a timm model exists
    only if it is; the worker does not import timm otherwise)."""
    return _timm_classes() if "timm" in sys.modules else {}


def hf_types() -> dict[str, type]:
    """Hugging Face's ViT embedding and attention classes and its GELU module, if transformers
    is loaded (transformers 5's ViT: ``ViTAttention`` with ``q_proj`` … ``o_proj``)."""
    return _hf_classes() if "transformers" in sys.modules else {}


@functools.cache
def _timm_classes() -> dict[str, type]:
    """Looked up once (a plan asks for every module of the model)."""
    from timm.layers.attention import Attention
    from timm.layers.layer_scale import LayerScale
    from timm.layers.norm import LayerNorm
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return {"attention": Attention, "layer_scale": LayerScale, "vit": TimmViT, "norm": LayerNorm}


@functools.cache
def _hf_classes() -> dict[str, type]:
    """Looked up once (a plan asks for every module of the model)."""
    from transformers.activations import GELUActivation
    from transformers.models.vit.modeling_vit import ViTAttention, ViTEmbeddings

    return {"attention": ViTAttention, "embeddings": ViTEmbeddings, "gelu": GELUActivation}


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention block whose projections are ruled in its forward."""
    kinds = [timm_types().get("attention"), hf_types().get("attention")]
    return isinstance(module, nn.MultiheadAttention) or type(module) in kinds


def is_transformer_module(module: nn.Module) -> bool:
    """Whether :func:`transformer_forward` has a forward for ``module``."""
    hf = {k: v for k, v in hf_types().items() if k != "gelu"}  # an activation: lrp_plan's
    if type(module) in (nn.LayerNorm, LayerNorm2d, *timm_types().values(), *hf.values()):
        return True
    return isinstance(module, TRANSFORMER_MODULES)


def _epsilon(name: str, kind: str, weight: Tensor, bias: Tensor | None, eps: float) -> lr.Rule:
    bias = None if bias is None else bias.detach()
    return lr.Epsilon(name, lr.LinearOp(kind), weight.detach(), bias, epsilon=eps)


def layer_norm_forward(name: str, norm: nn.LayerNorm, epsilon: float) -> Replacement:
    """``(x − μ) / σ`` with ``σ`` constant, then the ε-rule on ``·w + b``; over the last
    dimension, or over the channels for ConvNeXt's ``LayerNorm2d``."""
    if len(norm.normalized_shape) != 1:
        raise ExplainerError(
            f"LRP: LayerNorm {name!r} normalises over {len(norm.normalized_shape)} dimensions; "
            "only a LayerNorm over one dimension is supported"
        )
    dim = 1 if isinstance(norm, LayerNorm2d) else -1
    shape = (-1, 1, 1) if dim == 1 else (-1,)
    rules: list[lr.Rule] = []
    if norm.weight is not None or norm.bias is not None:
        weight = norm.weight if norm.weight is not None else torch.ones_like(norm.bias)
        bias = None if norm.bias is None else norm.bias.detach().view(shape)
        rules.append(_epsilon(name, "affine", weight.detach().view(shape), bias, epsilon))

    def forward(x: Tensor) -> Tensor:
        centred = x - x.mean(dim=dim, keepdim=True)
        with torch.no_grad():
            scale = (centred.detach().pow(2).mean(dim=dim, keepdim=True) + norm.eps).sqrt()
        y = centred / scale
        return lr.RuleFunction.apply(y, rules[0]) if rules else y

    return "forward", forward, rules


def scaled_block_forward(
    name: str, block: CNBlock, epsilon: float
) -> tuple[Forward, list[lr.Rule]]:
    """ConvNeXt's block: its layer scale is a constant per-channel factor (relevance passes)."""

    def forward(x: Tensor) -> Tensor:
        return block.layer_scale.detach() * block.block(x) + x  # stochastic depth: eval no-op

    return "forward", forward, []


def layer_scale_forward(name: str, scale: nn.Module, epsilon: float) -> Replacement:
    """timm's ``LayerScale``: a constant per-channel factor (relevance passes unchanged)."""

    def forward(x: Tensor) -> Tensor:
        return x * scale.gamma.detach()

    return "forward", forward, []


def mix(
    x: Tensor, qk: Callable[[Tensor], tuple[Tensor, Tensor]], value: lr.Rule, heads: int
) -> Tensor:
    """``softmax(q kᵀ / √d) v`` over ``(B, N, ·)`` tokens with the probabilities held constant:
    ``qk`` gives the ``(B, heads, N, d)`` queries and keys (computed without gradient), the
    value projection is ``value``'s ε-rule; returns ``(B, N, heads·d)``."""
    batch, tokens = x.shape[0], x.shape[1]
    with torch.no_grad():
        q, k = qk(x.detach())
        probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    v = lr.RuleFunction.apply(x, value)
    v = v.reshape(batch, tokens, heads, -1).transpose(1, 2)
    return (probabilities @ v).transpose(1, 2).reshape(batch, tokens, -1)


def _heads(t: Tensor, heads: int) -> Tensor:
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def packed(
    name: str,
    weight: Tensor,
    bias: Tensor | None,
    heads: int,
    epsilon: float,
    norms: tuple[Callable[[Tensor], Tensor], ...] = (),
) -> tuple[lr.Rule, Callable[[Tensor], tuple[Tensor, Tensor]]]:
    """From a packed query/key/value projection ``(3·size, dim)``: the value projection's
    ε-rule, and the queries and keys per head (through ``norms``, if the model has them)."""
    size = weight.shape[0] // 3
    w_q, w_k, w_v = weight.detach().split(size)
    biases = [None] * 3 if bias is None else list(bias.detach().split(size))
    value = _epsilon(f"{name}.value", "linear", w_v, biases[2], epsilon)
    q_norm, k_norm = norms or (_same, _same)

    def qk(x: Tensor) -> tuple[Tensor, Tensor]:
        q, k = F.linear(x, w_q, biases[0]), F.linear(x, w_k, biases[1])
        return q_norm(_heads(q, heads)), k_norm(_heads(k, heads))

    return value, qk


def _same(t: Tensor) -> Tensor:
    return t


def _self_attention_only(name: str, mask: object, is_causal: bool) -> None:
    if mask is not None or is_causal:
        raise ExplainerError(f"LRP: attention {name!r} with a mask is not supported")


def attention_forward(name: str, attention: nn.MultiheadAttention, epsilon: float) -> Replacement:
    """torch's self-attention with its probabilities held constant; ε-rule on values and
    output."""
    unsupported = not attention._qkv_same_embed_dim or attention.bias_k is not None
    if unsupported or attention.add_zero_attn:
        raise ExplainerError(
            f"LRP: attention {name!r} uses separate key/value sizes or extra key/value biases; "
            "architecture not supported"
        )
    heads = attention.num_heads
    value, qk = packed(name, attention.in_proj_weight, attention.in_proj_bias, heads, epsilon)
    out = attention.out_proj
    output = _epsilon(f"{name}.out_proj", "linear", out.weight, out.bias, epsilon)

    def forward(
        query: Tensor,
        key: Tensor,
        value_in: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        _self_attention_only(name, key_padding_mask if attn_mask is None else attn_mask, is_causal)
        if not (query is key is value_in):
            raise ExplainerError(f"LRP: attention {name!r} is not self-attention")
        x = query if attention.batch_first else query.transpose(0, 1)
        y = lr.RuleFunction.apply(mix(x, qk, value, heads), output)
        return (y if attention.batch_first else y.transpose(0, 1)), None

    return "forward", forward, [value, output]


def timm_attention_forward(name: str, attention: nn.Module, epsilon: float) -> Replacement:
    """timm's ``Attention`` (its fused and plain paths alike) with constant probabilities."""
    if attention.gate is not None:
        raise ExplainerError(f"LRP: gated attention {name!r} is not supported")
    heads, qkv = attention.num_heads, attention.qkv
    norms = (attention.q_norm, attention.k_norm)
    value, qk = packed(name, qkv.weight, qkv.bias, heads, epsilon, norms)
    out = attention.proj
    output = _epsilon(f"{name}.proj", "linear", out.weight, out.bias, epsilon)

    def forward(x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        _self_attention_only(name, attn_mask, is_causal)
        return lr.RuleFunction.apply(attention.norm(mix(x, qk, value, heads)), output)

    return "forward", forward, [value, output]


def hf_attention_forward(name: str, attention: nn.Module, epsilon: float) -> Replacement:
    """Hugging Face's ``ViTAttention`` with constant probabilities; ε-rule on ``v_proj`` and
    ``o_proj``."""
    if not all(hasattr(attention, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise ExplainerError(f"LRP: attention {name!r} of this transformers version has no rule")
    heads = attention.num_attention_heads
    value = _epsilon(
        f"{name}.v_proj", "linear", attention.v_proj.weight, attention.v_proj.bias, epsilon
    )
    out = attention.o_proj
    output = _epsilon(f"{name}.o_proj", "linear", out.weight, out.bias, epsilon)

    def qk(x: Tensor) -> tuple[Tensor, Tensor]:
        return _heads(attention.q_proj(x), heads), _heads(attention.k_proj(x), heads)

    def forward(
        hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> tuple[Tensor, None]:
        _self_attention_only(name, attention_mask, False)
        return lr.RuleFunction.apply(mix(hidden_states, qk, value, heads), output), None

    return "forward", forward, [value, output]


def hf_embeddings_forward(name: str, embeddings: nn.Module, epsilon: float) -> Replacement:
    """Hugging Face's ``ViTEmbeddings``: the [CLS] token a constant input, the positional
    embedding a bias."""
    label = f"{name}." if name else ""
    token = lr.Prepend(
        f"{label}cls_token", lr.LinearOp("affine"), embeddings.cls_token.detach(), None
    )
    shift = _shift(f"{label}position_embeddings", embeddings.position_embeddings, epsilon)

    def forward(
        pixel_values: Tensor,
        bool_masked_pos: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> Tensor:
        if bool_masked_pos is not None or interpolate_pos_encoding:
            raise ExplainerError("LRP: masked or interpolated position embeddings: no rule")
        x = lr.RuleFunction.apply(embeddings.patch_embeddings(pixel_values), token)
        return embeddings.dropout(lr.RuleFunction.apply(x, shift))

    return "forward", forward, [token, shift]


def _shift(name: str, embedding: Tensor, epsilon: float) -> lr.Rule:
    """The ε-rule of adding a positional embedding (a bias)."""
    ones = torch.ones((), dtype=embedding.dtype, device=embedding.device)
    return _epsilon(name, "affine", ones, embedding, epsilon)


def encoder_forward(name: str, encoder: Encoder, epsilon: float) -> Replacement:
    """torchvision's ViT encoder with the positional embedding added under the ε-rule."""
    shift = _shift(f"{name}.pos_embedding", encoder.pos_embedding, epsilon)

    def forward(x: Tensor) -> Tensor:
        x = lr.RuleFunction.apply(x, shift)
        return encoder.ln(encoder.layers(encoder.dropout(x)))

    return "forward", forward, [shift]


def vision_transformer_forward(name: str, model: VisionTransformer, epsilon: float) -> Replacement:
    """torchvision's ViT with its class token a constant input."""
    label = f"{name}.class_token" if name else "class_token"
    token = lr.Prepend(label, lr.LinearOp("affine"), model.class_token.detach(), None)

    def forward(x: Tensor) -> Tensor:
        x = lr.RuleFunction.apply(model._process_input(x), token)
        return model.heads(model.encoder(x)[:, 0])

    return "forward", forward, [token]


def timm_position_forward(name: str, model: nn.Module, epsilon: float) -> Replacement:
    """timm's ``VisionTransformer._pos_embed``: class and register tokens a constant input,
    the positional embedding a bias (added before or after them, as the model does)."""
    if model.dynamic_img_size:
        raise ExplainerError("LRP: a timm ViT with dynamic_img_size is not supported")
    tokens = [t.detach() for t in (model.cls_token, model.reg_token) if t is not None]
    label = f"{name}." if name else ""
    prefix = (
        lr.Prepend(f"{label}prefix_tokens", lr.LinearOp("affine"), torch.cat(tokens, 1), None)
        if tokens
        else None
    )
    embedding = model.pos_embed
    shift = None if embedding is None else _shift(f"{label}pos_embed", embedding, epsilon)

    def prepend(x: Tensor) -> Tensor:
        return x if prefix is None else lr.RuleFunction.apply(x, prefix)

    def add(x: Tensor) -> Tensor:
        return x if shift is None else lr.RuleFunction.apply(x, shift)

    def position(x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        x = prepend(add(x)) if model.no_embed_class else add(prepend(x))
        return model.pos_drop(x)

    return "_pos_embed", position, [r for r in (prefix, shift) if r is not None]


def transformer_forward(name: str, module: nn.Module, epsilon: float) -> Replacement:
    """The replacement of a module :func:`is_transformer_module` accepts: which method, ours,
    and the rules it applies."""
    timm = timm_types()
    if isinstance(module, nn.LayerNorm):
        return layer_norm_forward(name, module, epsilon)
    if isinstance(module, CNBlock):
        return scaled_block_forward(name, module, epsilon)
    if isinstance(module, nn.MultiheadAttention):
        return attention_forward(name, module, epsilon)
    if isinstance(module, Encoder):
        return encoder_forward(name, module, epsilon)
    if isinstance(module, VisionTransformer):
        return vision_transformer_forward(name, module, epsilon)
    if type(module) is timm.get("attention"):
        return timm_attention_forward(name, module, epsilon)
    if type(module) is timm.get("layer_scale"):
        return layer_scale_forward(name, module, epsilon)
    if type(module) is timm.get("vit"):
        return timm_position_forward(name, module, epsilon)
    hf = hf_types()
    if type(module) is hf.get("attention"):
        return hf_attention_forward(name, module, epsilon)
    if type(module) is hf.get("embeddings"):
        return hf_embeddings_forward(name, module, epsilon)
    raise TypeError(f"not a transformer module: {type(module).__name__}")
