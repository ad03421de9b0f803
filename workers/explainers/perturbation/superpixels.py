"""Superpixels for LIME, computed with scikit-image on the CPU.

``quickshift`` with ``kernel_size=4, max_dist=200, ratio=0.2`` is what ``lime_image`` uses by
default; ``slic`` (``n_segments=segments, compactness=10``) is the common alternative. Both
run on the image in [0, 1] display space (they convert to Lab themselves). Labels are made
consecutive from 0, so an image's superpixels are ``0 … K − 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.segmentation import quickshift, slic
from torch import Tensor

from workers.explainers.base import ExplainerError

QUICKSHIFT = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}
"""lime's defaults (``lime_image.LimeImageExplainer.explain_instance``)."""


def segment_one(image: np.ndarray, method: str, segments: int, seed: int) -> np.ndarray:
    """``(H, W)`` consecutive int64 labels of one ``(H, W, 3)`` float image in [0, 1]."""
    if method == "quickshift":
        labels = quickshift(image, rng=seed, **QUICKSHIFT)
    elif method == "slic":
        labels = slic(image, n_segments=segments, compactness=10.0, start_label=0)
    else:
        raise ExplainerError(f"unknown segmentation {method!r}; use quickshift or slic")
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int64)


def superpixels(images: Tensor, method: str, segments: int, seed: int) -> tuple[Tensor, list[int]]:
    """``(B, H, W)`` long labels on ``images``' device and the superpixel count of each image.

    ``images``: ``(B, 3, H, W)`` in [0, 1] display space (clamped here).
    """
    array = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().double().numpy()
    labels = [segment_one(image, method, segments, seed) for image in array]
    counts = [int(label.max()) + 1 for label in labels]
    return torch.from_numpy(np.stack(labels)).to(images.device), counts
