"""Gradient-free forward passes: the one function every no-grad model evaluation goes through.

Explainers never call ``handle.model`` for a no-grad evaluation; they call
:meth:`~workers.explainers.base.ModelHandle.evaluate`, which runs :func:`forward_logits` here
directly (a library call, a test) or hands the rows to the worker's per-model batcher, which
packs the rows of many jobs into one call of :func:`forward_logits`. Either way a row's logits
depend only on that row (eval-mode models), so a map does not depend on what shared its batch.

* Layout: batches are fed channels-last where the model runs faster that way (always on the
  CPU, where oneDNN convolutions gain 1.3–1.6× on ResNets; on CUDA when the model's weights are
  stored channels-last, as the model zoo stores them).
* Precision: ``float16`` / ``bfloat16`` run under CUDA autocast; on the CPU every precision
  runs in float32 (:func:`precision_used`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

HALF_TYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISIONS = ("float32", *HALF_TYPES)


class PrecisionError(ValueError):
    """An unknown precision name."""


def precision_used(device: torch.device, precision: str) -> str:
    """The precision a call really runs in: half types only on CUDA, else float32."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    return precision if device.type == "cuda" else "float32"


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether to feed ``model`` channels-last (NHWC) batches.

    On CPU always; on CUDA only when the first 4-d weight is already channels-last, so cuDNN
    never converts weights.
    """
    for tensor in model.parameters():
        if tensor.dim() == 4:
            if not tensor.is_cuda:
                return True
            return tensor.is_contiguous(memory_format=torch.channels_last)
    return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """CUDA autocast for a half precision, else nothing."""
    used = precision_used(device, precision)
    if used == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=HALF_TYPES[used])


def forward_logits(
    model: nn.Module, inputs: Tensor, precision: str = "float32", channels_last: bool = False
) -> Tensor:
    """Float32 logits ``(n, K)`` of one gradient-free forward pass of ``inputs``."""
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(inputs.device, precision):
        return model(inputs).float()
