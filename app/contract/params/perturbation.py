"""Parameters of the perturbation family."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.contract.jobs import ModelInfo
from app.contract.params.common import BatchParams, MethodSpec

Fill = Literal["zero", "blur", "local_mean"]
Score = Literal["prob", "logit"]


class OcclusionParams(BatchParams):
    """Sliding-window occlusion (Zeiler & Fergus)."""

    window: int = Field(32, ge=1, le=4096, description="Side of the square occluder, in pixels.")
    stride: int = Field(8, ge=1, le=4096, description="Step of the sliding window, in pixels.")
    fill: Fill = Field(
        "zero",
        description="Occluder content: `zero` (0 in model-input space, the mean colour), "
        "`blur` (Gaussian-blurred image), `local_mean` (mean colour under the window).",
    )
    score: Score = Field("prob", description="Drop of the target's `prob` or `logit`.")

    def check_model(self, model: ModelInfo) -> None:
        """The window must fit in the model input."""
        super().check_model(model)
        if self.window > min(model.input_size):
            raise ValueError(
                f"window {self.window} is larger than the model input {model.input_size}"
            )


SPECS: list[MethodSpec] = [
    MethodSpec(
        name="occlusion",
        params=OcclusionParams,
        lane="slow",
        family="perturbation",
        summary="Score drop when a sliding square hides each region.",
        paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    ),
]
