"""NeuroMask (Alzantot, Widdicombe, Julier & Srivastava, "NeuroMask: Explaining Predictions of
Deep Neural Networks through Mask Learning", SMARTCOMP 2019; defaults of the authors' TF1
code ``nesl/neuromask`` [V], METHODS.md §2).

One free variable per pixel, ``W ∈ R^{H×W}`` shared by the colour channels, ``W ~ U(−10, 10)``,
mask ``m = sigmoid(W / T)`` (T = 0.3), applied in [0, 1] display space: ``x̄ ⊙ m`` (masked
pixels turn black, the authors' baseline). Per image

    L(W) = λ_pred·CE(f(x̄ ⊙ m), c) + λ_sparse·mean|W + 10| + λ_smooth·mean((K ⋆ W)²)

with ``K`` the ``k×k`` Laplacian-like filter (centre ``k²−1``, −1 elsewhere; k = 5, "valid"
convolution) and λ = (50, 16, 3), the ``NeuroMask`` class defaults (ImageNet demo: 0.4, 0.35,
0.03). RMSProp as TF1's ``RMSPropOptimizer`` (lr 0.03, decay 0.9, ε 1e-10, mean square
initialised to 1 — ``rms_init=0`` gives ``torch.optim.RMSprop``'s start), 1000 iterations.
The group's images are rows of one ``W`` tensor; the loss is the sum of per-image losses, so
each image's update is exactly its own. The initial ``W`` is one draw from the seeded
generator, the same for every image (a row does not depend on the rest of the group).

Saliency: the final ``m`` (high = kept). Cost: one clean pass (the prediction), then
``iterations`` × (F + B) per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.explainers.base import (
    Explanation,
    ModelHandle,
    ProgressFn,
    clean_pass,
    no_progress,
)
from workers.explainers.batching import iter_chunks
from workers.explainers.optimisation.filters import laplacian_kernel
from workers.explainers.optimisation.loop import (
    Budget,
    mask_dtype,
    minimise,
    ordinary_tensors,
    progress_reporter,
)
from workers.explainers.optimisation.optimisers import RMSPropTF1
from workers.explainers.registry import register


@dataclass(frozen=True)
class _Objective:
    """NeuroMask's per-image loss for one chunk of images (display space, targets)."""

    handle: ModelHandle
    display: Tensor
    targets: Tensor
    kernel: Tensor
    temperature: float
    weight_limit: float
    lambdas: tuple[float, float, float]

    def loss(self, w: Tensor, rows: Tensor, t: int) -> Tensor:
        """``λ_pred·CE + λ_sparse·mean|W + limit| + λ_smooth·mean((K ⋆ W)²)`` per row."""
        m = torch.sigmoid(w / self.temperature)
        masked = self.handle.from_display(self.display[rows] * m)  # x·m + black·(1 − m)
        logits = self.handle.model(masked.to(self.display.dtype)).to(w.dtype)
        pred = F.cross_entropy(logits, self.targets[rows], reduction="none")
        sparse = (w + self.weight_limit).abs().flatten(1).mean(dim=1)
        smooth = F.conv2d(w, self.kernel).pow(2).flatten(1).mean(dim=1)
        lambda_pred, lambda_sparse, lambda_smooth = self.lambdas
        return lambda_pred * pred + lambda_sparse * sparse + lambda_smooth * smooth


@register("neuromask")
def neuromask(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    iterations: int = 1000,
    learning_rate: float = 0.03,
    temperature: float = 0.3,
    weight_limit: float = 10.0,
    lambda_pred: float = 50.0,
    lambda_sparse: float = 16.0,
    lambda_smooth: float = 3.0,
    laplacian: int = 5,
    rms_init: float = 1.0,
    seed: int = 0,
    early_stop: bool = False,
    patience: int = 50,
    tolerance: float = 1e-4,
    max_batch_size: int | None = 64,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """NeuroMask maps ``(B, H, W)``: the learned soft mask of each image."""
    batch, size = inputs.shape[0], (inputs.shape[-2], inputs.shape[-1])
    budget = Budget(iterations, early_stop, patience, tolerance)
    optimiser = RMSPropTF1(lr=learning_rate, ms_init=rms_init)
    lambdas = (lambda_pred, lambda_sparse, lambda_smooth)
    with ordinary_tensors():
        logits, targets = clean_pass(handle, inputs, targets, max_batch_size or 64)
        display, dtype = handle.to_display(inputs.clone()), mask_dtype(inputs)
        kernel = laplacian_kernel(laplacian, device=inputs.device, dtype=dtype)
        draw = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(seed))
        start = (2 * draw - 1).to(inputs.device, dtype) * weight_limit
        masks = torch.empty(batch, 1, *size, device=inputs.device, dtype=dtype)
        steps = torch.empty(batch, dtype=torch.long, device=inputs.device)
        chunks = list(iter_chunks(batch, max_batch_size or 64))
        for index, rows in enumerate(chunks):
            objective = _Objective(
                handle, display[rows], targets[rows], kernel, temperature, weight_limit, lambdas
            )
            init = start.expand(rows.stop - rows.start, -1, -1, -1)
            report = progress_reporter(progress, index, iterations, len(chunks))
            outcome = minimise(objective.loss, init, optimiser, budget, on_step=report)
            masks[rows] = torch.sigmoid(outcome.params / temperature)
            steps[rows] = outcome.steps
    meta = [
        {"forward_passes": 1 + s, "backward_passes": s, "iterations": s} for s in steps.tolist()
    ]
    return Explanation(masks[:, 0].float(), meta, logits)
