"""Parameters of the perturbation family: occlusion, FMO, RISE, LIME."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, model_validator

from app.contract.cost import Passes
from app.contract.jobs import ModelInfo
from app.contract.params.common import BatchParams, MethodSpec, SeedParams, scaled_pixels

Fill = Literal["zero", "blur", "local_mean"]
Score = Literal["prob", "logit"]
Precision = Literal["float32", "float16", "bfloat16"]

FILL_DOC = (
    "Occluder content: `zero` (0 in model-input space, the dataset-mean colour), `blur` "
    "(Gaussian-blurred image, σ = 10 px at 224 px), `local_mean` (mean colour of the hidden "
    "region)."
)


class PerturbationParams(BatchParams):
    """Shared by the perturbation methods: the batching knob and the forward precision."""

    precision: Precision = Field(
        "float32",
        description="Forward-pass precision on CUDA (`float16`/`bfloat16` via autocast: faster, "
        "maps differ slightly); CPU workers always use float32.",
    )


OCCLUSION_WINDOW, OCCLUSION_STRIDE = 32, 8
"""Occlusion's default window side and stride, pixels at 224 px."""


class OcclusionParams(PerturbationParams):
    """Sliding-window occlusion (Zeiler & Fergus)."""

    window: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Side of the square occluder, in pixels; default 32 px at 224 px, scaled "
        "with the model input's shorter side (16 px at 112 px).",
    )
    stride: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Step of the sliding window, in pixels; default 8 px at 224 px, scaled "
        "like `window`.",
    )
    fill: Fill = Field("zero", description=FILL_DOC)
    score: Score = Field("prob", description="Drop of the target's softmax `prob` or `logit`.")

    def geometry(self, model: ModelInfo) -> tuple[int, int]:
        """(window, stride) in pixels on this model's input: the given ones or the scaled
        defaults."""
        short = min(model.input_size)
        return (
            self.window or scaled_pixels(OCCLUSION_WINDOW, short),
            self.stride or scaled_pixels(OCCLUSION_STRIDE, short),
        )

    def passes(self, model: ModelInfo) -> Passes:
        """The clean pass and one per window."""
        window, stride = self.geometry(model)
        rows, cols = (len(window_starts(side, window, stride)) for side in model.input_size)
        return Passes(1 + rows * cols)

    def check_model(self, model: ModelInfo) -> None:
        """The window must fit in the model input."""
        super().check_model(model)
        window, _ = self.geometry(model)
        if window > min(model.input_size):
            raise ValueError(f"window {window} is larger than the model input {model.input_size}")


class FmoParams(PerturbationParams):
    """Fast Multi-resolution Occlusion — our labelled reconstruction (METHODS §1)."""

    grids: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Cells along the shorter side at each level, coarse to fine (e.g. "
        "[4, 8, 16]); default: 4·2^l for `levels` levels.",
    )
    levels: int = Field(3, ge=1, le=6, description="Levels when `grids` is not given.")
    min_cell: int = Field(
        4, ge=1, le=256, description="Levels whose cells would be smaller (px) are dropped."
    )
    window: int = Field(2, ge=1, le=8, description="Occluder side in cells (stride: one cell).")
    border: bool = Field(
        True, description="Also probe windows overhanging the border (clipped), as HiPe does."
    )
    score: Score = Field("prob", description="Drop of the target's softmax `prob` or `logit`.")
    fill: Fill = Field("zero", description=FILL_DOC)
    select: Literal["midrange", "mean", "topk", "all"] = Field(
        "midrange",
        description="Which windows of the next level to probe: statistic ≥ mid-range of the "
        "current map, ≥ its mean, the `topk` fraction, or all (exhaustive).",
    )
    select_stat: Literal["max", "mean"] = Field(
        "max", description="Statistic of the current map over a candidate window."
    )
    topk: float = Field(0.25, gt=0, le=1, description="Fraction kept by `select = topk`.")
    combine: Literal["refine", "sum", "finest", "depth"] = Field(
        "refine",
        description="`refine`: finer levels replace coarser where probed, mean over levels; "
        "`sum`: accumulate every drop (HiPe); `finest`: the last refined level; `depth`: "
        "pixels probed at more levels first, then by their finest drop.",
    )
    smoothing: float = Field(
        0.0, ge=0, le=8, description="Gaussian σ in finest cells applied to the map (0: off)."
    )

    @model_validator(mode="after")
    def _grids_increase(self) -> FmoParams:
        grids = self.grids or ()
        if any(b <= a for a, b in itertools.pairwise(grids)) or any(g < 1 for g in grids):
            raise ValueError("grids must be positive and increase from coarse to fine")
        return self

    def passes(self, model: ModelInfo) -> Passes:
        """The clean pass and every window of every level (the exhaustive bound)."""
        return Passes(1 + sum(fmo_level_windows(model.input_size, self)))

    def check_model(self, model: ModelInfo) -> None:
        """At least one level must have cells of ``min_cell`` px and room for a window."""
        super().check_model(model)
        short = min(model.input_size)
        grids = self.grids or tuple(4 * 2**level for level in range(self.levels))
        if not any(short / g >= self.min_cell and g >= self.window for g in grids):
            raise ValueError(
                f"no FMO level fits the model input {model.input_size}: grids {list(grids)} "
                f"with cells of at least {self.min_cell} px and windows of {self.window} cells"
            )


class RiseParams(PerturbationParams, SeedParams):
    """RISE: random smooth masks weighted by the target probability."""

    n_masks: int = Field(4000, ge=1, le=100_000, description="Number of random masks N.")
    cells: int = Field(7, ge=1, le=256, description="Grid cells per side s of each mask.")
    p: float = Field(0.5, gt=0, le=1, description="Probability that a cell is kept.")

    def passes(self, model: ModelInfo) -> Passes:
        """The clean pass and one per mask."""
        return Passes(1 + self.n_masks)

    def check_model(self, model: ModelInfo) -> None:
        """A cell must be at least one pixel."""
        super().check_model(model)
        if self.cells > min(model.input_size):
            raise ValueError(f"cells {self.cells} exceed the model input {model.input_size}")


class LimeParams(PerturbationParams, SeedParams):
    """LIME: a weighted linear surrogate over superpixels."""

    num_samples: int = Field(1000, ge=2, le=100_000, description="Perturbed samples (forwards).")
    segmentation: Literal["quickshift", "slic"] = Field(
        "slic",
        description="Superpixels: `slic` (`segments` superpixels, whatever the input size; "
        "default) or `quickshift` (kernel 4 px, max_dist 200, ratio 0.2, lime's default).",
    )
    segments: int = Field(
        300,
        ge=2,
        le=2000,
        description="Superpixels asked of `slic` (default 300: a superpixel of 1/300 of the "
        "image, smaller than the objects, at any input size).",
    )
    kernel_width: float = Field(
        0.25, gt=0, le=100, description="Width of the exponential kernel on cosine distance."
    )
    alpha: float = Field(1.0, gt=0, le=1e6, description="Ridge penalty of the surrogate.")
    fill: Fill = Field(
        "blur",
        description="What a hidden superpixel shows: a blurred copy (`blur`, σ 10 px at 224 px, "
        "scaled; default), 0 in model-input space (`zero`, the dataset's mean colour) or its "
        "own mean colour (`local_mean`, lime's default, which hides nothing of a flat-coloured "
        "object).",
    )
    score: Score = Field("prob", description="Regress the target's softmax `prob` or `logit`.")

    def passes(self, model: ModelInfo) -> Passes:
        """One per sample (sample 0 is the clean image)."""
        return Passes(self.num_samples)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Occlusion's window offsets along one axis: every ``stride``, plus one flush with the end."""
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def fmo_level_windows(size: tuple[int, int], params: FmoParams) -> list[int]:
    """Windows of each FMO level that fits ``size`` (the worker's ``plan_grids`` levels)."""
    counts = list(params.grids or [4 * 2**level for level in range(params.levels)])
    short, long_ = min(size), max(size)
    windows = []
    for cells in counts:
        if short / cells < params.min_cell or cells < params.window:
            continue
        other = max(params.window, round(cells * long_ / short))
        extra = params.window - 1
        per_axis = [g + extra if params.border else g - extra for g in (cells, other)]
        windows.append(per_axis[0] * per_axis[1])
    return windows


SPECS: list[MethodSpec] = [
    MethodSpec(
        name="occlusion",
        params=OcclusionParams,
        lane="slow",
        family="perturbation",
        summary="Score drop when a sliding square hides each region.",
        paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    ),
    MethodSpec(
        name="fmo",
        params=FmoParams,
        lane="slow",
        family="perturbation",
        summary="Coarse-to-fine occlusion that re-probes only the regions that mattered "
        "(a labelled reconstruction: the paper's full text is not available).",
        paper="Behzadi-Khormouji & Rostami, Fast multi-resolution occlusion, Applied "
        "Intelligence 2021",
    ),
    MethodSpec(
        name="rise",
        params=RiseParams,
        lane="slow",
        family="perturbation",
        summary="Average of random smooth masks weighted by the target probability.",
        paper="Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of "
        "Black-box Models, BMVC 2018",
    ),
    MethodSpec(
        name="lime",
        params=LimeParams,
        lane="slow",
        family="perturbation",
        summary="Weighted ridge surrogate over superpixels switched on and off.",
        paper="Ribeiro, Singh & Guestrin, 'Why Should I Trust You?', KDD 2016",
    ),
]
