"""Element-wise optimisers written as plain tensor updates.

Why not ``torch.optim``: the loop may freeze rows that stopped early and go on with the rest,
so it needs to update a subset of rows of one parameter tensor together with the matching rows
of the optimiser state. Each optimiser here is element-wise, so one update over a ``(N, ...)``
parameter tensor whose loss is a *sum* of per-row losses gives every row exactly the update
it would get alone. The formulas follow the reference implementations named on each class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

State = dict[str, Tensor]


class Optimiser(Protocol):
    """An element-wise first-order optimiser."""

    def init_state(self, params: Tensor) -> State:
        """Zero (or initial) state tensors shaped like ``params``."""
        ...

    def step(self, params: Tensor, grad: Tensor, state: State, t: int) -> None:
        """Update ``params`` and ``state`` in place; ``t`` counts steps from 0."""
        ...


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba), bias-corrected, as ``torch.optim.Adam`` and the MP reference code."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init_state(self, params: Tensor) -> State:
        """First and second moments, zero."""
        return {"m": torch.zeros_like(params), "v": torch.zeros_like(params)}

    def step(self, params: Tensor, grad: Tensor, state: State, t: int) -> None:
        """``p −= lr · m̂ / (√v̂ + ε)``."""
        m, v = state["m"], state["v"]
        m.mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
        v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        m_hat = m / (1 - self.beta1 ** (t + 1))
        v_hat = v / (1 - self.beta2 ** (t + 1))
        params.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


@dataclass(frozen=True)
class RMSPropTF1:
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` (used by NeuroMask's code).

    ``ms ← ρ·ms + (1−ρ)·g²``, ``p ← p − lr·g / √(ms + ε)``, with the mean-square accumulator
    initialised to ``ms_init`` (TF1: ones; ``torch.optim.RMSprop``: zeros).
    """

    lr: float
    decay: float = 0.9
    eps: float = 1e-10
    ms_init: float = 1.0

    def init_state(self, params: Tensor) -> State:
        """The mean-square accumulator."""
        return {"ms": torch.full_like(params, self.ms_init)}

    def step(self, params: Tensor, grad: Tensor, state: State, t: int) -> None:
        """One RMSProp update."""
        ms = state["ms"]
        ms.mul_(self.decay).addcmul_(grad, grad, value=1 - self.decay)
        params.sub_(self.lr * grad / (ms + self.eps).sqrt())


@dataclass(frozen=True)
class SGDMomentum:
    """SGD with momentum and dampening, as ``torch.optim.SGD`` (used by TorchRay's EP).

    First step: ``b ← g``; then ``b ← μ·b + (1−d)·g``; always ``p ← p − lr·b``.
    """

    lr: float
    momentum: float = 0.9
    dampening: float = 0.9

    def init_state(self, params: Tensor) -> State:
        """The momentum buffer."""
        return {"buf": torch.zeros_like(params)}

    def step(self, params: Tensor, grad: Tensor, state: State, t: int) -> None:
        """One SGD step."""
        buf = state["buf"]
        if t == 0:
            buf.copy_(grad)
        else:
            buf.mul_(self.momentum).add_(grad, alpha=1 - self.dampening)
        params.sub_(self.lr * buf)
