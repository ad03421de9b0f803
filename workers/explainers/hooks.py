"""Scoped forward/backward hooks: they exist only inside the ``with`` block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


@dataclass
class Captured:
    """What a hooked layer produced during the block."""

    activations: list[Tensor] = field(default_factory=list)
    gradients: list[Tensor] = field(default_factory=list)

    @property
    def activation(self) -> Tensor:
        """The last forward output of the layer."""
        if not self.activations:
            raise RuntimeError("the hooked layer was not executed in the forward pass")
        return self.activations[-1]

    @property
    def gradient(self) -> Tensor:
        """The gradient of the last backward pass with respect to that output."""
        if not self.gradients:
            raise RuntimeError("no gradient reached the hooked layer")
        return self.gradients[-1]


@contextmanager
def capture(layer: nn.Module, *, gradients: bool = True, detach: bool = True) -> Iterator[Captured]:
    """Record ``layer``'s outputs (and their gradients) while the block runs.

    The hooks are removed in ``finally``, also when the block raises. With ``detach=False``
    the recorded activation stays in the autograd graph (for methods that differentiate
    through it).
    """
    captured = Captured()

    def on_forward(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"hooked layer returned {type(output).__name__}, not a tensor")
        captured.activations.append(output.detach() if detach else output)
        if gradients and output.requires_grad:

            def on_grad(grad: Tensor) -> None:
                captured.gradients.append(grad.detach())

            output.register_hook(on_grad)

    handle = layer.register_forward_hook(on_forward)
    try:
        yield captured
    finally:
        handle.remove()
