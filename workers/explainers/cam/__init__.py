"""Gradient / layer (CAM) methods."""

from workers.explainers.cam import gradcam

__all__ = ["gradcam"]
