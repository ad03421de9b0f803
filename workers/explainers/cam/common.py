"""CAM maps at the layer's resolution, for methods built on top of a CAM (INTERFACES.md §3).

``cam_maps(method, handle, inputs, targets, layer, **params)`` returns ``(layer name used,
maps (B, h, w))``: ReLU applied, not up-sampled, not normalised. ``params`` are the method's
own parameters other than ``layer`` (the defaults of its parameter model apply when omitted),
and may include ``progress``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from workers.explainers.base import ModelHandle
from workers.explainers.cam.base import CamResult
from workers.explainers.cam.gradcam import gradcam_maps
from workers.explainers.cam.gradcam_pp import gradcam_pp_maps
from workers.explainers.cam.integrated_gradcam import integrated_gradcam_maps
from workers.explainers.cam.layercam import layercam_maps
from workers.explainers.cam.scorecam import scorecam_maps
from workers.explainers.cam.smooth_gradcam_pp import smooth_gradcam_pp_maps
from workers.explainers.cam.xgradcam import xgradcam_maps

MapsFn = Callable[..., CamResult]

_MAPS: dict[str, MapsFn] = {
    "gradcam": gradcam_maps,
    "gradcam_pp": gradcam_pp_maps,
    "xgradcam": xgradcam_maps,
    "layercam": layercam_maps,
    "scorecam": scorecam_maps,
    "integrated_gradcam": integrated_gradcam_maps,
    "smooth_gradcam_pp": smooth_gradcam_pp_maps,
}

CAM_METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam_pp",
    "xgradcam",
    "layercam",
    "scorecam",
    "integrated_gradcam",
    "smooth_gradcam_pp",
)


def cam_result(
    method: str,
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None = None,
    **params: Any,
) -> CamResult:
    """The full :class:`CamResult` (maps, layer, how it was chosen, metadata) of ``method``."""
    if method not in CAM_METHODS:
        raise ValueError(f"{method!r} is not a CAM method; choose one of {CAM_METHODS}")
    return _MAPS[method](handle, inputs, targets, layer, **params)


def cam_maps(
    method: str,
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    layer: str | None = None,
    **params: Any,
) -> tuple[str, Tensor]:
    """(layer name used, maps ``(B, h, w)`` at the layer's resolution, ReLU'd, not normalised)."""
    result = cam_result(method, handle, inputs, targets, layer, **params)
    return result.layer, result.maps
