"""The tiny test CNN exported to TorchScript and to ONNX, and a models.toml serving both."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tests.worker.nets import build

ENTRY = """
[[models]]
name = "{name}"
{source} = "{file}"
input_size = [32, 32]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
labels = ["red", "green", "blue"]
"""


def export(folder: Path, fixed_batch: int | None = None) -> Path:
    """``tiny.ts`` and ``tiny.onnx`` (dynamic batch, or ``fixed_batch``) in ``folder``, and a
    models.toml naming them ``tiny_ts`` and ``tiny_onnx``; the models.toml's path."""
    model = build().eval()
    example = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit and the TorchScript ONNX exporter are
        torch.jit.trace(model, example).save(str(folder / "tiny.ts"))  # deprecated upstream
        dynamic = None if fixed_batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(
            model,
            (torch.rand(fixed_batch or 2, 3, 32, 32),),
            str(folder / "tiny.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic,
            dynamo=False,
        )
    models = folder / "models.toml"
    models.write_text(
        ENTRY.format(name="tiny_ts", source="torchscript", file="tiny.ts")
        + ENTRY.format(name="tiny_onnx", source="onnx", file="tiny.onnx"),
        encoding="utf-8",
    )
    return models
