"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
ECCV 2014) — the exhaustive sliding-window baseline that FMO is compared to.

A square of side ``window`` px slides over the input with step ``stride`` px; inside it the
input is replaced by the fill ``b`` (``zero``: 0 in model-input space, i.e. the dataset-mean
colour; ``blur``: a Gaussian-blurred copy, σ = 10 px at 224 px; ``local_mean``: the mean
colour of the occluded window). Each pixel gets the mean score drop of the windows that cover
it (Captum ``Occlusion``'s convention, METHODS §6.7):

    Δ_w = s_c(x) − s_c(x ⊙ (1 − M_w) + b ⊙ M_w),   S(u, v) = Σ_w Δ_w M_w(u, v) / Σ_w M_w(u, v)

with ``s_c`` the softmax probability (``score="prob"``, default) or the logit
(``score="logit"``). Drops are signed (a window whose removal raises the score gets a negative
value). Windows start at ``0, stride, 2·stride, …`` plus one flush with the far border when the
stride does not land there, so every pixel is covered (Captum leaves such a border strip out).
Defaults: a 32 px window and an 8 px stride at 224 px (625 windows), scaled with the input's
shorter side (16 px / 4 px at 112 px, the same 625 windows); ZF used a grey square. Until
2026-11 the window was 32 px at every size: on the 112 px second evaluation model
(``shapes_residual``, objects 14–30 px across) it pointed at the object on 78.8 % of 48
held-out scenes, and 97.9 % with the scaled 16/4 px; judged on the demo model (not used to
choose): 96.5 % → 98.0 %, deletion AUC 0.225 → 0.211 (``benchmarks/results/quality*.md``).

Cost: ``1 + #windows`` forward passes per image, no gradient: the clean pass (which also gives
the prediction), then the windows, every pass filled to ``max_batch_size`` across all images of
the call (and, in the worker, with other jobs' rows); maps are summed with a difference array
(no full-size mask per window).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.explainers.base import (
    ExplainerError,
    Explanation,
    ModelHandle,
    ProgressFn,
    no_progress,
)
from workers.explainers.perturbation.engine import Evaluator, Fill, box_average, score_boxes
from workers.explainers.registry import register
from workers.explainers.scaling import at_input_int

WINDOW, STRIDE = 32, 8
"""Default window side and stride, pixels at 224 px (scaled with the input)."""


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets along one axis: every ``stride``, plus one flush with the end if needed."""
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def window_boxes(size: tuple[int, int], window: int, stride: int, device: torch.device) -> Tensor:
    """``(N, 4)`` boxes ``(y0, y1, x0, x1)`` of every window, row-major."""
    ys = torch.tensor(window_starts(size[0], window, stride), device=device)
    xs = torch.tensor(window_starts(size[1], window, stride), device=device)
    y0 = ys.repeat_interleave(xs.numel())
    x0 = xs.repeat(ys.numel())
    return torch.stack([y0, y0 + window, x0, x0 + window], dim=1)


@register("occlusion")
def occlusion(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    window: int | None = None,
    stride: int | None = None,
    fill: str = "zero",
    score: str = "prob",
    max_batch_size: int | None = 64,
    precision: str = "float32",
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Occlusion maps ``(B, H, W)``: mean target-score drop of the windows over each pixel."""
    batch, size = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    window = window or at_input_int(WINDOW, min(size), minimum=1)
    stride = stride or at_input_int(STRIDE, min(size), minimum=1)
    if window > min(size) or window < 1 or stride < 1:
        raise ExplainerError(f"window {window} / stride {stride} do not fit the input {size}")
    device = inputs.device
    with torch.inference_mode():
        boxes = window_boxes(size, window, stride, device)
        per_image = boxes.shape[0]
        rows = torch.arange(batch, device=device).repeat_interleave(per_image)
        evaluator = Evaluator(
            handle, targets, score, max_batch_size, precision, progress, batch * (1 + per_image)
        )
        inputs = evaluator.layout(inputs)
        clean = evaluator.clean(inputs)
        scores = score_boxes(evaluator, inputs, Fill(inputs, fill), rows, boxes.repeat(batch, 1))
        drops = clean[:, None] - scores.view(batch, per_image)
        heat, _ = box_average(drops.flatten(), boxes.repeat(batch, 1), rows, batch, size)
    return Explanation.uniform(
        heat,
        evaluator.logits,
        forward_passes=1 + per_image,
        windows=per_image,
        precision=evaluator.used_precision,
    )
