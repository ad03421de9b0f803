"""Integrated Grad-CAM (Sattarzadeh, Sudhakar, Plataniotis, Jang, Jeong, Kim, "Integrated
Grad-CAM: Sensitivity-Aware Visual Explanation of Deep Convolutional Networks via Integrated
Gradient-Based Scoring", ICASSP 2021).

The Grad-CAM term integrated along the straight path from a baseline ``x'`` to the input,
``x_m = x' + (m/M)(x − x')`` for ``m = 1..M``:

    L = ReLU( (1/M) Σ_m Σ_k (A_k(x_m) − A_k(x')) · mean_ij ∂S_c(x_m)/∂A_k(x_m) )

Defaults as the authors' demo: ``M = 50`` steps, black baseline (0 in [0, 1] display space,
i.e. ``−mean/std`` in model-input space). Differences: the sum is divided by ``M`` so that it
converges to the path integral as ``M`` grows (a positive constant: the normalised map is
unchanged); the baseline activations are subtracted as in the paper's equation (the demo takes
them as 0 and applies a ReLU per step). With one step and a baseline whose activations are 0,
the map is exactly Grad-CAM's. Cost: 1 forward of the baseline + M × (forward + backward) per
image; the B·M path points are filled into passes of ``max_batch_size`` (default 64), the
inputs themselves (``m = M``) first: their pass also gives the prediction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.batching import iter_chunks
from workers.explainers.cam.base import (
    CamResult,
    explanation,
    finish_maps,
    layer_activations,
    layer_gradients,
    resolve_layers,
)
from workers.explainers.registry import register


def black_baseline(handle: ModelHandle, inputs: Tensor) -> Tensor:
    """A black image ``(1, C, H, W)`` in model-input space."""
    return handle.from_display(torch.zeros_like(inputs[:1]))


def path_integral(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    name: str,
    module: nn.Module,
    baseline: Tensor,
    steps: int,
    max_batch_size: int,
    progress: ProgressFn,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(1/M) Σ_m Σ_k (A_k(x_m) − A_k(x')) · mean_ij G_k(x_m)`` ``(B, h, w)`` before ReLU,
    the clean logits ``(B, K)`` and the targets (top-1 requests resolved).

    The path's last points (``m = M``: the inputs themselves) go first, in chunks of their
    own: their pass gives the prediction and resolves top-1 targets for the other points.
    """
    base_activation, _ = layer_activations(handle, baseline, name, module)
    base_activation = base_activation.expand(inputs.shape[0], *base_activation.shape[1:])
    batch = inputs.shape[0]
    total = batch * steps
    raw = logits = None
    clean_chunks = [(c.start, c.stop) for c in iter_chunks(batch, max_batch_size)]
    path_chunks = [
        (c.start + batch, c.stop + batch) for c in iter_chunks(total - batch, max_batch_size)
    ]
    for start_item, stop_item in clean_chunks + path_chunks:
        index = torch.arange(start_item, stop_item, device=inputs.device)
        image = index % batch
        alpha = ((steps - index // batch).to(inputs.dtype) / steps).view(-1, 1, 1, 1)
        start = baseline.expand_as(inputs)[image]
        points = start + alpha * (inputs[image] - start)
        got = layer_gradients(handle, points, targets[image], [name], [module])
        if stop_item <= batch:  # clean rows: keep their logits and resolved targets
            targets = targets.clone()
            targets[image] = got.targets
            part = got.logits.float()
            logits = part if logits is None else torch.cat([logits, part])
        A, G = got.activations[0], got.gradients[0]
        terms = torch.einsum("nk,nkhw->nhw", G.mean(dim=(2, 3)), A - base_activation[image])
        if raw is None:
            raw = torch.zeros(batch, *terms.shape[1:], device=terms.device, dtype=terms.dtype)
        raw.index_add_(0, image, terms)
        progress(stop_item, total)
    assert raw is not None and logits is not None
    return raw / steps, logits, targets


def integrated_gradcam_maps(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None = None,
    *,
    steps: int = 50,
    max_batch_size: int | None = None,
    baseline: Tensor | None = None,
    progress: ProgressFn = no_progress,
) -> CamResult:
    """Integrated Grad-CAM maps ``(B, h, w)`` at the layer's resolution, ReLU applied.

    ``baseline`` (model-input space, ``(1 or B, C, H, W)``) defaults to a black image.
    """
    names, modules, source = resolve_layers(handle, [layer])
    start = black_baseline(handle, inputs) if baseline is None else baseline.to(inputs)
    raw, logits, targets = path_integral(
        handle, inputs, targets, names[0], modules[0], start, steps, max_batch_size or 64, progress
    )
    maps, notes = finish_maps(raw, names[0], "Integrated Grad-CAM")
    meta = {"forward_passes": steps + 1, "backward_passes": steps, "steps": steps}
    return CamResult(names[0], maps, source, meta, notes, logits=logits, targets=targets)


@register("integrated_gradcam")
def integrated_gradcam(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    steps: int = 50,
    max_batch_size: int | None = None,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Integrated Grad-CAM maps ``(B, H, W)`` for ``targets``."""
    result = integrated_gradcam_maps(
        handle,
        inputs,
        targets,
        layer,
        steps=steps,
        max_batch_size=max_batch_size,
        progress=progress,
    )
    return explanation(result, inputs)
