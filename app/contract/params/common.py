"""Base classes and shared fields of method parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.contract.cost import Passes
from app.contract.jobs import ModelInfo


class MethodParams(BaseModel):
    """Parameters of one method: frozen, unknown keys refused, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def check_model(self, model: ModelInfo) -> None:
        """Raise ``ValueError`` with a clear message if these parameters cannot fit ``model``.

        Called by the gateway before a job is queued, with what the workers announced about
        the model. The default checks a ``layer`` field, if any, against the model's layers.
        """
        layer = getattr(self, "layer", None)
        if isinstance(layer, str) and layer not in model.layers:
            raise ValueError(
                f"layer {layer!r} is not a layer of model {model.name!r}; "
                f"see GET /v1/models for its layers (default {model.default_layer!r})"
            )

    def lane(self, default: Lane) -> Lane:
        """The cost lane of a job with these parameters (the method's own, unless overridden)."""
        return default

    def passes(self, model: ModelInfo) -> Passes:
        """Forward and backward passes one image costs on ``model``, the prediction included
        (an upper bound where the method decides on the way): the cost model's input."""
        raise NotImplementedError(f"{type(self).__name__} does not estimate its passes")


class LayerParams(MethodParams):
    """A method that reads one layer's activations."""

    layer: str | None = Field(
        None,
        description="Dotted module name (e.g. `layer4`); default: the model's default layer.",
        max_length=200,
    )


class BatchParams(MethodParams):
    """A method that evaluates the model many times, in chunks."""

    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Samples per forward pass (the one batching knob); default: the worker's.",
    )


class SeedParams(MethodParams):
    """A random method: the same seed gives the same heatmap."""

    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random draw.")


Lane = Literal["fast", "slow"]
Family = Literal["perturbation", "optimisation", "gradient", "propagation"]


def layer_channels(model: ModelInfo, layer: str | None) -> int:
    """Channels of ``layer`` (None: the default layer) as the workers announced them; the
    widest announced layer when unknown."""
    name = layer or model.default_layer
    if name and name in model.layer_channels:
        return model.layer_channels[name]
    return max(model.layer_channels.values(), default=512)


@dataclass(frozen=True)
class MethodSpec:
    """A method as clients see it: name, parameters, cost lane and provenance."""

    name: str
    params: type[MethodParams]
    lane: Lane
    family: Family
    summary: str
    paper: str

    @property
    def grouped(self) -> bool:
        """Whether compatible jobs run as one call: methods of gradient passes batch them that
        way; methods of gradient-free passes run one job per call and share forward passes
        with every other job through the worker's batcher instead."""
        return self.family != "perturbation" and self.name != "scorecam"


def scaled_pixels(pixels_at_224: int, short_side: int) -> int:
    """A whole-pixel size given at 224 px, scaled to an input's shorter side, at least 1 (as
    the worker's ``workers.explainers.scaling.at_input_int`` does)."""
    return max(1, round(pixels_at_224 * short_side / 224))
