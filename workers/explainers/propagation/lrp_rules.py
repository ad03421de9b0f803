"""LRP rules as modified gradients (one autograd node per layer, no nested autograd).

Zennit's rules are written in *relevance space*: each layer's backward hook receives the
relevance ``R`` of its output, re-runs the layer with modified parameters and calls
``torch.autograd.grad`` to get ``R`` of its input. The same rules can be written in the space of
``c = R / a`` (relevance per unit of activation; Ancona et al., ICLR 2018, show ε-LRP is
"input × modified gradient"): a layer ``z = f(x)`` receives ``g = c_z`` and returns ``c_x``, and
``R_x = x ⊙ c_x``. In that space

* ReLU / LeakyReLU (Zennit's ``Pass``), max-pooling (winner takes all), sums and average pooling
  (Zennit's ``Norm``, up to its 1e-6 stabiliser) and every reshaping op are the *plain
  gradient*, so the model's own graph does that work;
* a convolution or dense layer becomes one custom node whose backward is one transposed
  convolution (or matrix product) with the rule's weights, after multiplying ``g`` by a ratio
  saved in the forward, e.g. for z⁺ with ``x ≥ 0``: ``c_x = convᵀ(g ⊙ z / (z⁺ + ε), w⁺)``.

The relevance seed ``R = onehot · logit`` becomes ``c = onehot``, an ordinary gradient seed.
Rules whose reducer is not "input × gradient" (``Flat``, ``ZBox``, only ever used on the
first layer) return the input relevance itself; the caller then takes the input gradient as
the relevance instead of multiplying it by the input.

Each rule follows Zennit 0.5.1's definitions exactly (``zennit/rules.py``: parameters clamped
with their biases, the ``stabilize`` sign convention ``sign(0) = +1``), so maps agree with
Zennit's attributor to float precision (checked in the tests). A rule has a general form for
inputs of any sign and a cheaper form for inputs known to be non-negative (post-ReLU), where
every negative-input term of Zennit's rule is exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Saved = tuple[Tensor, ...]


def stabilise(z: Tensor, epsilon: float) -> Tensor:
    """Zennit's ``stabilize``: ``z + ε·sign(z)`` with ``sign(0) = +1``."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def positive(t: Tensor | None) -> Tensor | None:
    """``max(t, 0)``, passing ``None`` through."""
    return None if t is None else t.clamp(min=0)


def negative(t: Tensor | None) -> Tensor | None:
    """``min(t, 0)``, passing ``None`` through."""
    return None if t is None else t.clamp(max=0)


@dataclass(frozen=True)
class LinearOp:
    """The geometry of a convolution or dense layer: apply it and its transpose."""

    kind: str  # "conv", "linear" or "affine" (element-wise ``x·w + b``, broadcast)
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, module: nn.Module) -> LinearOp:
        """The geometry of an ``nn.Conv2d`` or ``nn.Linear``."""
        if isinstance(module, nn.Conv2d):
            padding: Any = module.padding
            return cls("conv", module.stride, padding, module.dilation, module.groups)
        return cls("linear")

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``f(x; weight, bias)``."""
        if self.kind == "conv":
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.kind == "affine":
            return x * weight if bias is None else x * weight + bias
        return F.linear(x, weight, bias)

    def transpose(self, g: Tensor, weight: Tensor, in_shape: torch.Size) -> Tensor:
        """``fᵀ(g; weight)``: the gradient of ``f`` with respect to its input."""
        if self.kind == "conv":
            return torch.nn.grad.conv2d_input(
                in_shape, weight, g, self.stride, self.padding, self.dilation, self.groups
            )
        if self.kind == "affine":
            return g * weight
        return g @ weight


@dataclass(eq=False)
class Rule:
    """One layer's rule: its geometry, its (batch-norm merged) parameters, its flags."""

    name: str
    op: LinearOp
    weight: Tensor
    bias: Tensor | None
    nonneg: bool = False
    """Whether the layer's input is known to be non-negative (the cheaper form applies)."""
    emits_relevance: bool = False
    """Whether the backward returns ``R_x`` itself rather than ``c_x``."""
    cache: dict[Any, Tensor] = field(default_factory=dict, repr=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        """The layer's output and what its backward needs."""
        raise NotImplementedError

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        """``c_x`` (or ``R_x`` when ``emits_relevance``) from ``g = c_z``."""
        raise NotImplementedError

    def prepared(self, key: Any, make: Any) -> Tensor:
        """A derived weight, computed once per plan."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


@dataclass(eq=False)
class Epsilon(Rule):
    """LRP-ε: ``R_x = x ⊙ fᵀ(R_z / stab_ε(z); w)``."""

    epsilon: float = 1e-6

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        z = self.op(x, self.weight, self.bias)
        return z, (z / stabilise(z, self.epsilon),)

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        return self.op.transpose(g * saved[0], self.weight, in_shape)


@dataclass(eq=False)
class AlphaBeta(Rule):
    """LRP-αβ (z⁺ is α=1, β=0), with Zennit's signed form for negative inputs.

    ``R_x = α [x⁺ fᵀ(s⁺; w⁺) + x⁻ fᵀ(s⁺; w⁻)] − β [x⁺ fᵀ(s⁻; w⁻) + x⁻ fᵀ(s⁻; w⁺)]``, with
    ``s⁺ = R / stab(f(x⁺; w⁺, b⁺) + f(x⁻; w⁻))`` and ``s⁻ = R / stab(f(x⁺; w⁻, b⁻) + f(x⁻; w⁺))``.
    """

    alpha: float = 1.0
    beta: float = 0.0
    stabiliser: float = 1e-6

    def _weights(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        wp = self.prepared("w+", lambda: positive(self.weight))
        wn = self.prepared("w-", lambda: negative(self.weight))
        return wp, wn, positive(self.bias), negative(self.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        wp, wn, bp, bn = self._weights()
        z = self.op(x, self.weight, self.bias)
        if self.nonneg and not self.beta:  # z⁺ on post-ReLU inputs: z⁺ ≥ 0, stab = z⁺ + ε
            shifted = self.prepared("b+ε", lambda: self._shifted_bias(bp, wp))
            return z, (z / self.op(x, wp, shifted),)
        if self.nonneg:
            zp, zn = self.op(x, wp, bp), (self.op(x, wn, bn) if self.beta else None)
        else:
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            zp = self.op(xp, wp, bp) + self.op(xn, wn)
            zn = self.op(xp, wn, bn) + self.op(xn, wp) if self.beta else None
        rp = z * (self.alpha / stabilise(zp, self.stabiliser))
        rn = z * (-self.beta / stabilise(zn, self.stabiliser)) if zn is not None else None
        saved = (rp,) if rn is None else (rp, rn)
        return z, saved if self.nonneg else (*saved, x)

    def _shifted_bias(self, bp: Tensor | None, wp: Tensor) -> Tensor:
        """``b⁺ + ε``: the z⁺ stabiliser folded into the bias (zeros when there is no bias)."""
        base = bp if bp is not None else torch.zeros(wp.shape[0], dtype=wp.dtype, device=wp.device)
        return base + self.stabiliser

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        wp, wn, _, _ = self._weights()
        rp, rn = saved[0], (saved[1] if self.beta else None)
        sp, sn = g * rp, (g * rn if rn is not None else None)
        on_pos = self.op.transpose(sp, wp, in_shape)
        if sn is not None:
            on_pos = on_pos + self.op.transpose(sn, wn, in_shape)
        if self.nonneg:
            return on_pos
        x = saved[-1]
        on_neg = self.op.transpose(sp, wn, in_shape)
        if sn is not None:
            on_neg = on_neg + self.op.transpose(sn, wp, in_shape)
        return torch.where(x > 0, on_pos, torch.where(x < 0, on_neg, torch.zeros_like(on_pos)))


@dataclass(eq=False)
class Gamma(Rule):
    """Zennit's generalised LRP-γ: weights ``w + γw⁺`` for positive and ``w + γw⁻`` for
    negative outputs, each with the matching sign of the input.
    """

    gamma: float = 0.25
    stabiliser: float = 1e-6

    def _weights(self) -> tuple[Tensor, Tensor]:
        gp = self.prepared("wγ+", lambda: self.weight + self.gamma * self.weight.clamp(min=0))
        gn = self.prepared("wγ-", lambda: self.weight + self.gamma * self.weight.clamp(max=0))
        return gp, gn

    def _biases(self) -> tuple[Tensor | None, Tensor | None]:
        if self.bias is None:
            return None, None
        return (
            self.bias + self.gamma * self.bias.clamp(min=0),
            self.bias + self.gamma * self.bias.clamp(max=0),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        gp, gn = self._weights()
        z = self.op(x, self.weight, self.bias)
        if self.nonneg:  # f(x; w + γw^±, b + γb^±) = z + γ f(x; w^±, b^±), f(x; w⁻, b⁻) = z − z⁺
            zp = self.op(x, self.prepared("w+", lambda: positive(self.weight)), positive(self.bias))
            op_, on_ = z + self.gamma * zp, (1 + self.gamma) * z - self.gamma * zp
        else:
            bp, bn = self._biases()
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            op_ = self.op(xp, gp, bp) + self.op(xn, gn)
            on_ = self.op(xp, gn, bn) + self.op(xn, gp)
        rp = torch.where(z > 0, z, 0.0) / stabilise(op_, self.stabiliser)
        rn = torch.where(z < 0, z, 0.0) / stabilise(on_, self.stabiliser)
        return z, (rp, rn) if self.nonneg else (rp, rn, x)

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        gp, gn = self._weights()
        sp, sn = g * saved[0], g * saved[1]
        on_pos = self.op.transpose(sp, gp, in_shape) + self.op.transpose(sn, gn, in_shape)
        if self.nonneg:
            return on_pos
        x = saved[2]
        on_neg = self.op.transpose(sp, gn, in_shape) + self.op.transpose(sn, gp, in_shape)
        return torch.where(x > 0, on_pos, torch.where(x < 0, on_neg, torch.zeros_like(on_pos)))


@dataclass(eq=False)
class Flat(Rule):
    """LRP-flat (first layer): ``R_x = fᵀ(R_z / stab(f(1; 1)); 1)``, uniform over each unit's
    receptive field and independent of the input values. Returns ``R_x``.
    """

    stabiliser: float = 1e-6

    def _ones(self) -> Tensor:
        return self.prepared("ones", lambda: torch.ones_like(self.weight))

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        key = ("fan-in", *x.shape[1:])
        if key not in self.cache:
            ones = torch.ones((1, *x.shape[1:]), device=x.device, dtype=x.dtype)
            self.cache[key] = stabilise(self.op(ones, self._ones()), self.stabiliser)
        z = self.op(x, self.weight, self.bias)
        return z, (z / self.cache[key],)

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        return self.op.transpose(g * saved[0], self._ones(), in_shape)


@dataclass(eq=False)
class ZBox(Rule):
    """LRP-z^B (first layer, inputs bounded by ``low ≤ x ≤ high``). Returns ``R_x``:

    ``R_x = x fᵀ(s; w) − l fᵀ(s; w⁺) − h fᵀ(s; w⁻)``,
    ``s = R / stab(z − f(l; w⁺, b⁺) − f(h; w⁻, b⁻))``.
    """

    low: Tensor | None = None
    high: Tensor | None = None
    stabiliser: float = 1e-6

    def _bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        assert self.low is not None and self.high is not None
        low, high = self.low, self.high
        return (
            self.prepared(("low", x.device, x.dtype), lambda: low.to(x)),
            self.prepared(("high", x.device, x.dtype), lambda: high.to(x)),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        wp = self.prepared("w+", lambda: positive(self.weight))
        wn = self.prepared("w-", lambda: negative(self.weight))
        shape = (1, *x.shape[1:])
        low, high = self._bounds(x)
        z = self.op(x, self.weight, self.bias)
        bounds = self.op(low.expand(shape), wp, positive(self.bias)) + self.op(
            high.expand(shape), wn, negative(self.bias)
        )
        return z, (z / stabilise(z - bounds, self.stabiliser), x)

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        s, x = g * saved[0], saved[1]
        low, high = self._bounds(x)
        return (
            x * self.op.transpose(s, self.weight, in_shape)
            - low * self.op.transpose(s, self.cache["w+"], in_shape)
            - high * self.op.transpose(s, self.cache["w-"], in_shape)
        )


@dataclass(eq=False)
class Prepend(Rule):
    """A constant token put before the sequence (a transformer's class token): ``z = [t; x]``
    along dim 1. The token is a constant input: the relevance that reaches it stays there, as a
    bias's does; the sequence's passes unchanged."""

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]:
        token = self.weight.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([token, x], dim=1), ()

    def backward(self, g: Tensor, saved: Saved, in_shape: torch.Size) -> Tensor:
        return g[:, self.weight.shape[1] :]


class RuleFunction(torch.autograd.Function):
    """The autograd node of one rule layer: forward value exact, backward the rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: Rule) -> Tensor:  # type: ignore[override]
        z, saved = rule.forward(x)
        ctx.rule = rule
        ctx.in_shape = x.shape
        ctx.save_for_backward(*saved)
        return z

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.rule.backward(g, ctx.saved_tensors, ctx.in_shape), None


def rule_forward(rule: Rule) -> Any:
    """A replacement ``forward`` for the layer that ``rule`` stands for."""

    def forward(x: Tensor) -> Tensor:
        return RuleFunction.apply(x, rule)

    return forward
