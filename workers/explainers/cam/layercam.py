"""LayerCAM (Jiang, Zhang, Hou, Cheng, Wei, "LayerCAM: Exploring Hierarchical Class
Activation Maps for Localization", IEEE TIP 2021).

Per-position weights instead of one weight per channel, so shallow layers give usable maps:

    L = ReLU(Σ_k ReLU(G_k(i, j)) · A_k(i, j))

With several ``layers``, each map ``L^l`` (ReLU'd) is divided by its per-image maximum, the
shallow ones (every layer but the deepest, in execution order) are scaled by
``tanh(γ · L^l / max L^l)`` (paper eq. 9, γ = 2), all are resized to the finest grid and fused
by the element-wise maximum; the fused map lies in [0, 1]. A single layer gives the raw map.
One forward and one backward pass for the batch, whatever the number of layers.
"""

from __future__ import annotations

from torch import Tensor

from workers.explainers.base import (
    ExplainerError,
    Explanation,
    ModelHandle,
    ProgressFn,
    no_progress,
)
from workers.explainers.cam.base import (
    CamResult,
    explanation,
    finish_maps,
    layer_gradients,
    resolve_layers,
)
from workers.explainers.cam.formulas import fuse_layercam, layercam_raw
from workers.explainers.registry import register


def layercam_maps(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None = None,
    *,
    layers: list[str] | None = None,
    gamma: float = 2.0,
) -> CamResult:
    """LayerCAM maps ``(B, h, w)`` (the finest grid when fused), ReLU applied."""
    if layers and layer is not None:
        raise ExplainerError("give either `layer` or `layers`, not both")
    names, modules, source = resolve_layers(handle, list(layers) if layers else [layer])
    got = layer_gradients(handle, inputs, targets, names, modules)
    maps, notes = [], []
    for index in got.order:
        raw = layercam_raw(got.activations[index], got.gradients[index])
        cam, row_notes = finish_maps(raw, names[index], "LayerCAM")
        maps.append(cam)
        notes.append(row_notes)
    # A fused map is blank only where every layer's map is.
    row_notes = [None if None in row else row[0] for row in zip(*notes, strict=True)]
    fused = maps[0] if len(maps) == 1 else fuse_layercam(maps, gamma)
    meta = {"forward_passes": 1, "backward_passes": 1}
    if len(names) > 1:
        meta["layers"] = [names[index] for index in got.order]
    name = "+".join(names[index] for index in got.order)
    return CamResult(name, fused, source, meta, row_notes, logits=got.logits, targets=got.targets)


@register("layercam")
def layercam(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    *,
    layer: str | None = None,
    layers: list[str] | None = None,
    gamma: float = 2.0,
    progress: ProgressFn = no_progress,
) -> Explanation:
    """LayerCAM maps ``(B, H, W)`` for ``targets``, fused over ``layers`` when given."""
    result = layercam_maps(handle, inputs, targets, layer, layers=layers, gamma=gamma)
    progress(1, 1)
    return explanation(result, inputs)
