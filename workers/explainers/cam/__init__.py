"""Gradient / layer (CAM) methods."""

from workers.explainers.cam import common, gradcam, gradcam_pp, xgradcam
from workers.explainers.cam.common import CAM_METHODS, cam_maps

__all__ = ["CAM_METHODS", "cam_maps", "common", "gradcam", "gradcam_pp", "xgradcam"]
