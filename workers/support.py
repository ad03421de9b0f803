"""Which methods a model can run, found once at load by trying them on a probe image.

Some methods depend on the architecture, not on the request: LRP needs a rule for every layer
(no LayerNorm, attention, standalone sigmoid or un-mergeable batch norm), its hybrid with
Grad-CAM needs LRP, and every layer-based method (the CAM family, Gradual Extrapolation) needs a
layer with a spatial output. The worker runs those methods once on a random image at the model's
input size; a method that refuses gets its reason in the model's announcement
(``ModelInfo.unsupported``), so ``/v1/models`` and the web page can say so and the gateway can
answer 422 before queueing. A layer-based method stays available with an explicit ``layer`` (the
refusal is about the automatic one).
"""

from __future__ import annotations

import logging

import torch

from app.contract.methods import method_specs
from workers.explainers import ExplainerError, ModelHandle, explainer_names, get_explainer

log = logging.getLogger("workers.support")

PROBED = ("gradcam", "lrp", "gradcam_lrp", "gradual_extrapolation")
"""Methods whose ability to run depends on the architecture (the others need only forwards)."""


def layer_methods() -> list[str]:
    """Methods that take a ``layer`` parameter."""
    return sorted(n for n, s in method_specs().items() if "layer" in s.params.model_fields)


def differentiable(handle: ModelHandle) -> bool:
    """Whether the model's logits carry gradients back to its input."""
    probe = torch.zeros(1, len(handle.mean), *handle.input_size, device=handle.device)
    with torch.inference_mode(False), torch.enable_grad():
        return bool(handle.model(probe.requires_grad_(True)).requires_grad)


def unsupported_methods(handle: ModelHandle) -> dict[str, str]:
    """``{method: reason}`` for the methods ``handle``'s model cannot run at their defaults."""
    if not differentiable(handle):
        refused = _without_gradients(handle)
    elif handle.opaque:
        refused = _without_layers(handle)
    else:
        refused = _probed(handle)
    return dict(sorted(refused.items()))


def _without_gradients(handle: ModelHandle) -> dict[str, str]:
    """An ONNX graph: every method but the gradient-free ones."""
    reason = (
        f"model {handle.name!r} ({handle.architecture or 'a model file'}) gives no gradients "
        "(ONNX Runtime runs outside autograd): only the gradient-free methods run (occlusion, "
        "fmo, rise, lime)"
    )
    return {name: reason for name, spec in method_specs().items() if spec.family != "perturbation"}


def _without_layers(handle: ModelHandle) -> dict[str, str]:
    """A TorchScript module: gradients, but no layers to hook (no CAM, no propagation)."""
    try:
        handle.resolve_layer(None)
    except ExplainerError as error:
        return {
            name: str(error)
            for name, spec in method_specs().items()
            if spec.family == "propagation" or "layer" in spec.params.model_fields
        }
    return {}


def _probed(handle: ModelHandle) -> dict[str, str]:
    """A PyTorch model: try the architecture-dependent methods on a probe image."""
    known = set(explainer_names())
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(1, len(handle.mean), *handle.input_size, generator=generator)
    probe = handle.from_display(probe.to(handle.device))
    refused: dict[str, str] = {}
    for method in (m for m in PROBED if m in known):
        try:
            get_explainer(method)(handle, probe, torch.tensor([0], device=handle.device))
        except ExplainerError as error:
            refused[method] = str(error)
        except Exception as error:
            log.warning("event=support_probe_failed model=%s method=%s error=%r",
                        handle.name, method, error)  # fmt: skip
    if "gradcam" in refused:  # no usable automatic layer: every layer-based method
        reason = refused.pop("gradcam")
        for method in layer_methods():
            refused.setdefault(method, reason)
    return refused
