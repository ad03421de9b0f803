"""Parameters of the optimisation family: meaningful perturbation, extremal perturbation,
NeuroMask.

Defaults follow ``METHODS.md`` (§2, §6.10, §6.11) and, through it, the authors' code; each
field says where its default comes from. Every method has an explicit iteration budget
(``iterations``) and an optional early stop, off by default so that defaults reproduce the
papers' settings.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from app.contract.cost import Passes
from app.contract.jobs import ModelInfo
from app.contract.params.common import BatchParams, MethodSpec, SeedParams, scaled_pixels

MAX_KERNEL_REACH = 22
"""Grid cells a smooth mask's kernel may reach from a pixel, ``1 + ⌈σ / step⌉`` (TorchRay's
defaults: 4; ``step = 1, σ = 21``: 22, the finest mask worth its cost)."""

CIRCLE_INIT_PASSES = 35
"""Forward passes of meaningful perturbation's disc search beyond the clean pass (35 radii)."""

Area = Annotated[float, Field(gt=0, lt=1)]


class OptimisationParams(BatchParams):
    """An optimisation loop: early stopping (``max_batch_size`` = rows optimised together)."""

    early_stop: bool = Field(
        False,
        description="Stop a mask early when its loss stops improving (off: run every "
        "iteration, as the papers do).",
    )
    patience: int = Field(
        50, ge=1, le=100_000, description="Early stop: iterations without improvement."
    )
    tolerance: float = Field(
        1e-4,
        ge=0,
        le=1,
        description="Early stop: an improvement is a loss below (best − tolerance·|best|).",
    )


class MeaningfulPerturbationParams(OptimisationParams, SeedParams):
    """Meaningful perturbation, deletion game (Fong & Vedaldi, ICCV 2017): the authors'
    `optimize_mask.py` defaults except the L1 weight (1e-2, not 1e-4; why in
    `workers/explainers/optimisation/meaningful_perturbation.py`)."""

    iterations: int = Field(
        300,
        ge=1,
        le=20_000,
        description="Adam iterations; 300 in the authors' code `optimize_mask.py` "
        "(the paper quotes 500).",
    )
    learning_rate: float = Field(0.1, gt=0, le=10, description="Adam step size (code: 0.1).")
    l1_lambda: float = Field(
        1e-2,
        ge=0,
        le=100,
        description="Weight of λ1·Σ|1 − m| over the mask cells (28×28 at any input size); "
        "default 1e-2, the code's 1e-4 lets a model trained to tolerate occlusion delete "
        "large regions for free (see the module docstring).",
    )
    tv_lambda: float = Field(
        1e-2, ge=0, le=100, description="Weight of λ2·TV_β(m) over the mask cells (code: 1e-2)."
    )
    tv_beta: float = Field(3.0, ge=1, le=10, description="Exponent β of the TV term (code: 3).")
    mask_scale: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Input pixels per mask cell: the mask is (H/scale)×(W/scale); default the "
        "code's 8 px at 224 px scaled with the input's shorter side (28×28 cells at any size).",
    )
    mask_blur: float | None = Field(
        None,
        ge=0,
        le=100,
        description="σ (pixels) of the Gaussian blur of the up-sampled mask; default the "
        "code's 5 px at 224 px, scaled with the input.",
    )
    blur_sigma: float | None = Field(
        None,
        ge=0,
        le=100,
        description="σ (pixels) of the Gaussian blur that makes the deleted content; default "
        "the code's 10 px at 224 px, scaled with the input.",
    )
    jitter: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Each iteration the image is resized to (H+jitter)×(W+jitter) and cropped "
        "at a random offset; default the code's 4 px at 224 px, scaled (0 = off).",
    )
    init: Literal["circle", "random"] = Field(
        "circle",
        description="`circle`: start from the smallest centred blurred disc whose deletion "
        "brings the score within 1% of deleting everything (code default); `random`: uniform "
        "in [0, 1].",
    )

    def passes(self, model: ModelInfo) -> Passes:
        """The clean pass, the disc search, then a forward and backward per iteration."""
        search = CIRCLE_INIT_PASSES if self.init == "circle" else 0
        return Passes(1 + search + self.iterations, self.iterations)

    def check_model(self, model: ModelInfo) -> None:
        """The mask must have at least one cell per side."""
        super().check_model(model)
        mask_scale = self.mask_scale or scaled_pixels(8, min(model.input_size))
        if mask_scale > min(model.input_size):
            raise ValueError(
                f"mask_scale {mask_scale} is larger than the model input {model.input_size}"
            )


class ExtremalPerturbationParams(OptimisationParams):
    """Extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019; TorchRay defaults)."""

    iterations: int = Field(
        800, ge=1, le=20_000, description="SGD iterations (TorchRay `max_iter`: 800)."
    )
    areas: tuple[Area, ...] = Field(
        (0.1,),
        min_length=1,
        max_length=16,
        description="Mask areas, fractions of the image in (0, 1), optimised together "
        "(TorchRay default [0.1]; pointing game VOC [0.025, 0.05, 0.1, 0.2]).",
    )
    variant: Literal["preservation", "deletion"] = Field(
        "preservation",
        description="`preservation`: keep the area that maximises the target logit (blur the "
        "rest); `deletion`: blur the area that minimises it.",
    )
    step: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Pitch (pixels) of the mask's parameter grid; default TorchRay's 7 px at "
        "224 px, scaled with the input's shorter side (4 px at 112).",
    )
    sigma: float | None = Field(
        None,
        gt=0,
        le=512,
        description="Width (pixels) of the smooth-mask kernel; default TorchRay's 21 px at "
        "224 px, scaled with the input's shorter side.",
    )
    levels: int = Field(8, ge=2, le=64, description="Levels of the blur pyramid (TorchRay: 8).")
    max_blur: float | None = Field(
        None,
        gt=0,
        le=256,
        description="σ (pixels) of the most blurred level; default TorchRay's 20 px at 224 px, "
        "scaled with the input's shorter side.",
    )
    learning_rate: float = Field(0.01, gt=0, le=10, description="SGD step size (TorchRay: 0.01).")
    momentum: float = Field(
        0.9, ge=0, lt=1, description="SGD momentum, also the dampening (TorchRay: 0.9)."
    )
    area_lambda: float = Field(
        100.0,
        ge=0,
        le=1e6,
        description="Initial weight λ of the area penalty (TorchRay: 300, which overrides the "
        "reward on models whose logits are smaller than an ImageNet network's; see the module).",
    )
    area_growth: float = Field(
        1.0035,
        ge=1,
        le=1.1,
        description="Factor by which λ grows every iteration (TorchRay: 1.0035).",
    )
    jitter: bool = Field(
        True,
        description="Flip the perturbed input horizontally every other iteration (TorchRay).",
    )
    smooth: float = Field(
        0.09,
        ge=0,
        le=1,
        description="σ of the Gaussian applied to the summed masks, as a fraction of the "
        "shorter image side (TorchRay's pointing benchmark: 0.09; 0 = none).",
    )

    def passes(self, model: ModelInfo) -> Passes:
        """The clean pass, then a forward and backward per iteration and area."""
        steps = self.iterations * len(self.areas)
        return Passes(1 + steps, steps)

    @model_validator(mode="after")
    def _kernel_reach(self) -> ExtremalPerturbationParams:
        if self.step is not None and self.sigma is not None:
            _check_reach(self.sigma, self.step)
        return self

    def check_model(self, model: ModelInfo) -> None:
        """The parameter grid must have at least one cell per side, the kernel a bounded reach."""
        super().check_model(model)
        short = min(model.input_size)
        step = self.step or scaled_step(short)
        if step > short:
            raise ValueError(f"step {step} is larger than the model input {model.input_size}")
        _check_reach(self.sigma or TORCHRAY_SIGMA * short / 224, step)


TORCHRAY_STEP, TORCHRAY_SIGMA = 7, 21.0
"""TorchRay's smooth-mask grid pitch and kernel width, pixels at 224 px."""


def scaled_step(short_side: int) -> int:
    """TorchRay's 7 px grid pitch at 224 px, scaled to an input's shorter side."""
    return scaled_pixels(TORCHRAY_STEP, short_side)


def _check_reach(sigma: float, step: int) -> None:
    reach = 1 + math.ceil(sigma / step)
    if reach > MAX_KERNEL_REACH:
        raise ValueError(
            f"sigma {sigma:g} over step {step} reaches {reach} grid cells around "
            f"each pixel (at most {MAX_KERNEL_REACH}): raise `step` or lower `sigma`"
        )


class NeuroMaskParams(OptimisationParams, SeedParams):
    """NeuroMask (Alzantot et al. 2019): the authors' `NeuroMask` class defaults, except the fill,
    the initial range, the mask blur and the growing sparsity weight (the paper's code:
    `fill=black, init_limit=10, mask_sigma=0, sparsity_growth=1, keep_prediction=0`; why in
    `workers/explainers/optimisation/neuromask.py`)."""

    iterations: int = Field(
        1000, ge=1, le=20_000, description="RMSProp iterations (code `explain`: 1000)."
    )
    learning_rate: float = Field(0.03, gt=0, le=10, description="RMSProp step size (code: 0.03).")
    temperature: float = Field(
        0.3, gt=0, le=100, description="T in m = sigmoid(W/T) (code: 0.3; CIFAR demo: 1)."
    )
    weight_limit: float = Field(
        10.0,
        gt=0,
        le=1000,
        description="W starts uniform in (−limit, limit); the L1 term is mean|W + limit| "
        "(code: 10).",
    )
    lambda_pred: float = Field(
        50.0,
        ge=0,
        le=1e6,
        description="Weight of the cross-entropy of the masked image (class default 50; "
        "ImageNet demo 0.4).",
    )
    lambda_sparse: float = Field(
        16.0,
        ge=0,
        le=1e6,
        description="Weight of the sparsity term (class default 16; ImageNet demo 0.35).",
    )
    lambda_smooth: float = Field(
        3.0,
        ge=0,
        le=1e6,
        description="Weight of the Laplacian smoothness term (class default 3; ImageNet demo "
        "0.03).",
    )
    laplacian: Literal[3, 5] = Field(
        5, description="Size of the Laplacian filter: 5 (ImageNet, code default) or 3 (CIFAR)."
    )
    rms_init: float = Field(
        1.0,
        ge=0,
        le=1e6,
        description="Initial RMSProp mean-square accumulator: 1 as TensorFlow 1's "
        "RMSPropOptimizer used by the authors; 0 as torch.optim.RMSprop (moves from the "
        "first iteration).",
    )
    fill: Literal["blur", "black"] = Field(
        "blur",
        description="What a masked-out pixel shows: a blurred copy of the image (σ 10 px at "
        "224 px, scaled; default) or black (the paper's code).",
    )
    init_limit: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="W starts uniform in (−init_limit, init_limit): 1 (default) starts every "
        "pixel where the prediction's gradient reaches it; the paper's code starts at "
        "weight_limit (10), a saturated mask.",
    )
    mask_sigma: float = Field(
        4.0,
        ge=0,
        le=64,
        description="Gaussian blur of W before the sigmoid, in pixels at 224 px (scaled with "
        "the input): the mask cannot keep isolated pixels. 0 = the paper's per-pixel mask.",
    )
    sparsity_growth: float = Field(
        25.0,
        ge=1,
        le=1e4,
        description="lambda_sparse grows geometrically to this multiple of itself by the last "
        "iteration, so the mask sheds the context it does not need (1 = constant, the paper).",
    )
    keep_prediction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="The map is the last mask whose masked image kept at least this share of "
        "the target probability the image adds to its fill alone (the final mask if none did); "
        "0 = the final mask, the paper.",
    )
    jitter: int = Field(
        0,
        ge=0,
        le=32,
        description="Each iteration shows the image shifted against the mask by up to this "
        "many pixels at 224 px (scaled with the input), so a mask cannot keep the class with "
        "pixel-exact fragments off the object. 0 = the paper's fixed alignment (default: "
        "8 helped on one evaluation model and not on the others, see the module docstring).",
    )
    cap_prediction: bool = Field(
        True,
        description="The prediction term stops rewarding a mask once the masked image is as "
        "confident as the clean image (max(0, CE − CE_clean)), so a mask cannot buy more "
        "confidence than the image has with a few pixels off the object. False: the paper's "
        "plain cross-entropy (figures in the module docstring).",
    )

    def passes(self, model: ModelInfo) -> Passes:
        """The clean pass, the fill's alone (when the weight grows or the cap is on), then a
        forward and backward per iteration."""
        ramps = self.keep_prediction > 0 and self.sparsity_growth > 1
        fill_pass = 1 if ramps or self.cap_prediction else 0
        return Passes(1 + fill_pass + self.iterations, self.iterations)

    def check_model(self, model: ModelInfo) -> None:
        """The Laplacian filter must fit in the input."""
        super().check_model(model)
        if self.laplacian > min(model.input_size):
            raise ValueError(f"the model input {model.input_size} is smaller than the filter")


SPECS: list[MethodSpec] = [
    MethodSpec(
        name="meaningful_perturbation",
        params=MeaningfulPerturbationParams,
        lane="slow",
        family="optimisation",
        summary="Smallest smooth blurred region whose deletion destroys the class score.",
        paper="Fong & Vedaldi, Interpretable Explanations of Black Boxes by Meaningful "
        "Perturbation, ICCV 2017",
    ),
    MethodSpec(
        name="extremal_perturbation",
        params=ExtremalPerturbationParams,
        lane="slow",
        family="optimisation",
        summary="Smooth masks of fixed areas that best preserve (or delete) the class score.",
        paper="Fong, Patrick & Vedaldi, Understanding Deep Networks via Extremal Perturbations "
        "and Smooth Masks, ICCV 2019",
    ),
    MethodSpec(
        name="neuromask",
        params=NeuroMaskParams,
        lane="slow",
        family="optimisation",
        summary="Sparse, smooth full-resolution soft mask that keeps the model's decision.",
        paper="Alzantot, Widdicombe, Julier & Srivastava, NeuroMask: Explaining Predictions "
        "of Deep Neural Networks through Mask Learning, SMARTCOMP 2019",
    ),
]
