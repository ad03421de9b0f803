"""Smooth Grad-CAM++ (Omeiza, Speakman, Cintas, Weldemariam, "Smooth Grad-CAM++: An Enhanced
Inference Level Visualization Technique for Deep Convolutional Neural Network Models",
IntelliSys 2019, arXiv 1908.01224).

Grad-CAM++ whose gradient powers are averaged over ``n`` noisy copies ``x_m = x + ε_m``,
``ε_m ~ N(0, σ² I)``, with ``g_m = ∂S_c(x_m)/∂A(x_m)`` and ``A`` from the clean input:

    D_p = (1/n) Σ_m g_m^p   (p = 1, 2, 3)
    α_k(i, j) = D2 / (2·D2 + (Σ_ab A_k(a, b)) · D3)       (0 where D2 = 0)
    w_k = Σ_(i,j)∈Ω α_k(i, j) · ReLU(D1_k(i, j))
    L   = ReLU(Σ_(k∈𝒦) w_k A_k)

The paper's three modes: ``layer`` (Ω, 𝒦 = everything), ``channels`` (𝒦 = the given feature
maps) and ``neuron`` (Ω = one position ``(i, j)`` of the layer's grid, so only that neuron's
gradients define the weights). ``D2`` in the numerator (the paper prints ``D1``, which is not
Grad-CAM++); the paper-form denominator; ``D1`` in the ReLU term. Defaults (spec, not the
paper's unverified values): ``n = 25``, ``σ = 0.15·(x_max − x_min)`` per image in model-input
space. The noise ``z_m`` is drawn from ``seed`` in blocks of about 16 MB (only the blocks a
chunk needs are held) and shared by every image (scaled by its own σ), so a map does not
depend on the batch, on ``max_batch_size`` or on ``n``'s other samples. Cost: 1 forward +
n × (forward + backward) per image, filled into passes of ``max_batch_size`` (default 64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
    layer_gradients,
    resolve_layers,
)
from workers.explainers.cam.formulas import (
    gradcam_pp_weights_from_moments,
    mode_masks,
    weighted_sum,
)
from workers.explainers.registry import register

NOISE_ELEMENTS = 1 << 22
"""Noise values drawn at a time: samples come in blocks of ``NOISE_ELEMENTS // (C·H·W)``."""


class NoiseSource:
    """Standard normal images ``z_m`` ``(C, H, W)``, drawn a block at a time on the inputs'
    device: block ``b`` from the generator seeded ``seed + b·2³¹``, so ``z_m`` depends only on
    ``seed``, ``m`` and the device, never on ``n_samples`` or ``max_batch_size``."""

    def __init__(self, like: Tensor, seed: int) -> None:
        self.shape, self.seed = tuple(like.shape[1:]), seed
        self.device, self.dtype = like.device, like.dtype
        self.per_block = max(1, NOISE_ELEMENTS // max(1, like[0].numel()))
        self._block, self._values = -1, like.new_empty(0)

    def take(self, samples: Tensor) -> Tensor:
        """``(len(samples), C, H, W)``: ``z`` of the given sample indices."""
        out = torch.empty(len(samples), *self.shape, device=self.device, dtype=self.dtype)
        for block in samples.div(self.per_block, rounding_mode="floor").unique().tolist():
            if block != self._block:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(self.seed + block * 2**31)
                shape = (self.per_block, *self.shape)
                self._values = torch.randn(
                    shape, generator=generator, device=self.device, dtype=self.dtype
                )
                self._block = block
            mine = samples // self.per_block == block
            out[mine] = self._values[samples[mine] - block * self.per_block]
        return out


def gradient_moments(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    name: str,
    module: nn.Module,
    spreads: Tensor,
    z: NoiseSource,
    n_samples: int,
    max_batch_size: int,
    progress: ProgressFn,
) -> tuple[Tensor, Tensor, Tensor]:
    """``D1, D2, D3`` ``(B, K, h, w)``: means of ``g, g², g³`` over the noisy copies."""
    batch = inputs.shape[0]
    total = batch * n_samples
    sums: list[Tensor] = []
    for chunk in iter_chunks(total, max_batch_size):
        index = torch.arange(chunk.start, chunk.stop, device=inputs.device)
        image, sample = index // n_samples, index % n_samples
        noisy = inputs[image] + spreads[image].view(-1, 1, 1, 1) * z.take(sample)
        g = layer_gradients(handle, noisy, targets[image], [name], [module]).gradients[0]
        g2 = g * g
        if not sums:
            sums = [g.new_zeros(batch, *g.shape[1:]) for _ in range(3)]
        for total_p, power in zip(sums, (g, g2, g2 * g), strict=True):
            total_p.index_add_(0, image, power)
        progress(chunk.stop, total)
    d1, d2, d3 = (s / n_samples for s in sums)
    return d1, d2, d3


def smooth_gradcam_pp_maps(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None = None,
    *,
    n_samples: int = 25,
    sigma: float = 0.15,
    mode: str = "layer",
    channels: list[int] | None = None,
    neuron: list[int] | None = None,
    seed: int = 0,
    max_batch_size: int | None = None,
    progress: ProgressFn = no_progress,
) -> CamResult:
    """Smooth Grad-CAM++ maps ``(B, h, w)`` at the layer's resolution, ReLU applied."""
    names, modules, source = resolve_layers(handle, [layer])
    A, logits = layer_activations(handle, inputs, names[0], modules[0])
    targets = resolve_targets(targets, logits)
    keep, where = mode_masks(A, mode, channels, neuron)
    spreads = sigma * (inputs.flatten(1).amax(dim=1) - inputs.flatten(1).amin(dim=1))
    z = NoiseSource(inputs, seed)
    d1, d2, d3 = gradient_moments(
        handle, inputs, targets, names[0], modules[0], spreads, z, n_samples,
        max_batch_size or 64, progress,
    )  # fmt: skip
    weights = gradcam_pp_weights_from_moments(A, d1, d2, d3, where)
    if keep is not None:
        weights = weights * keep.to(weights.dtype)
    maps, notes = finish_maps(weighted_sum(weights, A), names[0], "Smooth Grad-CAM++")
    meta = {"forward_passes": n_samples + 1, "backward_passes": n_samples, "mode": mode}
    return CamResult(names[0], maps, source, meta, notes, logits=logits, targets=targets)


@register("smooth_gradcam_pp")
def smooth_gradcam_pp(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    n_samples: int = 25,
    sigma: float = 0.15,
    mode: str = "layer",
    channels: list[int] | None = None,
    neuron: list[int] | None = None,
    seed: int = 0,
    max_batch_size: int | None = None,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """Smooth Grad-CAM++ maps ``(B, H, W)`` for ``targets``."""
    result = smooth_gradcam_pp_maps(
        handle,
        inputs,
        targets,
        layer,
        n_samples=n_samples,
        sigma=sigma,
        mode=mode,
        channels=channels,
        neuron=neuron,
        seed=seed,
        max_batch_size=max_batch_size,
        progress=progress,
    )
    return explanation(result, inputs)
