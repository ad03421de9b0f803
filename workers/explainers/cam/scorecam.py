"""Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu, "Score-CAM: Score-Weighted
Visual Explanations for Convolutional Neural Networks", CVPR Workshops 2020).

No gradients: each channel's activation map, up-sampled and min-max normalised to [0, 1], masks
the input, and the target's softmax probability on the masked input is that channel's weight:

    H_k = N(U(A_k)),   s_k = softmax(f(x ⊙ H_k))_c,   L = ReLU(Σ_k s_k A_k)

(as the authors' code: the probability itself, without subtracting a baseline score). The
masking happens in model-input space, so a masked pixel takes the value 0 there (the dataset
mean colour). Constant channels (``H_k`` undefined) get ``s_k = 0`` and cost no forward pass.
Cost: 1 + K forward passes per image (K = channels of the layer; the first pass, which reads
the activations, also gives the prediction); the masked inputs of all images are filled into
gradient-free passes of ``max_batch_size`` (default 64) through ``handle.evaluate`` (in the
worker, shared with other jobs' rows).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.explainers.base import (
    Explanation,
    ModelHandle,
    ProgressFn,
    no_progress,
    resolve_targets,
)
from workers.explainers.batching import iter_chunks
from workers.explainers.cam.base import (
    CamResult,
    explanation,
    finish_maps,
    layer_activations,
    resolve_layers,
)
from workers.explainers.cam.formulas import weighted_sum
from workers.explainers.postprocess import normalise, upsample
from workers.explainers.registry import register


def channel_scores(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    A: Tensor,
    max_batch_size: int,
    progress: ProgressFn,
) -> tuple[Tensor, Tensor]:
    """``s`` ``(B, K)``: target probability with each channel's map as the input mask.

    Also returns how many masked forward passes each image needed ``(B,)``.
    """
    size = (inputs.shape[-2], inputs.shape[-1])
    varying = A.flatten(2).amax(dim=2) > A.flatten(2).amin(dim=2)  # (B, K)
    pairs = varying.nonzero()  # (N, 2): image, channel
    scores = torch.zeros(A.shape[:2], device=A.device, dtype=torch.float32)
    total = pairs.shape[0]
    for chunk in iter_chunks(total, max_batch_size):
        image, channel = pairs[chunk, 0], pairs[chunk, 1]
        masks = normalise(upsample(A[image, channel], size))
        logits = handle.evaluate(inputs[image] * masks.unsqueeze(1).to(inputs.dtype))
        probs = logits.float().softmax(dim=1).gather(1, targets[image].view(-1, 1))[:, 0]
        scores[image, channel] = probs
        progress(chunk.stop, total)
    return scores, varying.sum(dim=1)


def scorecam_maps(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None = None,
    *,
    max_batch_size: int | None = None,
    progress: ProgressFn = no_progress,
) -> CamResult:
    """Score-CAM maps ``(B, h, w)`` at the layer's resolution, ReLU applied."""
    names, modules, source = resolve_layers(handle, [layer])
    with torch.inference_mode():
        A, logits = layer_activations(handle, inputs, names[0], modules[0])
        targets = resolve_targets(targets, logits)
        scores, passes = channel_scores(handle, inputs, targets, A, max_batch_size or 64, progress)
        maps, notes = finish_maps(weighted_sum(scores, A), names[0], "Score-CAM")
    rows = [{"forward_passes": 1 + int(n)} for n in passes.tolist()]
    return CamResult(names[0], maps, source, {}, notes, rows, logits, targets)


@register("scorecam")
def scorecam(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    max_batch_size: int | None = None,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Score-CAM maps ``(B, H, W)`` for ``targets``."""
    result = scorecam_maps(
        handle, inputs, targets, layer, max_batch_size=max_batch_size, progress=progress
    )
    return explanation(result, inputs)
