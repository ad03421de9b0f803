"""The batched engine the perturbation methods share: perturbed inputs → forward passes → scores.

Every perturbation method is the same loop over a flat list of *items*, one item being one
perturbed copy of one image of the call:

* :class:`Evaluator` first runs the clean images (:meth:`Evaluator.clean`: the prediction,
  the top-1 targets and the reference scores come from that pass), then slices the items into
  chunks of ``max_batch_size`` across all images, evaluates each chunk through
  ``handle.evaluate`` (in the worker: the per-model batcher, which may pack other jobs' rows
  into the same pass; optionally under CUDA autocast in float16 / bfloat16), reads each row's
  target score (softmax probability or logit) and reports progress (evaluations done /
  planned) between chunks — where a cancellation may be raised.
* Items are built on the model's device by broadcasting: :func:`box_masks` and
  :func:`occlude` for rectangular occluders (occlusion, FMO), the methods' own gathers for
  random masks (RISE) and superpixels (LIME). Index tensors live on the device, so nothing
  goes back to the host inside the chunk loop.
* :func:`paint_boxes` sums per-box values into maps with a 2-D difference array (exact,
  ``O(items + pixels)``) instead of materialising one full-size mask per item.
* Memory layout: the explainers pass their inputs through :meth:`Evaluator.layout` first, so
  perturbed batches are born channels-last where the model runs faster that way
  (:mod:`workers.explainers.forward`).
* Memory: a call holds its inputs, one chunk of perturbed items and per-item scores; nothing
  grows with the number of items beyond a few numbers per item.

Everything here runs under ``torch.inference_mode()`` (the explainers enter it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers import forward
from workers.explainers.base import (
    ExplainerError,
    ModelHandle,
    ProgressFn,
    no_progress,
    resolve_targets,
)
from workers.explainers.batching import iter_chunks
from workers.explainers.scaling import at_input

DEFAULT_BATCH = 64
"""Forward batch when ``max_batch_size`` arrives as None."""

BLUR_SIGMA_AT_224 = 10.0
"""σ of the ``blur`` fill at 224 px (METHODS §1.3), scaled with the shorter input side."""


def target_scores(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """``(n,)`` float32 score of each row's target: softmax ``prob`` or raw ``logit``."""
    logits = logits.float()
    if score == "prob":
        values = logits.softmax(dim=1)
    elif score == "logit":
        values = logits
    else:
        raise ExplainerError(f"unknown score {score!r}; use 'prob' or 'logit'")
    return values.gather(1, targets.view(-1, 1))[:, 0]


def precision_used(device: torch.device, precision: str) -> str:
    """The precision a call really runs in: half types only on CUDA, else float32."""
    try:
        return forward.precision_used(device, precision)
    except forward.PrecisionError as error:
        raise ExplainerError(str(error)) from None


@dataclass
class Evaluator:
    """Runs the model on perturbed items chunk by chunk and counts what it did.

    ``planned`` is the number of evaluations the call expects in all (methods whose work is
    decided on the way, like FMO, revise it); ``done`` the number run so far. The first pass
    of every call is :meth:`clean`: the unperturbed images, whose logits give the prediction,
    the top-1 targets (:data:`~workers.explainers.base.TOP1`) and the reference scores.
    """

    handle: ModelHandle
    targets: Tensor
    score: str = "prob"
    max_batch_size: int | None = DEFAULT_BATCH
    precision: str = "float32"
    progress: ProgressFn = no_progress
    planned: int = 0
    done: int = 0
    logits: Tensor | None = None
    """``(B, K)`` clean-input logits, once :meth:`clean` ran."""

    def __post_init__(self) -> None:
        self.batch = self.max_batch_size or DEFAULT_BATCH
        device = self.targets.device
        self.used_precision = precision_used(device, self.precision)
        self._channels_last = forward.prefers_channels_last(self.handle.model)

    def layout(self, images: Tensor) -> Tensor:
        """``images`` in the memory layout the model runs fastest on (built-upon tensors keep
        it, so perturbed batches need no conversion copy)."""
        if self._channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def clean(self, inputs: Tensor) -> Tensor:
        """``(B,)`` target scores of the unperturbed ``inputs`` (one pass per image, counted).

        Resolves top-1 targets and keeps the logits in :attr:`logits`.
        """
        parts = [
            self.handle.evaluate(inputs[chunk], self.precision)
            for chunk in iter_chunks(inputs.shape[0], self.batch)
        ]
        self.logits = torch.cat(parts)
        self.targets = resolve_targets(self.targets, self.logits)
        self.done += inputs.shape[0]
        self.planned = max(self.planned, self.done)
        return target_scores(self.logits, self.targets, self.score)

    def chunks(self, count: int) -> Iterator[slice]:
        """Slices of ``range(count)``; progress is reported after each one is consumed."""
        for chunk in iter_chunks(count, self.batch):
            yield chunk
            self.done += chunk.stop - chunk.start
            self.planned = max(self.planned, self.done)
            self.progress(self.done, self.planned)

    def scores(self, inputs: Tensor, rows: Tensor) -> Tensor:
        """``(n,)`` target scores of ``inputs`` ``(n, C, H, W)``; ``rows`` = image of each."""
        logits = self.handle.evaluate(inputs, self.precision)
        return target_scores(logits, self.targets[rows], self.score)


# --- rectangular occluders -------------------------------------------------------------------


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``(n, 1, H, W)`` bool, True inside each box ``(y0, y1, x0, x1)`` (ends exclusive)."""
    ys = torch.arange(size[0], device=boxes.device)
    xs = torch.arange(size[1], device=boxes.device)
    in_rows = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 1:2])  # (n, H)
    in_cols = (xs >= boxes[:, 2:3]) & (xs < boxes[:, 3:4])  # (n, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def paint_boxes(
    values: Tensor, boxes: Tensor, rows: Tensor, batch: int, size: tuple[int, int]
) -> Tensor:
    """``(batch, H, W)`` float64 map ``Σ_items values · 1_box`` per image, exactly.

    A 2-D difference array: +v at (y0, x0) and (y1, x1), −v at (y0, x1) and (y1, x0), then
    two cumulative sums. Cost ``O(items + batch·H·W)``, no per-item mask.
    """
    height, width = size
    acc = torch.zeros(batch, height + 1, width + 1, dtype=torch.float64, device=values.device)
    if values.numel():
        v = values.double()
        y0, y1, x0, x1 = boxes.unbind(dim=1)
        r4 = rows.repeat(4)
        ys = torch.cat([y0, y1, y0, y1])
        xs = torch.cat([x0, x1, x1, x0])
        acc.index_put_((r4, ys, xs), torch.cat([v, v, -v, -v]), accumulate=True)
    return acc.cumsum(dim=1).cumsum(dim=2)[:, :height, :width]


def box_average(
    values: Tensor, boxes: Tensor, rows: Tensor, batch: int, size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Per pixel: mean of ``values`` over the boxes covering it (0 where none), and coverage.

    Returns ``(maps (batch, H, W) float32, covered (batch, H, W) bool)``.
    """
    total = paint_boxes(values, boxes, rows, batch, size)
    count = paint_boxes(torch.ones_like(values, dtype=torch.float64), boxes, rows, batch, size)
    count = count.round()
    return (total / count.clamp(min=1)).float(), count > 0


class Fill:
    """What an occluder shows, in model-input space, for items of the call's images.

    ``zero``: 0 (the dataset-mean colour); ``blur``: a Gaussian-blurred copy of the image
    (σ = 10 px at 224 px, scaled with the input); ``local_mean``: the mean colour of the
    occluded box itself (from an integral image, exact for any box).
    """

    def __init__(self, inputs: Tensor, kind: str) -> None:
        if kind not in ("zero", "blur", "local_mean"):
            raise ExplainerError(f"unknown fill {kind!r}; use zero, blur or local_mean")
        self.kind = kind
        self.inputs = inputs
        if kind == "blur":
            self.blurred = blur_fill(inputs)
        elif kind == "local_mean":
            integral = inputs.double().cumsum(dim=2).cumsum(dim=3)
            self.integral = F.pad(integral, (1, 0, 1, 0))  # (B, C, H+1, W+1)

    def values(self, rows: Tensor, boxes: Tensor) -> Tensor:
        """Fill of each item: broadcastable to ``(n, C, H, W)``."""
        if self.kind == "zero":
            return torch.zeros((), dtype=self.inputs.dtype, device=self.inputs.device)
        if self.kind == "blur":
            return self.blurred[rows]
        y0, y1, x0, x1 = boxes.unbind(dim=1)
        table = self.integral
        sums = table[rows, :, y1, x1] - table[rows, :, y0, x1] - table[rows, :, y1, x0]
        sums = sums + table[rows, :, y0, x0]
        area = ((y1 - y0) * (x1 - x0)).clamp(min=1).double()
        return (sums / area[:, None]).to(self.inputs.dtype)[:, :, None, None]


def occlude(inputs: Tensor, fill: Fill, rows: Tensor, boxes: Tensor) -> Tensor:
    """``(n, C, H, W)``: image ``rows[i]`` with box ``boxes[i]`` replaced by the fill."""
    size = (inputs.shape[-2], inputs.shape[-1])
    return torch.where(box_masks(boxes, size), fill.values(rows, boxes), inputs[rows])


def score_boxes(
    evaluator: Evaluator, inputs: Tensor, fill: Fill, rows: Tensor, boxes: Tensor
) -> Tensor:
    """``(n,)`` target scores of every occluded item, in chunks filled across images."""
    out = torch.empty(rows.shape[0], device=inputs.device)
    for chunk in evaluator.chunks(rows.shape[0]):
        part_rows = rows[chunk]
        perturbed = occlude(inputs, fill, part_rows, boxes[chunk])
        out[chunk] = evaluator.scores(perturbed, part_rows)
    return out


# --- smoothing ---------------------------------------------------------------------------------


def blur_fill(inputs: Tensor) -> Tensor:
    """The ``blur`` fill: σ = 10 px at 224 px, scaled with the shorter side of the input."""
    return gaussian_blur(inputs, at_input(BLUR_SIGMA_AT_224, min(inputs.shape[-2:])))


def gaussian_blur(images: Tensor, sigma: float, truncate: float = 3.0) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with reflect padding, truncated at
    ``truncate``·σ (1σ with ``round(σ)`` is torchvision's ``kernel_size = 2·round(σ) + 1``)."""
    if sigma <= 0:
        return images
    height, width = images.shape[-2:]
    radius = max(1, min(math.ceil(truncate * sigma), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
