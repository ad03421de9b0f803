"""LIME for images (Ribeiro, Singh, Guestrin, "'Why Should I Trust You?': Explaining the
Predictions of Any Classifier", KDD 2016; reference code ``marcotcr/lime``, ``lime_image``).

1. Superpixels ``1 … K`` of the image: ``quickshift(kernel_size=4, max_dist=200, ratio=0.2)``
   as lime does, or SLIC (``segmentation="slic"``, ``segments`` superpixels), scikit-image.
2. ``num_samples`` binary vectors ``z ∈ {0, 1}^K`` (uniform; the first is all ones). Sample
   ``z`` shows the image where ``z_j = 1`` and the hidden image where ``z_j = 0``; hidden =
   each superpixel's mean colour (``fill="local_mean"``, lime's ``hide_color=None``), 0 in
   model-input space (``zero``) or a blurred copy (``blur``).
3. ``y = s_c(x_z)``: the target's softmax probability (``score="prob"``, as lime) or logit.
4. Weights ``π(z) = sqrt(exp(−d(z)² / σ²))``, ``d`` the cosine distance between ``z`` and the
   all-ones vector (``= 1 − sqrt(|z| / K)`` for binary vectors), ``σ = kernel_width = 0.25``.
5. Weighted ridge regression with an unpenalised intercept (sklearn ``Ridge(alpha=1)`` with
   ``sample_weight``): ``β = (Z̃ᵀ Π Z̃ + α I)⁻¹ Z̃ᵀ Π ỹ`` with ``Z̃, ỹ`` centred on their
   π-weighted means; solved in float64 with ``torch.linalg.solve``, batched over images.
6. The heatmap paints each superpixel with its coefficient ``β_j`` (signed).

Differences from lime: all ``K`` superpixels enter the regression (lime's defaults end up
there too: ``num_features=100000`` selects every feature), samples are drawn with torch from
``seed`` (per image, so a map does not depend on the other images of the call), and the
perturbed images are built on the model's device by a gather over the superpixel labels,
filled to ``max_batch_size`` across images (lime composes them on the CPU, 10 per batch).
Cost: ``num_samples`` forward passes per image + the CPU segmentation (~0.1–1 s at 224 px).
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
from workers.explainers.perturbation.engine import Evaluator, blur_fill
from workers.explainers.perturbation.superpixels import superpixels
from workers.explainers.registry import register


def draw_samples(counts: list[int], num_samples: int, seed: int, width: int) -> Tensor:
    """``(B, N, width)`` bool: per image, ``N`` uniform on/off vectors over its ``K_b``
    superpixels (the first all on), padded with False; drawn on the CPU from ``seed``."""
    out = torch.zeros(len(counts), num_samples, width, dtype=torch.bool)
    for row, count in enumerate(counts):
        generator = torch.Generator().manual_seed(seed)
        out[row, :, :count] = torch.randint(0, 2, (num_samples, count), generator=generator) > 0
        out[row, 0, :count] = True
    return out


def hidden_image(inputs: Tensor, labels: Tensor, width: int, fill: str) -> Tensor:
    """``(B, C, H, W)`` what a switched-off superpixel shows, in model-input space."""
    if fill == "zero":
        return torch.zeros_like(inputs)
    if fill == "blur":
        return blur_fill(inputs)
    if fill != "local_mean":
        raise ExplainerError(f"unknown fill {fill!r}; use zero, blur or local_mean")
    batch, channels = inputs.shape[:2]
    flat = labels.flatten(1)[:, None].expand(-1, channels, -1)  # (B, C, HW)
    sums = inputs.new_zeros(batch, channels, width).scatter_add_(2, flat, inputs.flatten(2))
    sizes = inputs.new_zeros(batch, 1, width).scatter_add_(
        2, flat[:, :1], torch.ones_like(inputs[:, :1].flatten(2))
    )
    means = sums / sizes.clamp(min=1)
    return means.gather(2, flat).view_as(inputs)


def kernel_weights(samples: Tensor, counts: list[int], kernel_width: float) -> Tensor:
    """``(B, N)`` lime's weights ``sqrt(exp(−d² / σ²))``, ``d`` = cosine distance to all-ones.

    For a binary ``z`` over ``K`` superpixels, ``cos(z, 1) = |z| / sqrt(|z| · K)``, so
    ``d = 1 − sqrt(|z| / K)`` (an empty ``z`` is at distance 1, as in scikit-learn).
    """
    sizes = torch.tensor(counts, device=samples.device, dtype=torch.float64)[:, None]
    distance = 1 - (samples.sum(dim=2) / sizes).sqrt()
    return torch.exp(-(distance**2) / kernel_width**2).sqrt()


def weighted_ridge(
    z: Tensor, y: Tensor, weights: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched weighted ridge with intercept: ``(coef (B, K), intercept (B,), r2 (B,))``."""
    z, y, w = z.double(), y.double(), weights.double()
    total = w.sum(dim=1, keepdim=True)
    z_mean = (w[:, :, None] * z).sum(dim=1, keepdim=True) / total[:, :, None]
    y_mean = (w * y).sum(dim=1, keepdim=True) / total
    zc, yc = z - z_mean, y - y_mean
    gram = zc.transpose(1, 2) @ (w[:, :, None] * zc)
    gram = gram + alpha * torch.eye(z.shape[2], dtype=z.dtype, device=z.device)
    coef = torch.linalg.solve(gram, (zc.transpose(1, 2) @ (w * yc)[:, :, None]))[:, :, 0]
    intercept = y_mean[:, 0] - (z_mean[:, 0] * coef).sum(dim=1)
    residual = (w * (yc - (zc @ coef[:, :, None])[:, :, 0]) ** 2).sum(dim=1)
    spread = (w * yc**2).sum(dim=1)
    r2 = torch.where(spread > 0, 1 - residual / spread.clamp(min=1e-300), torch.ones_like(spread))
    return coef, intercept, r2


@register("lime")
def lime(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    num_samples: int = 1000,
    segmentation: str = "quickshift",
    segments: int = 50,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    fill: str = "local_mean",
    score: str = "prob",
    seed: int = 0,
    max_batch_size: int | None = 64,
    precision: str = "float32",
    progress: ProgressFn = no_progress,
) -> Explanation:
    """LIME maps ``(B, H, W)``: each superpixel painted with its surrogate coefficient."""
    batch, size = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    if num_samples < 2 or kernel_width <= 0 or alpha <= 0:
        raise ExplainerError("LIME needs num_samples ≥ 2, kernel_width > 0 and alpha > 0")
    labels, counts = superpixels(handle.to_display(inputs), segmentation, segments, seed)
    width = max(counts)
    samples = draw_samples(counts, num_samples, seed, width).to(inputs.device)
    total = batch * num_samples
    with torch.inference_mode():
        evaluator = Evaluator(handle, targets, score, max_batch_size, precision, progress, total)
        hidden = evaluator.layout(hidden_image(inputs, labels, width, fill))
        inputs = evaluator.layout(inputs)
        flat_labels, flat_samples = labels.flatten(1), samples.view(total, width)
        scores = torch.empty(total, device=inputs.device)
        for chunk in evaluator.chunks(total):
            rows = torch.arange(chunk.start, chunk.stop, device=inputs.device) // num_samples
            shown = torch.gather(flat_samples[chunk], 1, flat_labels[rows]).view(-1, 1, *size)
            scores[chunk] = evaluator.scores(torch.where(shown, inputs[rows], hidden[rows]), rows)
        weights = kernel_weights(samples, counts, kernel_width)
        coef, intercept, r2 = weighted_ridge(samples, scores.view(batch, -1), weights, alpha)
        heat = coef.gather(1, flat_labels).view(batch, *size).float()
    meta = [
        {
            "forward_passes": num_samples,
            "superpixels": counts[row],
            "intercept": float(intercept[row]),
            "r2": float(r2[row]),
            "seed": seed,
            "precision": evaluator.used_precision,
        }
        for row in range(batch)
    ]
    return Explanation(saliency=heat, meta=meta)
