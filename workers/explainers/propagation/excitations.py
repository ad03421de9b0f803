"""The excitations of Gradual Extrapolation: which layers, and recording one forward pass.

Hooks go on every leaf ``MaxPool2d`` and every leaf ``Conv2d`` with a stride above 1 (as the
released code registers them, recursively over the model's children), plus a pre-hook and a hook
on the model itself that count its forward passes, so that the excitations of the base method's
own forward pass can be reused when it ran exactly one pass over the batch. Hooks live only
inside :func:`recording` and are removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


def excitation_layers(model: nn.Module) -> list[nn.Module]:
    """Leaf ``MaxPool2d`` modules and leaf ``Conv2d`` modules with a stride above 1."""
    found = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        if isinstance(module, nn.MaxPool2d) or (
            isinstance(module, nn.Conv2d) and max(module.stride) > 1
        ):
            found.append(module)
    return found


@dataclass
class Recorder:
    """Excitations of the first forward pass of the model, and how many samples it evaluated."""

    excitations: list[Tensor] = field(default_factory=list)
    calls: int = 0
    samples: int = 0
    recording: bool = False
    first_is_input: bool = False
    """Whether ``E₀`` is the model input itself (the first hooked layer is the first layer)."""
    model_input: Tensor | None = None

    def on_model(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args and isinstance(args[0], Tensor) else None
        self.calls += 1
        self.samples += int(first.shape[0]) if first is not None else 0
        self.recording = self.calls == 1
        self.model_input = first if self.recording else self.model_input

    def on_model_done(self, *_: Any) -> None:
        self.recording = False

    def on_layer(self, _module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if not self.recording:
            return
        if not self.excitations:
            self.excitations.append(args[0].detach())
            self.first_is_input = args[0] is self.model_input
        self.excitations.append(output.detach())

    def clean(self, batch: int) -> list[Tensor] | None:
        """The recorded excitations if exactly one forward pass of ``batch`` rows happened."""
        if self.calls == 1 and self.samples == batch:
            return self.excitations
        return None


@contextmanager
def recording(model: nn.Module, layers: list[nn.Module]) -> Iterator[Recorder]:
    """Hooks on the model and the excitation layers for the block; removed in ``finally``."""
    recorder = Recorder()
    handles = [
        model.register_forward_pre_hook(recorder.on_model),
        model.register_forward_hook(recorder.on_model_done),
    ]
    try:
        handles += [layer.register_forward_hook(recorder.on_layer) for layer in layers]
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
