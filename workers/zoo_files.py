"""Models from files: a TorchScript archive, or an ONNX graph run by ONNX Runtime.

Both hold their weights, so an entry names only the file, the input size and the
preprocessing. Neither exposes its layers to Python hooks (a TorchScript module runs its
forward in C++; ONNX Runtime is not PyTorch at all), so the layer-based methods and LRP cannot
run on them (``ModelHandle.opaque``; the worker announces why). A TorchScript model still
gives gradients with respect to its input, so the optimisation methods run; an ONNX model
gives none, so only the gradient-free methods (occlusion, FMO, RISE, LIME) and the
deletion / insertion metrics do: its forward passes are batched with every other job's rows
like any model's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class ModelFileError(ValueError):
    """A model file that cannot be loaded."""


def load_torchscript(path: Path) -> nn.Module:
    """A TorchScript archive (``torch.jit.save``), on the CPU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
            return torch.jit.load(str(path), map_location="cpu")
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelFileError(f"cannot load TorchScript file {str(path)!r}: {error}") from error


class OnnxModel(nn.Module):
    """An ONNX graph as a module: ``(B, C, H, W)`` float tensor in, ``(B, K)`` logits out.

    The first input and the first output are used. A graph exported with a fixed batch size
    is run in chunks of that size (the last one padded), so the batcher may send any batch.
    """

    opaque = True
    """No layers to hook and no gradients (see ``ModelHandle.opaque``)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as error:  # the worker extra installs it
            raise ModelFileError("serving ONNX models needs the onnxruntime package") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()  # as many as torch uses
        try:
            self.session: Any = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelFileError(f"cannot load ONNX file {str(path)!r}: {error}") from error
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        batch = first.shape[0] if first.shape else None
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``x`` (computed by ONNX Runtime; no autograd)."""
        array = x.detach().float().cpu().contiguous().numpy()
        step = self.fixed_batch or max(1, array.shape[0])
        parts = []
        for start in range(0, array.shape[0], step):
            chunk = array[start : start + step]
            short = step - chunk.shape[0]
            if self.fixed_batch and short:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            out = self.session.run(None, {self.input_name: chunk})[0]
            parts.append(out[: step - short] if short else out)
        logits = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(x.device)


def load_onnx(path: Path) -> nn.Module:
    """An ONNX file as an :class:`OnnxModel`."""
    if not path.is_file():
        raise ModelFileError(f"ONNX file {str(path)!r} does not exist")
    return OnnxModel(path)
