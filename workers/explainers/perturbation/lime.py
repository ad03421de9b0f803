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

Defaults that differ from lime's: SLIC with 300 superpixels and the ``blur`` fill (lime:
quickshift and ``local_mean``). Quickshift's kernel is in pixels (4), so its superpixels do
not scale with the input; and a superpixel's mean colour hides nothing of a flat-coloured
object (the object is its own mean), so lime's defaults explain texture, not objects. SLIC's
count scales with the input. How the default was found (issue 14):

* first on an unseen 112 px model (lime's defaults 2 of 8 scenes, SLIC 100 + zero fill 8 of
  8) and the demo model (32 scenes, 500 samples, pointing / deletion AUC: lime's defaults
  35 % / 0.42, quickshift + zero 82 % / 0.26, SLIC 100 + zero 94 % / 0.20): SLIC 100 + zero;
* that default pointed at the object on 64 % of 24 scenes of the second evaluation model
  (``shapes_residual``: objects 1–6 % of the image on textured backgrounds, 1000 samples). A
  superpixel of 1/100 of the image is as large as the object, so the object shares its
  superpixels with background. Chosen there: SLIC 50 / 100 / 200 / 300 / 400 with the zero
  fill 53 / 64 / 83 / 86 / 91 %; with the blur fill 200 / 300 / 400: 89 / 94.5 / 98 %
  (``logit`` score, kernel width 1, α 0.01: no change). 300 and 400 differ by one scene, and
  300 keeps the regression better posed (``K`` features from ``num_samples`` samples);
* judged on the demo model (24 scenes, 1000 samples): SLIC 100 + zero 89 %, SLIC 300 + blur
  **98 %** (energy 0.26 → 0.22, deletion 0.18 → 0.20). Many small zero-filled superpixels
  draw dark blobs that look like shapes to the demo model (SLIC 400 + zero: 48 %); blurred
  ones do not (SLIC 400 + blur: 97 %).

``segmentation="quickshift", fill="local_mean"`` gives lime's behaviour.

Differences from lime: all ``K`` superpixels enter the regression (lime's defaults end up
there too: ``num_features=100000`` selects every feature), samples are drawn with torch from
``seed`` in blocks (per image, so a map does not depend on the other images of the call), the
perturbed images are built on the model's device by a gather over the superpixel labels,
filled to ``max_batch_size`` across images (lime composes them on the CPU, 10 per batch), and
the regression is solved from running weighted moments accumulated chunk by chunk
(:class:`RidgeMoments`), so memory is ``O(K²)`` per image whatever ``num_samples``.
Cost: ``num_samples`` forward passes per image (sample 0 is the clean image: that pass gives
the prediction) + the CPU segmentation (~0.1–1 s at 224 px) + a ``K × K`` solve.
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

SAMPLE_BITS = 1 << 20
"""On/off values drawn at a time: samples come in blocks of ``SAMPLE_BITS // K`` vectors."""


class SampleSource:
    """An image's on/off vectors ``z ∈ {0, 1}^K``, drawn a block at a time from ``seed``.

    Block ``b`` comes from the generator seeded ``seed + b·2³¹``; sample 0 is all ones (the
    clean image). A sample depends only on ``seed``, ``K`` and its index.
    """

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self.per_block = max(1, SAMPLE_BITS // count)
        self._block, self._values = -1, torch.empty(0, dtype=torch.bool)

    def take(self, first: int, last: int) -> Tensor:
        """``(last − first, K)`` bool samples ``first … last − 1`` (CPU)."""
        parts = []
        while first < last:
            block = first // self.per_block
            if block != self._block:
                generator = torch.Generator().manual_seed(self.seed + block * 2**31)
                shape = (self.per_block, self.count)
                self._values = torch.randint(0, 2, shape, generator=generator) > 0
                if block == 0:
                    self._values[0] = True
                self._block = block
            stop = min(last, (block + 1) * self.per_block)
            offset = block * self.per_block
            parts.append(self._values[first - offset : stop - offset])
            first = stop
        return torch.cat(parts)


def draw_samples(counts: list[int], num_samples: int, seed: int, width: int) -> Tensor:
    """``(B, N, width)`` bool: each image's first ``N`` samples, padded with False."""
    out = torch.zeros(len(counts), num_samples, width, dtype=torch.bool)
    for row, count in enumerate(counts):
        out[row, :, :count] = SampleSource(count, seed).take(0, num_samples)
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


def kernel_weights(samples: Tensor, counts: list[int] | Tensor, kernel_width: float) -> Tensor:
    """lime's weights ``sqrt(exp(−d² / σ²))`` (``samples`` ``(..., N, K)``), ``d`` = cosine
    distance to all-ones; ``counts`` = each image's ``K`` (one per leading index).

    For a binary ``z`` over ``K`` superpixels, ``cos(z, 1) = |z| / sqrt(|z| · K)``, so
    ``d = 1 − sqrt(|z| / K)`` (an empty ``z`` is at distance 1, as in scikit-learn).
    """
    sizes = torch.as_tensor(counts, device=samples.device, dtype=torch.float64)
    sizes = sizes.view(*sizes.shape, *([1] * (samples.dim() - 1 - sizes.dim())))
    distance = 1 - (samples.sum(dim=-1) / sizes).sqrt()
    return torch.exp(-(distance**2) / kernel_width**2).sqrt()


class RidgeMoments:
    """Running π-weighted moments of ``(z, y)`` per image: a weighted ridge fit that never
    holds the samples (memory ``O(B·K²)``, whatever ``N``).

    With ``W = Σπ``, ``z̄ = Σπz / W``, ``ȳ = Σπy / W``: the centred normal equations are
    ``(Σπzzᵀ − W z̄z̄ᵀ + αI) β = Σπzy − W z̄ȳ``, all in float64.
    """

    def __init__(self, batch: int, width: int, device: torch.device) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        self.w, self.y, self.yy = zeros(batch), zeros(batch), zeros(batch)
        self.z, self.zy, self.zz = (
            zeros(batch, width),
            zeros(batch, width),
            zeros(batch, width, width),
        )

    def add(self, image: int, z: Tensor, y: Tensor, w: Tensor) -> None:
        """Add one image's samples ``z`` ``(n, K)``, targets ``y`` and weights ``w`` ``(n,)``."""
        z, y, w = z.double(), y.double(), w.double()
        wz = w[:, None] * z
        self.w[image] += w.sum()
        self.y[image] += (w * y).sum()
        self.yy[image] += (w * y * y).sum()
        self.z[image] += wz.sum(dim=0)
        self.zy[image] += wz.T @ y
        self.zz[image] += z.T @ wz

    def solve(self, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(coef (B, K), intercept (B,), r2 (B,))`` of the weighted ridge fit."""
        w = self.w.clamp(min=1e-300)
        z_mean, y_mean = self.z / w[:, None], self.y / w
        gram = self.zz - w[:, None, None] * z_mean[:, :, None] * z_mean[:, None, :]
        rhs = self.zy - w[:, None] * z_mean * y_mean[:, None]
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        coef = torch.linalg.solve(gram + alpha * eye, rhs[:, :, None])[:, :, 0]
        intercept = y_mean - (z_mean * coef).sum(dim=1)
        spread = self.yy - w * y_mean**2
        fitted = (coef[:, None, :] @ gram @ coef[:, :, None])[:, 0, 0]
        residual = spread - 2 * (coef * rhs).sum(dim=1) + fitted
        r2 = torch.where(
            spread > 0, 1 - residual / spread.clamp(min=1e-300), torch.ones_like(spread)
        )
        return coef, intercept, r2


def weighted_ridge(
    z: Tensor, y: Tensor, weights: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched weighted ridge with intercept over whole arrays ``z`` ``(B, N, K)``:
    ``(coef (B, K), intercept (B,), r2 (B,))`` (:class:`RidgeMoments` in one step)."""
    moments = RidgeMoments(z.shape[0], z.shape[2], z.device)
    for image in range(z.shape[0]):
        moments.add(image, z[image], y[image], weights[image])
    return moments.solve(alpha)


@register("lime")
def lime(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    num_samples: int = 1000,
    segmentation: str = "slic",
    segments: int = 300,
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    fill: str = "blur",
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
    display = handle.to_display(inputs)
    labels, counts = handle.offload(lambda: superpixels(display, segmentation, segments, seed))
    width, device = max(counts), inputs.device
    sources = [SampleSource(count, seed) for count in counts]
    moments = RidgeMoments(batch, width, device)
    per_image = num_samples - 1  # sample 0 is the clean image: the clean pass scores it
    with torch.inference_mode():
        evaluator = Evaluator(
            handle, targets, score, max_batch_size, precision, progress, batch * num_samples
        )
        hidden = evaluator.layout(hidden_image(inputs, labels, width, fill))
        inputs = evaluator.layout(inputs)
        clean = evaluator.clean(inputs)
        for image in range(batch):
            ones = torch.ones(1, width, dtype=torch.bool, device=device)
            ones[:, counts[image] :] = False
            moments.add(image, ones, clean[image : image + 1], clean.new_ones(1))
        flat_labels = labels.flatten(1)
        for chunk in evaluator.chunks(batch * per_image):
            rows, samples = _chunk_samples(chunk, per_image, sources, width, device)
            shown = torch.gather(samples, 1, flat_labels[rows]).view(-1, 1, *size)
            scores = evaluator.scores(torch.where(shown, inputs[rows], hidden[rows]), rows)
            weights = kernel_weights(
                samples, torch.tensor(counts, device=device)[rows], kernel_width
            )
            for image in rows.unique().tolist():
                mine = rows == image
                moments.add(image, samples[mine], scores[mine], weights[mine])
        coef, intercept, r2 = moments.solve(alpha)
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
    return Explanation(heat, meta, evaluator.logits)


def _chunk_samples(
    chunk: slice, per_image: int, sources: list[SampleSource], width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Image of each item of ``chunk`` and its sample ``(n, width)`` (items image-major,
    item ``i`` of an image is its sample ``i + 1``)."""
    rows = torch.arange(chunk.start, chunk.stop) // per_image
    parts = []
    for image in rows.unique().tolist():
        first = max(chunk.start, image * per_image) - image * per_image + 1
        last = min(chunk.stop, (image + 1) * per_image) - image * per_image + 1
        part = torch.zeros(last - first, width, dtype=torch.bool)
        part[:, : sources[image].count] = sources[image].take(first, last)
        parts.append(part)
    return rows.to(device), torch.cat(parts).to(device)
