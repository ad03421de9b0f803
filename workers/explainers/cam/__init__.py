"""Gradient / layer (CAM) methods: every module registers its explainer on import."""

from workers.explainers.cam import (
    common,
    gradcam,
    gradcam_pp,
    integrated_gradcam,
    layercam,
    scorecam,
    smooth_gradcam_pp,
    xgradcam,
)
from workers.explainers.cam.common import CAM_METHODS, cam_maps

__all__ = [
    "CAM_METHODS",
    "cam_maps",
    "common",
    "gradcam",
    "gradcam_pp",
    "integrated_gradcam",
    "layercam",
    "scorecam",
    "smooth_gradcam_pp",
    "xgradcam",
]
