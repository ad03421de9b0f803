"""Models whose class scores depend only on known regions, for the optimisation tests.

``RegionBrightnessModel``: class ``k``'s logit is ``gain ·`` the mean of channel 0 over region
``R_k`` (linear: any blur or black-out of a bright square there lowers it). ``RegionEnergy
Model``: ``gain · (mean over R_k of |high-pass response| − shift)``, a non-linear one. Nothing
outside ``R_k`` can change class ``k``. The regions are symmetric under a horizontal flip
(extremal perturbation flips its input every other iteration, which a real classifier would
not mind).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workers.explainers.base import ModelHandle

SIZE = 48
REGIONS = ((4, 16, 18, 30), (32, 44, 18, 30))
"""(row0, row1, col0, col1) of each class's region, exclusive ends; centred columns."""
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def region_masks(size: int = SIZE) -> Tensor:
    """``(K, size, size)`` bool, True inside each class's region."""
    masks = torch.zeros(len(REGIONS), size, size, dtype=torch.bool)
    for index, (r0, r1, c0, c1) in enumerate(REGIONS):
        masks[index, r0:r1, c0:c1] = True
    return masks


class RegionEnergyModel(nn.Module):
    """Logits ``(B, K)``: class ``k`` sees only the high-pass magnitude inside region ``k``."""

    def __init__(self, gain: float = 4.0, shift: float = 0.4) -> None:
        super().__init__()
        self.high_pass = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        kernel = -torch.ones(3, 3) / 8
        kernel[1, 1] = 1.0
        with torch.no_grad():
            self.high_pass.weight.copy_(kernel.expand(1, 3, 3, 3))
        weights = region_masks().float()
        self.register_buffer("weights", weights / weights.flatten(1).sum(dim=1)[:, None, None])
        self.gain, self.shift = gain, shift

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)``."""
        magnitude = self.high_pass(x)[:, 0].abs()
        weights = self.weights.to(magnitude.dtype)
        return self.gain * (torch.einsum("bhw,khw->bk", magnitude, weights) - self.shift)


class RegionBrightnessModel(nn.Module):
    """Logits ``(B, K)``: class ``k`` is ``gain ·`` the mean of channel 0 inside region ``k``.

    Linear in the input, so the score falls steadily with any blur of a bright region.
    """

    def __init__(self, gain: float = 3.0) -> None:
        super().__init__()
        weights = region_masks().float()
        self.weights = nn.Parameter(weights / weights.flatten(1).sum(dim=1)[:, None, None])
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K)``."""
        return self.gain * torch.einsum("bhw,khw->bk", x[:, 0], self.weights.to(x.dtype))


def region_handle(kind: str = "energy", dtype: torch.dtype = torch.float32) -> ModelHandle:
    """A handle over a :class:`RegionEnergyModel` (``energy``) or ``brightness`` model."""
    model = RegionEnergyModel() if kind == "energy" else RegionBrightnessModel()
    return ModelHandle(
        name=kind, model=model.eval().to(dtype), input_size=(SIZE, SIZE), mean=MEAN, std=STD
    )


def textured_inputs(count: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(count, 3, SIZE, SIZE)`` white-noise textures in model-input space."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, SIZE, SIZE, generator=generator).to(dtype)


def square_inputs(count: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(count, 3, SIZE, SIZE)`` model inputs: dark noisy ground, a bright square per region."""
    generator = torch.Generator().manual_seed(seed)
    display = 0.2 + 0.05 * torch.randn(count, 3, SIZE, SIZE, generator=generator)
    for r0, r1, c0, c1 in REGIONS:
        display[:, :, r0:r1, c0:c1] += 0.6
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((display - mean) / std).to(dtype)


def share_inside(saliency: Tensor, region: Tensor) -> float:
    """Mean saliency inside ``region`` divided by the mean outside it."""
    return float(saliency[region].mean() / saliency[~region].mean().clamp_min(1e-12))
