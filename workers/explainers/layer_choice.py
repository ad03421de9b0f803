"""The automatic layer of the CAM family: the last spatial map the prediction depends on.

One probe forward and backward at the model's input size (once per model) records every
module's output that can be read as a spatial map (``layouts.py``: convolution maps,
channels-last maps, transformer tokens on their patch grid) and the gradient of the top logit
with respect to it. The chosen layer is the last of them, in execution order, whose *grid
cells* the logit depends on (a gradient not zero on the patch tokens / pixels), preferring the
outermost module producing that output (``layer4`` rather than its last ReLU), as the
reference libraries do. Among transformer token maps, the last *normalisation* layer the
prediction depends on is preferred (the residual stream as the next attention reads it, not a
projection such as ``qkv`` inside a block): ``blocks.11.norm1`` in timm, ``ln_1`` in
torchvision, ``layernorm_before`` in transformers — what pytorch-grad-cam recommends for ViTs.

This finds ``layer4`` in a ResNet, the final ``features`` block in a VGG or DenseNet, the
permuted last stage of a Swin, and, in a ViT, the first norm of the last encoder block: after
it, a patch token reaches the class token only through the last attention, so any later token
map gets no gradient at all from the classifier (the blank maps users of other libraries see
on transformers). A model whose probe backward fails, or whose prediction depends on nothing
(torchvision's ViT head is initialised to zero), falls back to the last spatial output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from workers.explainers.base import ExplainerError, ModelHandle
from workers.explainers.layouts import Layout, infer_layout, prefix_tokens


def _outermost(candidates: list[str]) -> str:
    """The shallowest module among ``candidates`` that contains (or is) the last one."""
    last = candidates[-1]
    chosen = last
    for name in reversed(candidates):
        if last.startswith(name + ".") or name == last:
            chosen = name
    return chosen


def find_auto_layer(handle: ModelHandle) -> str:
    """Name of the automatic layer of ``handle``'s model (ExplainerError if none)."""
    model, size = handle.model, handle.input_size
    prefix = prefix_tokens(model)
    recorded: list[tuple[str, Tensor, Layout]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: Any, _i: Any, out: Any, name: str = name) -> Any:
            if not isinstance(out, Tensor):
                return None
            layout = infer_layout(tuple(out.shape), size, prefix)
            if layout is None:
                return None
            recorded.append((name, out, layout))
            return out.clone()  # later in-place ops must not touch the recorded output

        hooks.append(module.register_forward_hook(hook))
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(1, len(handle.mean), *size, generator=generator).to(handle.device)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(probe.requires_grad_(True))
            if not recorded:
                raise ExplainerError(f"model {handle.name!r} has no layer with a spatial output")
            score = logits[0, int(logits[0].argmax())]
            outputs = [out for _, out, _ in recorded]
            try:
                gradients = torch.autograd.grad(score, outputs, allow_unused=True)
            except RuntimeError:  # no differentiable path: keep the last spatial output
                gradients = tuple(torch.ones_like(out) for out in outputs)
    finally:
        for hook_handle in hooks:
            hook_handle.remove()
    reached = [
        (name, layout)
        for (name, _, layout), gradient in zip(recorded, gradients, strict=True)
        if gradient is not None and bool(layout.to_map(gradient).abs().amax() > 0)
    ]
    if reached and reached[-1][1].kind == "tokens":
        norms = [
            name for name, layout in reached if layout.kind == "tokens" and _is_norm(model, name)
        ]
        if norms:  # the residual stream, normalised, rather than a projection inside a block
            return norms[-1]
    # A model whose prediction depends on no input (a zero-initialised head) reaches nothing:
    # then the last spatial output, as a shape-only rule would choose.
    return _outermost([name for name, _ in reached] or [name for name, _, _ in recorded])


def _is_norm(model: torch.nn.Module, name: str) -> bool:
    """Whether module ``name`` is a normalisation layer (LayerNorm, RMSNorm, ...)."""
    return type(model.get_submodule(name)).__name__.endswith("Norm")
