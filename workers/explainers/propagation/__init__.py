"""Propagation methods: LRP, the Grad-CAM × LRP hybrid, Gradual Extrapolation."""

from workers.explainers.propagation import gradcam_lrp, gradual_extrapolation, lrp

__all__ = ["gradcam_lrp", "gradual_extrapolation", "lrp"]
