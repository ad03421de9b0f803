"""What every explainer takes and returns.

An explainer is a plain function registered under its client-facing name::

    @register("gradcam")
    def gradcam(handle, inputs, targets, *, layer=None, progress=None) -> Explanation

* ``handle`` (:class:`ModelHandle`): the model in eval mode on its device, with its
  preprocessing facts (input size, mean/std), labels and default layer.
* ``inputs``: one float tensor ``(B, 3, H, W)`` already resized and normalised, on
  ``handle.device``. Several jobs of a group are several rows.
* ``targets``: ``(B,)`` long tensor of class indices, one per row; ``-1`` (:data:`TOP1`)
  asks for the row's top-1 class, which the explainer reads from the first forward pass it
  runs on the clean input anyway (:func:`resolve_targets`): the prediction costs no pass of
  its own. Those clean logits come back in ``Explanation.logits``.
* keyword parameters: exactly the fields of the method's parameter model in
  ``app/contract/params`` (a test checks they agree), plus ``progress``.
* ``progress(done, total)``: call it between chunks of work (never while hooks are attached
  or inside a half-built batch); it may raise :class:`Cancelled`, which the explainer lets
  propagate. In the worker it is also where the scheduler runs other jobs' chunks before
  returning, so an explainer must not leave hooks or modified modules in place across it.
* No-grad model evaluations go through ``handle.evaluate(x)`` (never ``handle.model(x)``
  under ``inference_mode``): in the worker that call hands the rows to the model's batcher,
  which packs the rows of many jobs into one forward pass (and also yields to the scheduler).
  Long CPU work that does not touch the model goes through ``handle.offload(work)``, which
  the worker runs beside the other jobs' turns.

It returns an :class:`Explanation`: ``saliency`` ``(B, H, W)`` float32 at input resolution,
where larger means "drove the target score more" (sign kept, not normalised: the worker
normalises for display), and one metadata dict per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from workers.explainers.forward import forward_logits, prefers_channels_last

ProgressFn = Callable[[int, int], None]
EvaluateFn = Callable[[Tensor, str], Tensor]
"""``(inputs (n, C, H, W), precision) -> float32 logits (n, K)``, no gradient."""
OffloadFn = Callable[[Callable[[], Any]], Any]
"""Runs CPU work that never touches the model and returns its result."""

TOP1 = -1
"""A target meaning "the row's top-1 class on the clean input"."""


class Cancelled(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised from a progress callback when every job of the group was cancelled."""


class ExplainerError(ValueError):
    """A request that cannot be explained as asked (bad layer, unsupported architecture...).

    Its message is shown to the client (HTTP 422 semantics); the worker keeps serving.
    """


def no_progress(done: int, total: int) -> None:
    """The default progress callback: does nothing."""


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model and the facts about it that explainers need."""

    name: str
    model: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    labels: tuple[str, ...] = ()
    default_layer: str | None = None
    architecture: str = ""
    max_image_pixels: int | None = None
    """Largest upload the service accepts for this model (None: the gateway's limit)."""
    evaluator: EvaluateFn | None = field(default=None, repr=False, compare=False)
    """Where :meth:`evaluate` sends its rows (the worker's batcher); None: run them here."""
    offloader: OffloadFn | None = field(default=None, repr=False, compare=False)
    """Where :meth:`offload` runs CPU work (the worker's scheduler); None: here."""
    _auto_layer: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a parameter-free model)."""
        for tensor in self.model.parameters():
            return tensor.device
        return torch.device("cpu")

    def evaluate(self, inputs: Tensor, precision: str = "float32") -> Tensor:
        """Float32 logits ``(n, K)`` of a gradient-free forward pass of ``inputs``.

        Rows are independent: the worker may run them in one pass with other jobs' rows.
        """
        if self.evaluator is not None:
            return self.evaluator(inputs, precision)
        return forward_logits(self.model, inputs, precision, prefers_channels_last(self.model))

    def offload(self, work: Callable[[], Any]) -> Any:
        """``work()``: CPU work that never touches the model (superpixels, say). In the worker
        it runs beside other jobs' turns instead of holding the model while it computes."""
        if self.offloader is not None:
            return self.offloader(work)
        return work()

    def mean_std(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std as ``(1, C, 1, 1)`` tensors matching ``like``'s device and dtype."""
        mean = torch.tensor(self.mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        return mean, std

    def to_display(self, inputs: Tensor) -> Tensor:
        """Model-input space -> [0, 1] display space."""
        mean, std = self.mean_std(inputs)
        return inputs * std + mean

    def from_display(self, images: Tensor) -> Tensor:
        """[0, 1] display space -> model-input space."""
        mean, std = self.mean_std(images)
        return (images - mean) / std

    @property
    def opaque(self) -> bool:
        """Whether the model's layers cannot be hooked: a TorchScript module (its forward runs
        in C++) or a model that says so (an ONNX graph)."""
        return bool(getattr(self.model, "opaque", False)) or isinstance(
            self.model, torch.jit.ScriptModule
        )

    def resolve_layer(self, name: str | None) -> tuple[str, nn.Module]:
        """The layer called ``name``, else the default layer, else the last spatial module."""
        if self.opaque:
            raise ExplainerError(
                f"model {self.name!r} ({self.architecture or 'a model file'}) does not expose "
                "its layers (TorchScript and ONNX models cannot be hooked): layer-based methods "
                "need a PyTorch model (a factory or torchvision entry)"
            )
        if name is None:
            name = self.default_layer or self._find_last_spatial_layer()
        try:
            return name, self.model.get_submodule(name)
        except AttributeError as error:
            raise ExplainerError(f"model {self.name!r} has no layer {name!r}") from error

    def _find_last_spatial_layer(self) -> str:
        """The automatic layer (``layer_choice.py``), found once per handle."""
        if not self._auto_layer:
            from workers.explainers.layer_choice import find_auto_layer

            self._auto_layer.append(find_auto_layer(self))
        return self._auto_layer[0]


def resolve_targets(targets: Tensor, logits: Tensor) -> Tensor:
    """Each row's class: as requested, or its top-1 class in ``logits`` where it is :data:`TOP1`.

    ``logits`` must be the rows' clean-input logits (one row per target).
    """
    if not bool((targets < 0).any()):
        return targets
    top1 = logits.detach().argmax(dim=1).to(targets.device)
    return torch.where(targets < 0, top1, targets)


def clean_pass(
    handle: ModelHandle, inputs: Tensor, targets: Tensor, batch: int
) -> tuple[Tensor, Tensor]:
    """The inputs' logits ``(B, K)`` (gradient-free passes of at most ``batch`` rows) and the
    targets with top-1 requests resolved; both ordinary (non-inference) tensors."""
    parts = [
        handle.evaluate(inputs[start : start + batch]) for start in range(0, len(inputs), batch)
    ]
    with torch.inference_mode(False):
        logits = torch.cat(parts).clone()
        return logits, resolve_targets(targets, logits).clone()


@dataclass
class Explanation:
    """Saliency maps ``(B, H, W)``, one metadata dict per row, and the clean-input logits.

    ``logits`` ``(B, K)`` are the model's answer on the unperturbed inputs, from a pass the
    method ran anyway; the worker reports the prediction from them (None: it runs a pass).
    """

    saliency: Tensor
    meta: list[dict[str, Any]]
    logits: Tensor | None = None

    @classmethod
    def uniform(cls, saliency: Tensor, logits: Tensor | None = None, **meta: Any) -> Explanation:
        """Every row gets the same metadata."""
        return cls(saliency, [dict(meta) for _ in range(saliency.shape[0])], logits)


Explainer = Callable[..., Explanation]
