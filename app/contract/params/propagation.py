"""Parameters of the propagation family: LRP, the Grad-CAM × LRP hybrid, Gradual Extrapolation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.contract.cost import Passes
from app.contract.jobs import ModelInfo
from app.contract.params.common import Lane, LayerParams, MethodParams, MethodSpec

Composite = Literal[
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_alpha2_beta1_flat",
    "epsilon_alpha2_beta1",
    "epsilon_gamma_box",
    "epsilon",
]
SLOW_CAM_BASES = frozenset({"scorecam", "integrated_gradcam", "smooth_gradcam_pp"})
"""Base CAMs of many forward passes (their own methods are in the slow lane)."""

CamMethod = Literal[
    "gradcam",
    "gradcam_pp",
    "xgradcam",
    "layercam",
    "scorecam",
    "integrated_gradcam",
    "smooth_gradcam_pp",
]

COMPOSITE_DOC = (
    "LRP rule set (Zennit composites): `epsilon_plus_flat` (ε for dense layers, z⁺ for "
    "convolutions, flat for the first layer), `epsilon_plus` (no special first layer), "
    "`epsilon_alpha2_beta1_flat` / `epsilon_alpha2_beta1` (α2β1 for convolutions), "
    "`epsilon_gamma_box` (γ=0.25 for convolutions, z^B for the first), `epsilon` (ε everywhere)."
)


class LrpParams(MethodParams):
    """Layer-wise relevance propagation with a composite rule set."""

    composite: Composite = Field("epsilon_plus_flat", description=COMPOSITE_DOC)
    epsilon: float = Field(
        1e-6, gt=0, le=100, description="ε of the ε-rule layers (dense layers; all with `epsilon`)."
    )

    def passes(self, model: ModelInfo) -> Passes:
        """One forward and one (modified) backward pass."""
        return Passes(1, 1)


class GradCamLrpParams(LayerParams):
    """The Grad-CAM × LRP hybrid (Dhore et al. 2024), reconstructed defaults (METHODS.md §5.3)."""

    base: Literal["gradcam", "gradcam_pp"] = Field(
        "gradcam_pp", description="CAM whose map is denoised and multiplied with the LRP map."
    )
    threshold: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Denoising: CAM values below this fraction of the image's (min-max "
        "normalised) CAM are set to 0.",
    )
    sigma: float | None = Field(
        None,
        ge=0,
        le=100,
        description="σ of the final Gaussian blur, in model-input pixels; default 2 px for a "
        "224-px input, scaled with the input size; 0 turns the blur off.",
    )
    composite: Composite = Field("epsilon_plus_flat", description=COMPOSITE_DOC)
    lrp_positive: bool = Field(
        True, description="Keep only the positive part of the LRP map before the product."
    )

    def passes(self, model: ModelInfo) -> Passes:
        """The CAM's forward and backward, then LRP's."""
        return Passes(2, 2)


class GradualExtrapolationParams(LayerParams):
    """Gradual Extrapolation (Szandała 2021) on top of a CAM method."""

    base: CamMethod = Field(
        "gradcam",
        description="CAM method that gives the coarse map (its own defaults apply); the "
        "gradient CAMs cost one forward and backward, the others their own passes.",
    )
    reproduce_code_quirks: bool = Field(
        False,
        description="Behave like the released code: every pooling / stride-2 layer (also "
        "deeper than the map), batch-wide maxima and normalisation, raw (signed) channel sums, "
        "the standardised map clipped to ±1 (default ±5).",
    )

    def lane(self, default: Lane) -> Lane:
        """A base CAM that needs many forward passes makes the job a slow-lane job."""
        return "slow" if self.base in SLOW_CAM_BASES else default

    def passes(self, model: ModelInfo) -> Passes:
        """The base CAM's passes at its defaults; a multi-pass base adds one recording pass."""
        from app.contract.methods import parse_params  # the catalogue imports this module

        base = parse_params(self.base, {"layer": self.layer}).passes(model)
        return base if self.base not in SLOW_CAM_BASES else base + Passes(1)


SPECS: list[MethodSpec] = [
    MethodSpec(
        name="lrp",
        params=LrpParams,
        lane="fast",
        family="propagation",
        summary="Relevance of each pixel, propagated back from the target logit layer by layer.",
        paper="Bach et al., On Pixel-Wise Explanations ... by Layer-Wise Relevance Propagation, "
        "PLOS ONE 2015; Montavon et al., LRP: An Overview, 2019",
    ),
    MethodSpec(
        name="gradcam_lrp",
        params=GradCamLrpParams,
        lane="fast",
        family="propagation",
        summary="Denoised Grad-CAM(++) times the LRP map, Gaussian-blurred.",
        paper="Dhore et al., Enhancing Explainable AI: A Hybrid Approach Combining GradCAM and "
        "LRP for CNN Interpretability, arXiv 2405.12175, 2024",
    ),
    MethodSpec(
        name="gradual_extrapolation",
        params=GradualExtrapolationParams,
        lane="fast",
        family="propagation",
        summary="A coarse CAM refined through every earlier pooling layer by its activations.",
        paper="Szandała, Enhancing Deep Neural Network Saliency Visualizations with Gradual "
        "Extrapolation, IEEE Access 2021",
    ),
]
