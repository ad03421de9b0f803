"""Parameters of the gradient / layer (CAM) family."""

from __future__ import annotations

from app.contract.params.common import LayerParams, MethodSpec


class GradCamParams(LayerParams):
    """Grad-CAM: channel weights are the spatially averaged gradients of the target score."""


SPECS: list[MethodSpec] = [
    MethodSpec(
        name="gradcam",
        params=GradCamParams,
        lane="fast",
        family="gradient",
        summary="Class activation map weighted by average-pooled gradients.",
        paper="Selvaraju et al., Grad-CAM, ICCV 2017",
    ),
]
