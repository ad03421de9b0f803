"""Parameters of the gradient / layer (CAM) family."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from app.contract.cost import Passes
from app.contract.jobs import ModelInfo
from app.contract.params.common import (
    BatchParams,
    Lane,
    LayerParams,
    MethodSpec,
    SeedParams,
    layer_channels,
)

LayerName = Annotated[str, Field(min_length=1, max_length=200)]
Channel = Annotated[int, Field(ge=0, le=1_000_000)]
Position = Annotated[int, Field(ge=0, le=100_000)]


class GradCamParams(LayerParams):
    """Grad-CAM: channel weights are the spatially averaged gradients of the target score."""

    def passes(self, model: ModelInfo) -> Passes:
        """One forward and one backward pass."""
        return Passes(1, 1)


class GradCamPPParams(LayerParams):
    """Grad-CAM++: channel weights from positive gradients with closed-form pixel weights α."""

    def passes(self, model: ModelInfo) -> Passes:
        """One forward and one backward pass."""
        return Passes(1, 1)


class XGradCamParams(LayerParams):
    """XGrad-CAM: channel weights are activation-weighted averages of the gradients."""

    def passes(self, model: ModelInfo) -> Passes:
        """One forward and one backward pass."""
        return Passes(1, 1)


class LayerCamParams(LayerParams):
    """LayerCAM: per-position weights (positive gradients); optionally fused over layers."""

    layers: list[LayerName] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Several dotted module names whose maps are fused (shallow layers scaled by "
        "tanh(γ·L/max L), then the element-wise maximum); instead of `layer`.",
    )
    gamma: float = Field(
        2.0, gt=0, le=100, description="γ of the tanh scaling of shallow layers when fusing."
    )

    @model_validator(mode="after")
    def _one_way_to_name_layers(self) -> LayerCamParams:
        if self.layers is not None and self.layer is not None:
            raise ValueError("give either `layer` or `layers`, not both")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            raise ValueError("`layers` names a layer twice")
        return self

    def passes(self, model: ModelInfo) -> Passes:
        """One forward and one backward pass (for every fused layer at once)."""
        return Passes(1, 1)

    def check_model(self, model: ModelInfo) -> None:
        """Every layer in ``layers`` must be a layer of the model."""
        super().check_model(model)
        for name in self.layers or []:
            LayerParams(layer=name).check_model(model)


class ScoreCamParams(LayerParams, BatchParams):
    """Score-CAM: each channel map masks the input; the target probability is its weight."""

    def passes(self, model: ModelInfo) -> Passes:
        """The clean forward (it reads the activations), then one per channel of the layer."""
        return Passes(1 + layer_channels(model, self.layer))


class IntegratedGradCamParams(LayerParams, BatchParams):
    """Integrated Grad-CAM: the Grad-CAM term integrated from a black image to the input."""

    steps: int = Field(
        50, ge=1, le=1000, description="Points on the path from the black baseline (M)."
    )

    def passes(self, model: ModelInfo) -> Passes:
        """The baseline's forward, then a forward and a backward per path point."""
        return Passes(1 + self.steps, self.steps)


class SmoothGradCamPPParams(LayerParams, BatchParams, SeedParams):
    """Smooth Grad-CAM++: Grad-CAM++ on gradients averaged over noisy copies of the input."""

    n_samples: int = Field(25, ge=1, le=1000, description="Noisy copies of the input (n).")
    sigma: float = Field(
        0.15,
        ge=0,
        le=10,
        description="Noise standard deviation as a fraction of each image's value range "
        "(σ = sigma·(x_max − x_min), in model-input space).",
    )
    mode: Literal["layer", "channels", "neuron"] = Field(
        "layer",
        description="`layer`: the whole layer; `channels`: only the feature maps in "
        "`channels`; `neuron`: channel weights from the one position `neuron`.",
    )
    channels: list[Channel] | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Feature-map indices of the layer (mode `channels` only).",
    )
    neuron: list[Position] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[row, column] of a position on the layer's grid (mode `neuron` only).",
    )

    def passes(self, model: ModelInfo) -> Passes:
        """The clean forward, then a forward and a backward per noisy copy."""
        return Passes(1 + self.n_samples, self.n_samples)

    @model_validator(mode="after")
    def _mode_arguments(self) -> SmoothGradCamPPParams:
        if (self.mode == "channels") != (self.channels is not None):
            raise ValueError("`channels` is required with mode `channels` and refused otherwise")
        if (self.mode == "neuron") != (self.neuron is not None):
            raise ValueError("`neuron` is required with mode `neuron` and refused otherwise")
        return self


def _spec(name: str, params: type[LayerParams], lane: Lane, summary: str, paper: str) -> MethodSpec:
    return MethodSpec(name, params, lane, "gradient", summary, paper)


SPECS: list[MethodSpec] = [
    _spec(
        "gradcam",
        GradCamParams,
        "fast",
        "Class activation map weighted by average-pooled gradients.",
        "Selvaraju et al., Grad-CAM, ICCV 2017",
    ),
    _spec(
        "gradcam_pp",
        GradCamPPParams,
        "fast",
        "Grad-CAM with pixel-wise weighted positive gradients (better for several instances).",
        "Chattopadhyay et al., Grad-CAM++, WACV 2018",
    ),
    _spec(
        "xgradcam",
        XGradCamParams,
        "fast",
        "Grad-CAM with activation-weighted gradients (sensitivity and conservation axioms).",
        "Fu et al., Axiom-based Grad-CAM (XGrad-CAM), BMVC 2020",
    ),
    _spec(
        "layercam",
        LayerCamParams,
        "fast",
        "Activations weighted per position by positive gradients; works at shallow layers and "
        "fuses several.",
        "Jiang et al., LayerCAM, IEEE TIP 2021",
    ),
    _spec(
        "scorecam",
        ScoreCamParams,
        "slow",
        "Channel maps weighted by the target probability of the input they mask (no gradients).",
        "Wang et al., Score-CAM, CVPR Workshops 2020",
    ),
    _spec(
        "integrated_gradcam",
        IntegratedGradCamParams,
        "slow",
        "Grad-CAM term integrated along the path from a black image to the input.",
        "Sattarzadeh et al., Integrated Grad-CAM, ICASSP 2021",
    ),
    _spec(
        "smooth_gradcam_pp",
        SmoothGradCamPPParams,
        "slow",
        "Grad-CAM++ from gradients averaged over noisy copies; a layer, feature maps or a neuron.",
        "Omeiza et al., Smooth Grad-CAM++, IntelliSys 2019",
    ),
]
