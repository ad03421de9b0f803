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
class token and positional embedding) and ConvNeXt. Swin's and MaxViT's attention are written
with functional calls on their own parameters and stay refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from workers.explainers.base import ExplainerError
from workers.explainers.propagation import lrp_rules as lr

Forward = Callable[..., object]

TRANSFORMER_MODULES = (nn.MultiheadAttention, Encoder, VisionTransformer, CNBlock)
"""Module types whose forward :func:`transformer_forward` replaces, with ``nn.LayerNorm`` and
ConvNeXt's ``LayerNorm2d`` (exactly those: another subclass may normalise otherwise)."""


def is_transformer_module(module: nn.Module) -> bool:
    """Whether :func:`transformer_forward` has a forward for ``module``."""
    if type(module) in (nn.LayerNorm, LayerNorm2d):
        return True
    return isinstance(module, TRANSFORMER_MODULES)


def _epsilon(name: str, kind: str, weight: Tensor, bias: Tensor | None, eps: float) -> lr.Rule:
    bias = None if bias is None else bias.detach()
    return lr.Epsilon(name, lr.LinearOp(kind), weight.detach(), bias, epsilon=eps)


def layer_norm_forward(
    name: str, norm: nn.LayerNorm, epsilon: float
) -> tuple[Forward, list[lr.Rule]]:
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

    return forward, rules


def scaled_block_forward(
    name: str, block: CNBlock, epsilon: float
) -> tuple[Forward, list[lr.Rule]]:
    """ConvNeXt's block: its layer scale is a constant per-channel factor (relevance passes)."""

    def forward(x: Tensor) -> Tensor:
        return block.layer_scale.detach() * block.block(x) + x  # stochastic depth: eval no-op

    return forward, []


def attention_forward(
    name: str, attention: nn.MultiheadAttention, epsilon: float
) -> tuple[Forward, list[lr.Rule]]:
    """Self-attention with its probabilities held constant; ε-rule on values and output."""
    unsupported = not attention._qkv_same_embed_dim or attention.bias_k is not None
    if unsupported or attention.add_zero_attn:
        raise ExplainerError(
            f"LRP: attention {name!r} uses separate key/value sizes or extra key/value biases; "
            "architecture not supported"
        )
    dim, heads = attention.embed_dim, attention.num_heads
    head_dim = dim // heads
    weight, bias = attention.in_proj_weight.detach(), attention.in_proj_bias
    biases = [None] * 3 if bias is None else list(bias.detach().split(dim))
    w_q, w_k, w_v = weight.split(dim)
    value = _epsilon(f"{name}.value", "linear", w_v, biases[2], epsilon)
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
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ExplainerError(f"LRP: attention {name!r} with a mask is not supported")
        if not (query is key is value_in):
            raise ExplainerError(f"LRP: attention {name!r} is not self-attention")
        x = query if attention.batch_first else query.transpose(0, 1)
        batch, tokens = x.shape[0], x.shape[1]

        def split(t: Tensor) -> Tensor:
            return t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

        with torch.no_grad():
            q = split(F.linear(x.detach(), w_q, biases[0]))
            k = split(F.linear(x.detach(), w_k, biases[1]))
            probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        v = split(lr.RuleFunction.apply(x, value))
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, tokens, dim)
        y = lr.RuleFunction.apply(mixed, output)
        return (y if attention.batch_first else y.transpose(0, 1)), None

    return forward, [value, output]


def encoder_forward(name: str, encoder: Encoder, epsilon: float) -> tuple[Forward, list[lr.Rule]]:
    """torchvision's ViT encoder with the positional embedding added under the ε-rule."""
    shift = _epsilon(
        f"{name}.pos_embedding",
        "affine",
        torch.ones((), device=encoder.pos_embedding.device),
        encoder.pos_embedding,
        epsilon,
    )

    def forward(x: Tensor) -> Tensor:
        x = lr.RuleFunction.apply(x, shift)
        return encoder.ln(encoder.layers(encoder.dropout(x)))

    return forward, [shift]


def vision_transformer_forward(
    name: str, model: VisionTransformer, epsilon: float
) -> tuple[Forward, list[lr.Rule]]:
    """torchvision's ViT with its class token a constant input."""
    label = f"{name}.class_token" if name else "class_token"
    token = lr.Prepend(label, lr.LinearOp("affine"), model.class_token.detach(), None)

    def forward(x: Tensor) -> Tensor:
        x = lr.RuleFunction.apply(model._process_input(x), token)
        return model.heads(model.encoder(x)[:, 0])

    return forward, [token]


def transformer_forward(
    name: str, module: nn.Module, epsilon: float
) -> tuple[Forward, list[lr.Rule]]:
    """The replacement forward of a :data:`TRANSFORMER_MODULES` module and the rules it uses."""
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
    raise TypeError(f"not a transformer module: {type(module).__name__}")
