"""Which LRP rule goes where, batch-norm merging, and the per-call layer replacement.

Rule assignment is Zennit's: the composite's own ``module_map`` (``zennit.composites``) is asked
for every module, exactly as ``Composite.register`` does, and the rule it names is carried out
by the matching modified-gradient rule of :mod:`lrp_rules`. Batch norms are merged into the
convolution or dense layer that precedes them among the model's leaves, as Zennit's
``SequentialMergeBatchNorm`` (and so its ``ResNetCanonizer`` and ``VGGCanonizer``) pairs them.
Residual additions need no canonizer here: in the modified-gradient form the plain gradient of
``a + b`` is Zennit's ``Norm`` rule for a ``Sum`` module. SiLU, Hardswish, GELU, Mish, ReLU6 and
Tanh get the identity rule and torchvision's squeeze-and-excitation gates are held constant
(:func:`identity_rule_forward`, :func:`gate_forward`): MobileNetV3, EfficientNet and RegNetY.
Attention (ViT, Swin and MaxViT windows), LayerNorm, ViT tokens (torchvision, timm, Hugging
Face) and ConvNeXt's layer scale get the conservative rules of :mod:`lrp_transformer`. Any other
container whose forward uses parameters of its own (timm's distilled DeiT) is refused by name:
those parameters have no rule.

Nothing of the model is modified: merged and rule weights are separate tensors, cached per
model and invalidated when any parameter or buffer of a ruled layer changes (data pointer or
version counter). For the duration of one forward pass the ruled layers' ``forward`` is replaced
by an instance attribute (as Zennit's attribute canonizers do) and removed in ``finally``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops.misc import SqueezeExcitation
from zennit import composites as zc
from zennit import rules as zr
from zennit.core import Composite, collect_leaves
from zennit.types import BatchNorm, Convolution
from zennit.types import Linear as ZennitLinear

from workers.explainers.base import ExplainerError
from workers.explainers.propagation import lrp_rules as lr
from workers.explainers.propagation.lrp_transformer import (
    hf_types,
    is_attention,
    is_transformer_module,
    transformer_forward,
)

COMPOSITE_NAMES = (
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_alpha2_beta1_flat",
    "epsilon_alpha2_beta1",
    "epsilon_gamma_box",
    "epsilon",
)
PASS_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
"""Activations whose Zennit ``Pass`` rule equals their gradient in the c = R / a space."""
IDENTITY_RULE_ACTIVATIONS = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ReLU6, nn.Tanh)
"""Element-wise activations ``f(x) = x·g(x)`` with ``g ≥ 0`` given the identity rule
``R_x = R_f(x)`` (Zennit's ``Pass``; AttnLRP, Achtibat et al. ICML 2024, Sec. 3.3.2, for GELU and
SiLU): in the c = R / a space its modified gradient is ``g(x) = f(x) / x`` (sigmoid(x) for SiLU,
hardsigmoid(x) for Hardswish, Φ(x) for GELU, tanh(x) / x for the Tanh of MaxViT's head), so
the forward becomes ``x · g(x).detach()``."""


def identity_rule_activations() -> tuple[type, ...]:
    """:data:`IDENTITY_RULE_ACTIVATIONS` and, when transformers is loaded, its GELU module."""
    gelu = hf_types().get("gelu")
    return IDENTITY_RULE_ACTIVATIONS if gelu is None else (*IDENTITY_RULE_ACTIVATIONS, gelu)


def zennit_composite(name: str, epsilon: float, low: Tensor, high: Tensor) -> Composite:
    """The Zennit composite called ``name`` (no canonizers: merging is done here)."""
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=low, high=high, epsilon=epsilon)
    if name == "epsilon":
        layer_map = [
            *zc.layer_map_base(),
            (Convolution, zr.Epsilon(epsilon=epsilon)),
            (torch.nn.Linear, zr.Epsilon(epsilon=epsilon)),
        ]
        return zc.LayerMapComposite(layer_map=layer_map)
    classes: dict[str, Callable[..., Composite]] = {
        "epsilon_plus_flat": zc.EpsilonPlusFlat,
        "epsilon_plus": zc.EpsilonPlus,
        "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
        "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
    }
    if name not in classes:
        raise ExplainerError(f"unknown LRP composite {name!r}; one of {', '.join(COMPOSITE_NAMES)}")
    return classes[name](epsilon=epsilon)


def make_rule(
    template: Any, name: str, module: nn.Module, weights: tuple[Tensor, Tensor | None], **kw: Any
) -> lr.Rule:
    """Our rule for the Zennit rule ``template`` (parameters as Zennit's composites set them)."""
    op = lr.LinearOp.of(module)
    weight, bias = weights
    if isinstance(template, zr.Epsilon):
        return lr.Epsilon(name, op, weight, bias, epsilon=kw["epsilon"])
    if isinstance(template, zr.ZPlus):
        return lr.AlphaBeta(name, op, weight, bias, alpha=1.0, beta=0.0)
    if isinstance(template, zr.AlphaBeta):  # both AlphaBeta composites use alpha=2, beta=1
        return lr.AlphaBeta(name, op, weight, bias, alpha=2.0, beta=1.0)
    if isinstance(template, zr.Gamma):  # EpsilonGammaBox's default gamma
        return lr.Gamma(name, op, weight, bias, gamma=0.25)
    if isinstance(template, zr.Flat):
        return lr.Flat(name, op, weight, bias, emits_relevance=True)
    if isinstance(template, zr.ZBox):
        return lr.ZBox(name, op, weight, bias, emits_relevance=True, low=kw["low"], high=kw["high"])
    raise ExplainerError(f"LRP rule {type(template).__name__} (layer {name!r}) is not supported")


def merged_weights(module: nn.Module, norm: nn.Module | None) -> tuple[Tensor, Tensor | None]:
    """The layer's weight and bias with the following batch norm folded in (Zennit's formula)."""
    weight, bias = module.weight.detach(), module.bias
    bias = None if bias is None else bias.detach()
    if norm is None:
        return weight, bias
    if norm.running_mean is None or norm.running_var is None:
        raise ExplainerError(f"batch norm after {module!r} has no running statistics to merge")
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach()
    view = (-1,) + (1,) * (weight.dim() - 1)
    new_bias = shift if bias is None else bias * scale + shift
    return weight * scale.view(view), new_bias


def merge_pairs(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Layer -> the batch norm right after it among the leaves (``SequentialMergeBatchNorm``),
    when the norm has as many channels as the layer has outputs (DenseNet registers a layer's
    last convolution right before the next layer's norm, which acts on a concatenation)."""
    pairs: dict[nn.Module, nn.Module] = {}
    last: nn.Module | None = None
    for leaf in collect_leaves(model):
        follows = isinstance(last, ZennitLinear) and isinstance(leaf, BatchNorm)
        if follows and _outputs(last) in (None, leaf.num_features):  # else it norms another
            pairs[last] = leaf
        last = leaf
    return pairs


def _outputs(layer: nn.Module) -> int | None:
    """Output channels or features of a convolution or dense layer (None if unknown)."""
    return getattr(layer, "out_channels", getattr(layer, "out_features", None))


def check_layer(name: str, module: nn.Module) -> None:
    """Only plain ``Conv2d`` / ``Linear`` layers can have their forward replaced faithfully."""
    plain = (nn.Conv2d, nn.Linear)
    if type(module) not in plain:
        raise ExplainerError(
            f"LRP: layer {name!r} is a {type(module).__name__}; supported layers with a rule "
            "are torch.nn.Conv2d and torch.nn.Linear"
        )
    if isinstance(module, nn.Conv2d) and (
        module.padding_mode != "zeros" or isinstance(module.padding, str)
    ):
        raise ExplainerError(f"LRP: convolution {name!r} uses unsupported padding")


def affine_rule(name: str, norm: nn.Module, epsilon: float) -> lr.Rule:
    """The ε-rule for a batch norm that follows no convolution or dense layer (DenseNet's norms
    after a concatenation): in eval mode it is the per-channel affine map ``s·x + t``, a
    depthwise 1×1 convolution, so ``R_x = s·x / stab_ε(s·x + t) · R_y`` (Hui & Binder, "BatchNorm
    Decomposition for Deep Neural Network Interpretation", IWANN 2019, treat it so)."""
    if type(norm) is not nn.BatchNorm2d:
        raise ExplainerError(
            f"LRP: batch norm {name!r} ({type(norm).__name__}) follows no convolution or dense "
            "layer; only a BatchNorm2d can then be ruled on its own"
        )
    channels = norm.num_features
    identity = torch.ones(channels, 1, 1, 1, device=norm.running_mean.device)
    weight, shift = merged_weights(_Depthwise(identity), norm)
    return lr.Epsilon(name, lr.LinearOp("conv", groups=channels), weight, shift, epsilon=epsilon)


@dataclass(eq=False)
class _Depthwise:
    """A stand-in identity layer with a weight and no bias, for :func:`merged_weights`."""

    weight: Tensor
    bias: Tensor | None = None


def identity_rule_forward(activation: nn.Module) -> Callable[[Tensor], Tensor]:
    """The forward of an :data:`IDENTITY_RULE_ACTIVATIONS` module under the identity rule: the
    same values, ``x · g(x)`` with the gate ``g = f(x) / x`` (0 where x = 0) held constant."""
    function = type(activation).forward

    def forward(x: Tensor) -> Tensor:
        with torch.no_grad():
            plain = x.detach()
            y = function(activation, plain.clone())  # a clone: the module may act in place
            gate = torch.where(plain != 0, y / plain, torch.zeros_like(plain))
        return x * gate

    return forward


def gate_forward(block: SqueezeExcitation) -> Callable[[Tensor], Tensor]:
    """A squeeze-and-excitation block's forward with its channel gate held constant: the gate
    is a per-channel weight computed from the input, like a batch norm's scale, and takes no
    relevance; the signal takes all of it (Arras et al., "Explaining Recurrent Neural Network
    Predictions in Sentiment Analysis", WASSA 2017, for multiplicative gates)."""

    def forward(x: Tensor) -> Tensor:
        with torch.no_grad():
            scale = block._scale(x.detach())
        return scale * x

    return forward


def check_passive(name: str, module: nn.Module, template: Any) -> None:
    """A module without a rule of ours must be one whose gradient is its LRP rule."""
    if isinstance(module, BatchNorm):
        return
    if isinstance(template, zr.Pass) and not isinstance(module, PASS_ACTIVATIONS):
        supported = ", ".join(t.__name__ for t in PASS_ACTIVATIONS + IDENTITY_RULE_ACTIVATIONS)
        raise ExplainerError(
            f"LRP: activation {name!r} ({type(module).__name__}) is not supported; {supported} are"
        )
    if template is None:
        leaf = next(module.children(), None) is None
        own = [*module.parameters(recurse=False)]
        own += [*module.buffers(recurse=False)] if leaf else []  # a container's: indices
        if own:  # a container's own parameters are used outside any layer with a rule
            where = f"layer {name!r}" if name else "the model's own parameters"
            raise ExplainerError(
                f"LRP: no rule for {where} ({type(module).__name__}); architecture not supported"
            )


@dataclass(eq=False)
class Plan:
    """Rules for one model and composite, and the state of its one-time validation."""

    rules: dict[str, lr.Rule]
    modules: dict[str, nn.Module]
    norms: list[nn.Module]
    signature: tuple[tuple[int, int], ...]
    emits_relevance: bool
    replaced: list[tuple[nn.Module, str, Callable[..., Any]]] = field(default_factory=list)
    """(module, method name, ours): the forwards of rule-free modules (identity-rule
    activations, gates) and the methods of transformer parts, whose rules are in ``inner``."""
    inner: dict[str, lr.Rule] = field(default_factory=dict)
    """Rules applied inside a replaced forward (attention, LayerNorm, ViT tokens)."""
    watched: list[nn.Module] = field(default_factory=list)
    """Further modules whose parameters the rules copy (for :func:`signature`)."""
    validated: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def all_rules(self) -> dict[str, lr.Rule]:
        """Every rule by name: the ruled layers' and those inside replaced forwards."""
        return {**self.rules, **self.inner}

    def watched_modules(self) -> list[nn.Module]:
        """The modules whose parameters and buffers the plan's rules were made from."""
        return [*self.modules.values(), *self.norms, *self.watched]

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Replace ruled layers' forward (and merged norms' by the identity) for the block."""
        patched: list[tuple[nn.Module, str]] = []
        try:
            targets = [
                (self.modules[n], "forward", lr.rule_forward(r)) for n, r in self.rules.items()
            ]
            targets += [(norm, "forward", _identity) for norm in self.norms]
            targets += self.replaced
            for module, method, function in targets:
                if method in module.__dict__:
                    raise ExplainerError(
                        f"LRP: a {type(module).__name__} already has its {method} replaced "
                        "(another canonizer active?)"
                    )
                setattr(module, method, function)
                patched.append((module, method))
            yield
        finally:
            for module, method in patched:
                delattr(module, method)


def _identity(x: Tensor) -> Tensor:
    return x


def signature(modules: list[nn.Module]) -> tuple[tuple[int, int], ...]:
    """Data pointers and version counters of the modules' parameters and buffers."""
    return tuple(
        (t.data_ptr(), t._version)
        for m in modules
        for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
    )


def build_plan(model: nn.Module, composite: Composite, **rule_kw: Any) -> Plan:
    """Assign rules to ``model``'s modules the way ``composite.register`` would."""
    pairs = merge_pairs(model)
    merged = set(pairs.values())
    rules: dict[str, lr.Rule] = {}
    modules: dict[str, nn.Module] = {}
    replaced: list[tuple[nn.Module, str, Callable[..., Any]]] = []
    inner: dict[str, lr.Rule] = {}
    watched: list[nn.Module] = []
    skipped: list[str] = []
    ctx: dict[Any, Any] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if any(name.startswith(f"{outer}.") for outer in skipped):
                continue  # inside a constant gate or an attention block: nothing to rule
            if isinstance(module, SqueezeExcitation):
                replaced.append((module, "forward", gate_forward(module)))
                skipped.append(name)
                continue
            if is_transformer_module(module):
                method, function, inside = transformer_forward(name, module, rule_kw["epsilon"])
                replaced.append((module, method, function))
                inner.update((rule.name, rule) for rule in inside)
                watched.append(module)
                if is_attention(module):  # its projections are ruled inside its forward
                    watched.extend(module.children())
                    skipped.append(name)
                continue
            if isinstance(module, identity_rule_activations()):
                replaced.append((module, "forward", identity_rule_forward(module)))
                continue
            template = composite.module_map(ctx, name, module)
            if isinstance(module, BatchNorm) and module not in merged:
                rules[name] = affine_rule(name, module, rule_kw["epsilon"])
                modules[name] = module
                continue
            if isinstance(template, zr.Pass | zr.Norm) or template is None:
                check_passive(name, module, template)
                continue
            check_layer(name, module)
            weights = merged_weights(module, pairs.get(module))
            rules[name] = make_rule(template, name, module, weights, **rule_kw)
            modules[name] = module
    if not rules and not inner:
        raise ExplainerError("LRP: the model has no convolution or dense layer")
    norms = [pairs[m] for m in modules.values() if m in pairs]
    emitting = [r for r in rules.values() if r.emits_relevance]
    return Plan(
        rules=rules,
        modules=modules,
        norms=norms,
        signature=signature([*modules.values(), *norms, *watched]),
        emits_relevance=bool(emitting),
        replaced=replaced,
        inner=inner,
        watched=watched,
    )


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[Any, Plan]] = weakref.WeakKeyDictionary()


def plan_for(
    model: nn.Module,
    name: str,
    epsilon: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Plan:
    """The cached plan for ``model`` and composite ``name``; rebuilt if the model changed.

    ``mean`` and ``std`` (the model's input normalisation) give the pixel bounds of ``ZBox``:
    ``(0 - mean) / std`` and ``(1 - mean) / std``.
    """
    key = (name, float(epsilon), tuple(mean), tuple(std))
    plans = _PLANS.setdefault(model, {})
    plan = plans.get(key)
    if plan is not None and plan.signature == signature(plan.watched_modules()):
        return plan
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    low, high = (0 - m) / s, (1 - m) / s
    composite = zennit_composite(name, epsilon, low, high)
    plan = build_plan(model, composite, epsilon=epsilon, low=low, high=high)
    plans[key] = plan
    return plan
