"""The skeleton shared by the CAM methods: layer choice, one hooked forward + backward, checks.

Every gradient CAM is "forward, backward to the layer, combine ``A`` and ``G``"; the methods
differ only in the pure combination (``workers/explainers/cam/formulas.py``). This module owns
the model-facing part:

* :func:`resolve_layers` picks the layer(s) by dotted name, else the model's default layer,
  else the last module with a spatial output (found by a probe forward), and says which.
* :func:`layer_gradients` runs one forward and one backward for the whole batch. Rows do not
  interact in eval mode, so back-propagating ``Σ_b S_{c_b}(x_b)`` gives every row the gradient
  of its own target. Hooks live only inside the call; gradients are taken with
  ``torch.autograd.grad`` (no ``.grad`` is written on parameters).
* Layer outputs are read as ``(B, C, h, w)`` maps whatever their layout (channels-last maps
  permuted, transformer tokens laid out on their patch grid: ``layouts.py``); an output with
  no grid is refused rather than mis-read.
* :func:`finish_maps` applies the final ReLU and refuses a layer whose map is all zero before
  the ReLU (no activation or no gradient reaches it), which would otherwise come back blank.
* :func:`explanation` up-samples to the input size and builds the per-row metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from workers.explainers.base import ExplainerError, Explanation, ModelHandle, resolve_targets
from workers.explainers.cam.formulas import weighted_sum
from workers.explainers.hooks import capture_many
from workers.explainers.layouts import Layout, spatial_view
from workers.explainers.postprocess import upsample


@dataclass
class CamResult:
    """Maps at the layer's resolution (ReLU applied) and what the explanation should report."""

    layer: str
    maps: Tensor
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str | None] = field(default_factory=list)
    row_meta: list[dict[str, Any]] = field(default_factory=list)
    """Metadata that differs between rows (merged over ``meta``)."""
    logits: Tensor | None = None
    """``(B, K)`` clean-input logits from the method's own forward pass."""
    targets: Tensor | None = None
    """``(B,)`` the classes explained (top-1 requests resolved)."""


def resolve_layers(
    handle: ModelHandle, names: Sequence[str | None]
) -> tuple[list[str], list[nn.Module], str]:
    """Modules for ``names`` (None = the default / automatic layer) and how they were chosen."""
    if any(name is not None for name in names):
        source = "request"
    elif handle.default_layer:
        source = "default"
    else:
        source = "auto"
    resolved = [handle.resolve_layer(name) for name in names]
    return [name for name, _ in resolved], [module for _, module in resolved], source


def _layout(handle: ModelHandle, name: str, activation: Tensor, inputs: Tensor) -> Layout:
    """How layer ``name``'s output holds its grid (ExplainerError if it has none)."""
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    return spatial_view(name, activation, size, handle.model)[1]


@dataclass
class LayerPass:
    """What one hooked forward + backward gave, per requested layer."""

    logits: Tensor
    activations: list[Tensor]
    gradients: list[Tensor]
    order: list[int]
    """Indices of the requested layers sorted by when they ran (shallow to deep)."""
    targets: Tensor
    """The rows' classes, top-1 requests resolved from this pass's logits."""
    layouts: list[Layout] = field(default_factory=list)
    """How each layer's output held its grid (activations and gradients are ``(B, C, h, w)``
    views of it)."""


def _hooked_forward(
    handle: ModelHandle,
    x: Tensor,
    targets: Tensor,
    modules: Sequence[nn.Module],
    upstream_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[int]]:
    """(logits, targets, summed target logits, activations, hook steps) of one forward."""
    with capture_many(modules, gradients=False, detach=False, cut=True) as records:
        with torch.set_grad_enabled(upstream_grad):
            logits = handle.model(x)  # the first hooked layer turns recording on
        activations = [record.activation for record in records]
        steps = [record.steps[-1] for record in records]
    targets = resolve_targets(targets.detach().clone().to(logits.device), logits)
    return logits, targets, logits.gather(1, targets.view(-1, 1)).sum(), activations, steps


def layer_gradients(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    names: Sequence[str],
    modules: Sequence[nn.Module],
) -> LayerPass:
    """One forward + backward: activations of each layer and ``∂S_target/∂activations``.

    A top-1 request (``-1``) is resolved per row from this pass's logits, so it must only be
    made for rows that are clean inputs.

    The layers before the first hooked one run without gradient recording: ``∂S/∂A`` depends
    only on what comes after ``A``. If the model switches recording off again on its own (a
    ``no_grad`` block spanning the layer), the forward is repeated with recording throughout.
    """
    with torch.inference_mode(False), torch.enable_grad():
        # Autograd refuses inference-mode tensors: those are cloned into normal ones.
        x = inputs.detach()
        x = x.clone() if x.is_inference() else x
        logits, chosen, score, activations, steps = _hooked_forward(
            handle, x, targets, modules, False
        )
        if not score.requires_grad and activations:
            logits, chosen, score, activations, steps = _hooked_forward(
                handle, x, targets, modules, True
            )
        layouts = [
            _layout(handle, name, activation, x)
            for name, activation in zip(names, activations, strict=True)
        ]
        if not score.requires_grad:
            raise ExplainerError(f"the target does not depend on layer {names[0]!r}")
        gradients = torch.autograd.grad(score, activations, allow_unused=True)
    out: list[Tensor] = []
    for name, gradient, layout in zip(names, gradients, layouts, strict=True):
        if gradient is None:
            raise ExplainerError(f"the target does not depend on layer {name!r}")
        out.append(layout.to_map(gradient.detach()))
    order = sorted(range(len(steps)), key=steps.__getitem__)
    maps = [layout.to_map(a.detach()) for a, layout in zip(activations, layouts, strict=True)]
    return LayerPass(logits.detach(), maps, out, order, chosen, layouts)


def layer_activations(
    handle: ModelHandle, inputs: Tensor, name: str, module: nn.Module
) -> tuple[Tensor, Tensor]:
    """One gradient-free forward: the layer's activations ``(B, K, h, w)`` and the logits."""
    with torch.inference_mode(), capture_many([module], gradients=False) as (record,):
        logits = handle.model(inputs)
        activation = record.activation
    layout = _layout(handle, name, activation, inputs)
    return layout.to_map(activation), logits.float()


def finish_maps(raw: Tensor, layer: str, method: str) -> tuple[Tensor, list[str | None]]:
    """ReLU of the raw maps; :class:`ExplainerError` for rows whose raw map is all zero."""
    flat = raw.flatten(1)
    dead = (flat == 0).all(dim=1)
    if bool(dead.any()):
        rows = dead.nonzero().flatten().tolist()
        raise ExplainerError(
            f"layer {layer!r} gives an all-zero {method} map (image rows {rows}): its "
            "activations, or the target's gradients reaching it, are zero; choose another layer"
        )
    negative = (flat <= 0).all(dim=1).tolist()
    notes = [
        "the target has negative evidence everywhere at this layer: the map is all zero"
        if row
        else None
        for row in negative
    ]
    return torch.relu(raw), notes


def gradient_cam(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None,
    weights: Callable[[Tensor, Tensor], Tensor],
    method: str,
) -> CamResult:
    """A channel-weighted gradient CAM: ``ReLU(Σ_k weights(A, G)_k A_k)``, one F + B."""
    names, modules, source = resolve_layers(handle, [layer])
    got = layer_gradients(handle, inputs, targets, names, modules)
    A, G = got.activations[0], got.gradients[0]
    maps, notes = finish_maps(weighted_sum(weights(A, G), A), names[0], method)
    meta: dict[str, Any] = {"forward_passes": 1, "backward_passes": 1}
    if got.layouts[0].kind != "nchw":
        meta["layer_layout"] = got.layouts[0].describe()
    return CamResult(names[0], maps, source, meta, notes, logits=got.logits, targets=got.targets)


def explanation(result: CamResult, inputs: Tensor) -> Explanation:
    """Up-sample ``result`` to the input size and attach the metadata of every row."""
    saliency = upsample(result.maps, (inputs.shape[-2], inputs.shape[-1])).float()
    meta: list[dict[str, Any]] = []
    for row in range(saliency.shape[0]):
        entry = {"layer": result.layer, "layer_source": result.source, **result.meta}
        if row < len(result.row_meta):
            entry.update(result.row_meta[row])
        note = result.notes[row] if row < len(result.notes) else None
        if note:
            entry["note"] = note
        meta.append(entry)
    return Explanation(saliency, meta, result.logits)
