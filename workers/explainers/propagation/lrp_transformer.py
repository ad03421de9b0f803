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
the plain path), and Hugging Face's ``ViTForImageClassification`` (transformers 5's layout
and transformers 4's); both tested to give the same maps as the same network built by
torchvision (transformers 4 by the same test run against 4.57, outside the suite).
Window attention, torchvision's Swin v1 / v2 and MaxViT, is self-attention within each window:
cutting the map into (shifted) windows only moves tokens, and the relative position bias, the
shift mask and Swin v2's cosine logits with their learnt scale only change the probabilities,
which are constant here (tested against gradient × input of torchvision's own forward with
softmax, LayerNorm scales and gates detached). timm's distilled DeiT and EVA compute with
parameters of their own outside any layer and stay refused, by name.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention
from torchvision.models.vision_transformer import Encoder, VisionTransformer

from workers.explainers.base import ExplainerError
from workers.explainers.propagation import lrp_rules as lr

Forward = Callable[..., Any]
Replacement = tuple[str, Forward, list[lr.Rule]]
"""(name of the method replaced, our function, the rules it applies)."""

TRANSFORMER_MODULES = (
    nn.MultiheadAttention,
    Encoder,
    VisionTransformer,
    CNBlock,
    ShiftedWindowAttention,
    RelativePositionalMultiHeadAttention,
)
"""Module types whose forward :func:`transformer_forward` replaces, with ``nn.LayerNorm`` and
ConvNeXt's ``LayerNorm2d`` (exactly those: another subclass may normalise otherwise) and, when
timm is loaded, :func:`timm_types`."""


def timm_types() -> dict[str, type]:
    """timm's ViT, attention and layer-scale classes, if timm is loaded (a timm model exists
    only if it is; the worker does not import timm otherwise)."""
    return _timm_classes() if "timm" in sys.modules else {}


def hf_types() -> dict[str, type]:
    """Hugging Face's ViT embedding and attention classes and its GELU module, if transformers
    is loaded: transformers 5's ``ViTAttention`` (``q_proj`` … ``o_proj``), or transformers 4's
    ``ViTSelfAttention`` (``query``, ``key``, ``value``; the output projection is the dense
    layer of the ``ViTSelfOutput`` after it, an ordinary layer)."""
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
    from transformers.models.vit import modeling_vit as vit

    classes = {"embeddings": vit.ViTEmbeddings, "gelu": GELUActivation}
    if hasattr(vit, "ViTSelfAttention"):  # transformers 4
        classes["self_attention"] = vit.ViTSelfAttention
        if hasattr(vit, "ViTSdpaSelfAttention"):  # 4.40–4.47: the SDPA path, a subclass
            classes["sdpa_self_attention"] = vit.ViTSdpaSelfAttention
    else:
        classes["attention"] = vit.ViTAttention
    return classes


HF_ATTENTION = ("attention", "self_attention", "sdpa_self_attention")
"""The keys of :func:`hf_types` that are attention blocks."""


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention block whose projections are ruled in its forward."""
    hf = hf_types()
    kinds = [timm_types().get("attention"), *(hf.get(k) for k in HF_ATTENTION)]
    windowed = (ShiftedWindowAttention, RelativePositionalMultiHeadAttention)
    return isinstance(module, (nn.MultiheadAttention, *windowed)) or type(module) in kinds


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


def scaled_block_forward(name: str, block: CNBlock, epsilon: float) -> Replacement:
    """ConvNeXt's block: its layer scale is a constant per-channel factor (relevance passes)."""

    def forward(x: Tensor) -> Tensor:
        return block.layer_scale.detach() * block.block(x) + x  # stochastic depth: eval no-op

    return "forward", forward, []


def layer_scale_forward(name: str, scale: nn.Module, epsilon: float) -> Replacement:
    """timm's ``LayerScale``: a constant per-channel factor (relevance passes unchanged)."""

    def forward(x: Tensor) -> Tensor:
        return x * scale.gamma.detach()

    return "forward", forward, []


def scaled_dot_product(q: Tensor, k: Tensor) -> Tensor:
    """The attention logits ``q kᵀ / √d``."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def mix(
    x: Tensor,
    qk: Callable[[Tensor], tuple[Tensor, Tensor]],
    value: lr.Rule,
    heads: int,
    logits: Callable[[Tensor, Tensor], Tensor] = scaled_dot_product,
) -> Tensor:
    """``softmax(logits(q, k)) v`` over ``(B, N, ·)`` tokens with the probabilities held
    constant: ``qk`` gives the ``(B, heads, N, d)`` queries and keys (computed without
    gradient), the value projection is ``value``'s ε-rule; returns ``(B, N, heads·d)``."""
    batch, tokens = x.shape[0], x.shape[1]
    with torch.no_grad():
        q, k = qk(x.detach())
        probabilities = torch.softmax(logits(q, k), dim=-1)
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


@dataclass(frozen=True)
class WindowLayout:
    """How :func:`to_windows` cut a ``(B, H, W, C)`` map: padded size, window, cyclic shift."""

    batch: int
    size: tuple[int, int]
    padded: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]

    @property
    def count(self) -> int:
        """Windows per image."""
        return (self.padded[0] // self.window[0]) * (self.padded[1] // self.window[1])


def to_windows(x: Tensor, window: list[int], shift: list[int]) -> tuple[Tensor, WindowLayout]:
    """torchvision's Swin partition: pad to whole windows, shift cyclically (not where one
    window covers the map), cut into ``(B·windows, w_h·w_w, C)`` tokens. Padding, shift and
    cut only move values (or add zeros): relevance follows them unchanged."""
    batch, height, width, channels = x.shape
    x = F.pad(x, (0, 0, 0, -width % window[1], 0, -height % window[0]))
    padded = (x.shape[1], x.shape[2])
    shift = [0 if window[i] >= padded[i] else shift[i] for i in range(2)]
    layout = WindowLayout(
        batch, (height, width), padded, (window[0], window[1]), (shift[0], shift[1])
    )
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols = padded[0] // window[0], padded[1] // window[1]
    x = x.view(batch, rows, window[0], cols, window[1], channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * rows * cols, window[0] * window[1], channels), layout


def from_windows(x: Tensor, layout: WindowLayout) -> Tensor:
    """The inverse of :func:`to_windows`: ``(B, H, W, C)`` again."""
    (rows, cols), (wh, ww) = layout.padded, layout.window
    x = x.view(layout.batch, rows // wh, cols // ww, wh, ww, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(layout.batch, rows, cols, -1)
    if sum(layout.shift) > 0:
        x = torch.roll(x, shifts=layout.shift, dims=(1, 2))
    return x[:, : layout.size[0], : layout.size[1]]


def shift_mask(layout: WindowLayout, like: Tensor) -> Tensor:
    """``(windows, N, N)``: −100 between tokens that the cyclic shift brought together from
    different regions of the map, 0 elsewhere (torchvision's mask)."""
    (rows, cols), (wh, ww), (sh, sw) = layout.padded, layout.window, layout.shift
    regions = like.new_zeros(rows, cols)
    count = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.view(rows // wh, wh, cols // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    different = regions.unsqueeze(1) != regions.unsqueeze(2)
    return torch.where(different, -100.0, 0.0).to(like.dtype)


def swin_attention_forward(
    name: str, attention: ShiftedWindowAttention, epsilon: float
) -> Replacement:
    """torchvision's Swin (v1 and v2) window attention with its probabilities held constant.

    Within each window it is self-attention (:func:`mix`); the relative position bias, the
    shift mask and v2's cosine logits with their learnt scale change only the probabilities,
    and the cut into windows only moves tokens (:func:`to_windows`)."""
    heads, qkv = attention.num_heads, attention.qkv
    cosine = getattr(attention, "logit_scale", None)  # Swin v2
    bias = None if qkv.bias is None else qkv.bias.detach().clone()
    if cosine is not None and bias is not None:
        bias[bias.numel() // 3 : 2 * bias.numel() // 3] = 0  # v2 has no key bias
    value, qk = packed(name, qkv.weight, bias, heads, epsilon)
    out = attention.proj
    output = _epsilon(f"{name}.proj", "linear", out.weight, out.bias, epsilon)

    def forward(x: Tensor) -> Tensor:
        windows, layout = to_windows(x, attention.window_size, attention.shift_size)

        def logits(q: Tensor, k: Tensor) -> Tensor:
            if cosine is None:
                scores = scaled_dot_product(q, k)
            else:
                scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
                scores = scores * torch.clamp(cosine, max=math.log(100.0)).exp()
            scores = scores + attention.get_relative_position_bias()
            if sum(layout.shift) == 0:
                return scores
            tokens = scores.shape[-1]
            scores = scores.view(layout.batch, layout.count, heads, tokens, tokens)
            return (scores + shift_mask(layout, scores).unsqueeze(1)).flatten(0, 1)

        mixed = mix(windows, qk, value, heads, logits)
        return from_windows(lr.RuleFunction.apply(mixed, output), layout)

    return "forward", forward, [value, output]


def maxvit_attention_forward(
    name: str, attention: RelativePositionalMultiHeadAttention, epsilon: float
) -> Replacement:
    """torchvision's MaxViT attention over ``(B, G, P, D)`` (G windows or grid cells of P
    tokens) with its probabilities held constant; the relative position bias and the model's
    key scale (``D^-½``, not ``d^-½``) change only the probabilities."""
    heads, qkv = attention.n_heads, attention.to_qkv
    value, qk = packed(name, qkv.weight, qkv.bias, heads, epsilon)
    out = attention.merge
    output = _epsilon(f"{name}.merge", "linear", out.weight, out.bias, epsilon)

    def logits(q: Tensor, k: Tensor) -> Tensor:
        scores = q @ (k * attention.scale_factor).transpose(-2, -1)
        return scores + attention.get_relative_positional_bias()

    def forward(x: Tensor) -> Tensor:
        groups = x.flatten(0, 1)
        mixed = lr.RuleFunction.apply(mix(groups, qk, value, heads, logits), output)
        return mixed.view(x.shape[0], x.shape[1], *mixed.shape[1:])

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


def hf_self_attention_forward(name: str, attention: nn.Module, epsilon: float) -> Replacement:
    """transformers 4's ``ViTSelfAttention`` with constant probabilities; ε-rule on ``value``
    (the output projection that follows is a layer of its own, ruled as any other)."""
    heads, v = attention.num_attention_heads, attention.value
    value = _epsilon(f"{name}.value", "linear", v.weight, v.bias, epsilon)

    def qk(x: Tensor) -> tuple[Tensor, Tensor]:
        return _heads(attention.query(x), heads), _heads(attention.key(x), heads)

    def forward(
        hidden_states: Tensor, head_mask: Tensor | None = None, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, None]:
        if head_mask is not None:
            raise ExplainerError(f"LRP: attention {name!r} with a head mask is not supported")
        return mix(hidden_states, qk, value, heads), None

    return "forward", forward, [value]


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


TORCHVISION_FORWARDS: dict[type, Callable[[str, Any, float], Replacement]] = {
    nn.LayerNorm: layer_norm_forward,  # and ConvNeXt's LayerNorm2d, a subclass
    CNBlock: scaled_block_forward,
    nn.MultiheadAttention: attention_forward,
    ShiftedWindowAttention: swin_attention_forward,  # and v2's, a subclass
    RelativePositionalMultiHeadAttention: maxvit_attention_forward,
    Encoder: encoder_forward,
    VisionTransformer: vision_transformer_forward,
}


def transformer_forward(name: str, module: nn.Module, epsilon: float) -> Replacement:
    """The replacement of a module :func:`is_transformer_module` accepts: which method, ours,
    and the rules it applies."""
    for kind, make in TORCHVISION_FORWARDS.items():
        if isinstance(module, kind):
            return make(name, module, epsilon)
    timm, hf = timm_types(), hf_types()
    library = {
        timm.get("attention"): timm_attention_forward,
        timm.get("layer_scale"): layer_scale_forward,
        timm.get("vit"): timm_position_forward,
        hf.get("attention"): hf_attention_forward,
        hf.get("self_attention"): hf_self_attention_forward,
        hf.get("sdpa_self_attention"): hf_self_attention_forward,
        hf.get("embeddings"): hf_embeddings_forward,
    }
    make = library.get(type(module))
    if make is None:
        raise TypeError(f"not a transformer module: {type(module).__name__}")
    return make(name, module, epsilon)
