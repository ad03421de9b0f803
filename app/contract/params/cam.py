"""Parameters of the gradient / layer (CAM) family."""

from __future__ import annotations

from app.contract.params.common import LayerParams, MethodSpec


class GradCamParams(LayerParams):
    """Grad-CAM: channel weights are the spatially averaged gradients of the target score."""


class GradCamPPParams(LayerParams):
    """Grad-CAM++: channel weights from positive gradients with closed-form pixel weights α."""


class XGradCamParams(LayerParams):
    """XGrad-CAM: channel weights are activation-weighted averages of the gradients."""


SPECS: list[MethodSpec] = [
    MethodSpec(
        name="gradcam",
        params=GradCamParams,
        lane="fast",
        family="gradient",
        summary="Class activation map weighted by average-pooled gradients.",
        paper="Selvaraju et al., Grad-CAM, ICCV 2017",
    ),
    MethodSpec(
        name="gradcam_pp",
        params=GradCamPPParams,
        lane="fast",
        family="gradient",
        summary="Grad-CAM with pixel-wise weighted positive gradients (better for several "
        "instances of the class).",
        paper="Chattopadhyay et al., Grad-CAM++, WACV 2018",
    ),
    MethodSpec(
        name="xgradcam",
        params=XGradCamParams,
        lane="fast",
        family="gradient",
        summary="Grad-CAM with activation-weighted gradients (sensitivity and conservation "
        "axioms).",
        paper="Fu et al., Axiom-based Grad-CAM (XGrad-CAM), BMVC 2020",
    ),
]
