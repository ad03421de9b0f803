"""Scoped forward/backward hooks: they exist only inside the ``with`` block.

:func:`capture` records what one or several layers output during a forward pass. The hooks are
registered on entry and removed in ``finally`` (also when the block raises), so a model never
keeps a hook across calls. Recorded tensors stay on the model's device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from workers.explainers.base import ExplainerError


@dataclass
class Captured:
    """What a hooked layer produced during the block."""

    activations: list[Tensor] = field(default_factory=list)
    gradients: list[Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    """When each activation was recorded: the count of hooked outputs seen before it."""

    @property
    def activation(self) -> Tensor:
        """The last forward output of the layer."""
        if not self.activations:
            raise ExplainerError("the chosen layer is not executed in the model's forward pass")
        return self.activations[-1]

    @property
    def gradient(self) -> Tensor:
        """The gradient of the last backward pass with respect to that output."""
        if not self.gradients:
            raise ExplainerError("no gradient of the target reaches the chosen layer")
        return self.gradients[-1]


def _recorder(
    captured: Captured, clock: Iterator[int], *, gradients: bool, detach: bool, cut: bool
) -> Any:
    """A forward hook that appends the layer's output to ``captured``."""

    def on_forward(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        step = next(clock)
        captured.steps.append(step)
        if not isinstance(output, Tensor):
            raise ExplainerError(
                f"the chosen layer returns {type(output).__name__}, not a tensor; "
                "choose a layer with a (B, C, h, w) tensor output"
            )
        if cut and step == 0:  # only the first (shallowest): deeper ones stay connected to it
            output = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # record from here on, if the forward began without
        captured.activations.append(output.detach() if detach else output)
        if gradients and output.requires_grad:

            def on_grad(grad: Tensor) -> None:
                captured.gradients.append(grad.detach())

            output.register_hook(on_grad)
        # Downstream modules get a copy, so an in-place op after the layer (ReLU(inplace=True),
        # `out += identity`) cannot overwrite the recorded activation or its autograd node.
        return output.clone()

    return on_forward


@contextmanager
def capture_many(
    layers: Sequence[nn.Module],
    *,
    gradients: bool = True,
    detach: bool = True,
    cut: bool = False,
) -> Iterator[list[Captured]]:
    """Record the outputs of every module in ``layers`` while the block runs.

    With ``detach=False`` the recorded activations stay in the autograd graph (for methods
    that differentiate with respect to them). Downstream modules always receive a clone, so
    in-place operations after the layer leave the recorded tensor intact.

    With ``cut=True`` the first hooked output of the block is replaced by a new leaf that
    requires grad, and gradient recording is switched on from there: gradients with respect
    to it (and to the hooked layers after it) need no graph upstream of it. Run the forward
    under ``torch.no_grad()`` then: the layers before the hooked one run as plain inference
    (faster, no saved tensors), and neither the input nor the parameters need
    ``requires_grad``. The ``no_grad`` block restores the grad mode when it exits.
    """
    records = [Captured() for _ in layers]
    clock = itertools.count()
    handles = []
    try:
        for layer, captured in zip(layers, records, strict=True):
            hook = _recorder(captured, clock, gradients=gradients, detach=detach, cut=cut)
            handles.append(layer.register_forward_hook(hook))
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(layer: nn.Module, *, gradients: bool = True, detach: bool = True) -> Iterator[Captured]:
    """Record ``layer``'s outputs (and their gradients) while the block runs.

    The hook is removed in ``finally``, also when the block raises. See :func:`capture_many`.
    """
    with capture_many([layer], gradients=gradients, detach=detach) as (captured,):
        yield captured
