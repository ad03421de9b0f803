"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
ECCV 2014).

A square of side ``window`` slides over the input with step ``stride``; inside it the input is
replaced by the fill (``zero``: 0 in model-input space, i.e. the dataset-mean colour;
``blur``: a Gaussian-blurred copy; ``local_mean``: the window's mean colour). Each pixel gets
the mean score drop of the windows covering it (Captum's ``Occlusion`` convention):

    Δ_w = s_c(x) − s_c(x ⊙ (1 − M_w) + b ⊙ M_w),   S(u, v) = Σ_w Δ_w M_w(u, v) / Σ_w M_w(u, v)

with ``s_c`` the softmax probability (``score="prob"``) or the logit (``score="logit"``).
Windows are placed at ``0, stride, 2·stride, …`` and a last one flush with the far border, so
every pixel is covered. Cost: ``1 + #windows`` forward passes per image, no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import Explanation, ModelHandle, ProgressFn, no_progress
from workers.explainers.batching import iter_chunks
from workers.explainers.registry import register


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Top-left offsets along one axis: every ``stride``, plus one flush with the end."""
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def window_masks(size: tuple[int, int], window: int, stride: int, device: torch.device) -> Tensor:
    """``(N, 1, H, W)`` binary masks, 1 inside each window."""
    height, width = size
    rows = torch.tensor(window_starts(height, window, stride), device=device)
    cols = torch.tensor(window_starts(width, window, stride), device=device)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    in_rows = (ys[None] >= rows[:, None]) & (ys[None] < rows[:, None] + window)  # (R, H)
    in_cols = (xs[None] >= cols[:, None]) & (xs[None] < cols[:, None] + window)  # (C, W)
    masks = in_rows[:, None, :, None] & in_cols[None, :, None, :]  # (R, C, H, W)
    return masks.reshape(-1, 1, height, width).float()


def fill_image(inputs: Tensor, fill: str, window: int) -> Tensor:
    """The content shown inside an occluder, in model-input space, ``(B, C, H, W)``."""
    if fill == "zero":
        return torch.zeros_like(inputs)
    if fill == "blur":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(inputs, kernel_size=[21, 21], sigma=[10.0, 10.0])
    if fill == "local_mean":
        return F.avg_pool2d(inputs, window, stride=1, padding=window // 2, count_include_pad=False)[
            ..., : inputs.shape[-2], : inputs.shape[-1]
        ]
    raise ValueError(f"unknown fill {fill!r}")


def target_scores(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """The score of each row's target: softmax probability or logit."""
    values = logits.softmax(dim=1) if score == "prob" else logits
    return values.gather(1, targets.view(-1, 1))[:, 0]


@register("occlusion")
def occlusion(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    window: int = 32,
    stride: int = 8,
    fill: str = "zero",
    score: str = "prob",
    max_batch_size: int | None = 64,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Occlusion maps ``(B, H, W)``; every forward pass is filled across all images."""
    batch, size = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    if window > min(size):
        raise ValueError(f"window {window} is larger than the input {size}")
    bs = max_batch_size or 64
    masks = window_masks(size, window, stride, inputs.device)
    n_windows = masks.shape[0]
    fills = fill_image(inputs, fill, window)
    drops = torch.empty(batch, n_windows, device=inputs.device)
    with torch.inference_mode():
        base = target_scores(handle.model(inputs), targets, score)
        total = batch * n_windows
        for chunk in iter_chunks(total, bs):
            index = torch.arange(chunk.start, chunk.stop, device=inputs.device)
            image, win = index // n_windows, index % n_windows
            m = masks[win]
            perturbed = inputs[image] * (1 - m) + fills[image] * m
            scores = target_scores(handle.model(perturbed), targets[image], score)
            drops[image, win] = base[image] - scores
            progress(chunk.stop, total)
        flat = masks.flatten(1)  # (N, HW)
        heat = (drops @ flat) / flat.sum(dim=0).clamp(min=1)
    return Explanation.uniform(
        heat.view(batch, *size).float(), forward_passes=1 + n_windows, windows=n_windows
    )
