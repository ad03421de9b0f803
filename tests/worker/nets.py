"""Tiny CNNs for worker tests, built by ``factory`` entries of a test models.toml.

Weights are random but seeded, so every worker process builds the same network and a test can
recompute a worker's answer in-process. ``build_slow`` sleeps in every forward pass (an
"expensive model" whose occlusion takes seconds); ``build_poison`` ends its process when it sees
an all-white image (a job that kills every worker that runs it).
"""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor, nn

WHITE = 2.0
"""An all-white pixel in model-input space with mean 0.5 and std 0.25."""


class TinyNet(nn.Module):
    """conv-relu-conv-relu, global average pool, linear head."""

    def __init__(self, num_classes: int = 3, delay_s: float = 0.0, poison: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)
        self.delay_s = delay_s
        self.poison = poison

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)``."""
        if self.poison and bool((x[:, 0] > WHITE - 1e-3).flatten(1).all(dim=1).any()):
            os._exit(17)  # what a segfaulting extension would do to the worker
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.head(self.pool(self.features(x)).flatten(1))


def _seeded(num_classes: int, **kwargs: float | bool) -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return TinyNet(num_classes, **kwargs)  # type: ignore[arg-type]


def build(num_classes: int = 3) -> TinyNet:
    """The plain tiny CNN."""
    return _seeded(num_classes)


def build_slow(num_classes: int = 3) -> TinyNet:
    """The same network, 20 ms per forward pass."""
    return _seeded(num_classes, delay_s=0.02)


def build_poison(num_classes: int = 3) -> TinyNet:
    """The same network; an all-white input ends the process."""
    return _seeded(num_classes, poison=True)


MODELS_TOML = """
[[models]]
name = "tiny"
factory = "tests.worker.nets:build"
weights = "none"
input_size = [32, 32]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
labels = ["red", "green", "blue"]
target_layer = "features.2"

[[models]]
name = "tiny_slow"
factory = "tests.worker.nets:build_slow"
weights = "none"
input_size = [32, 32]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
labels = ["red", "green", "blue"]
target_layer = "features.2"

[[models]]
name = "tiny_poison"
factory = "tests.worker.nets:build_poison"
weights = "none"
input_size = [32, 32]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
labels = ["red", "green", "blue"]
target_layer = "features.2"
"""
