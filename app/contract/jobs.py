"""The job contract between gateway and workers: envelope, record, events, result, announcement.

JSON only, never pickle. The envelope carries a ``schema_version``; a worker refuses (fails) an
envelope of a version it does not know instead of guessing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class JobStatus(StrEnum):
    """Life cycle of a job."""

    queued = "queued"
    """In a lane stream, not yet claimed (or claimed and waiting for its group)."""
    running = "running"
    """A worker is computing it."""
    succeeded = "succeeded"
    """The result and heatmap are stored."""
    failed = "failed"
    """It ended with an error (``error`` holds a problem+json object)."""
    cancelled = "cancelled"
    """A client cancelled it; a worker drops it at its next check."""

    @property
    def final(self) -> bool:
        """Whether no further transition can happen."""
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobCost(BaseModel):
    """A job's estimated cost (one image): ``app.contract.cost``."""

    forward_passes: int = Field(description="Forward passes, the prediction included.")
    backward_passes: int = Field(description="Backward passes.")
    seconds: float = Field(
        description="Estimated compute seconds on a worker serving the model (its measured "
        "per-image pass times; 0 when no worker announced timings)."
    )


class JobEnvelope(BaseModel):
    """What goes into a lane stream (field ``envelope`` of the stream entry), as JSON."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    job_id: str
    lane: Literal["fast", "slow"]
    model: str
    method: str
    params: dict[str, Any] = Field(description="Effective, validated method parameters.")
    target: int | None = Field(None, description="Class index; None means the top-1 class.")
    evaluate: list[str] = Field(default_factory=list)
    enqueued_at: float = Field(description="Unix seconds.")
    cost: JobCost | None = Field(None, description="The gateway's estimate (app.contract.cost).")
    request_id: str | None = Field(None, description="The X-Request-ID of the creating request.")


class JobEvent(BaseModel):
    """A message on a job's events channel: progress while running, then the final status."""

    job_id: str
    status: JobStatus
    progress: float = 0.0
    done: int = 0
    total: int = 0


class Prediction(BaseModel):
    """One class of the model's answer."""

    index: int
    label: str
    score: float = Field(description="Softmax probability.")


class WorkerResult(BaseModel):
    """What a worker stores under the result key (the heatmap floats are stored beside it)."""

    job_id: str
    model: str
    method: str
    params: dict[str, Any]
    target: Prediction
    predictions: list[Prediction]
    heatmap_height: int
    heatmap_width: int
    meta: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, float] = Field(default_factory=dict)
    compute_ms: float
    group_size: int = Field(1, description="Jobs computed together in one batched call.")
    worker: str = ""


class ModelInfo(BaseModel):
    """What a worker announces about a model it serves."""

    name: str
    input_size: tuple[int, int] = Field(description="Height, width of the model input.")
    num_classes: int
    labels: list[str]
    mean: list[float]
    std: list[float]
    default_layer: str | None
    layers: list[str] = Field(description="Dotted names usable as `layer`.")
    architecture: str = ""
    layer_channels: dict[str, int] = Field(
        default_factory=dict,
        description="Channels of each layer with a spatial output ((B, C, h, w), channels-last "
        "or transformer tokens on a patch grid).",
    )
    forward_ms: float = Field(
        0.0,
        description="Measured at warm-up: one image's share of a gradient-free forward pass "
        "at the worker's batch size, in ms (0: not measured).",
    )
    gradient_ms: float = Field(
        0.0,
        description="Measured at warm-up: one forward + backward pass of one image, in ms.",
    )
    max_image_pixels: int | None = Field(
        None, description="Largest upload (width x height) for this model (None: the gateway's)."
    )
    unsupported: dict[str, str] = Field(
        default_factory=dict,
        description="Methods this model cannot run at their defaults, with the reason (found "
        "by the worker at load); a layer-based one still runs with an explicit `layer`.",
    )


class WorkerAnnouncement(BaseModel):
    """A worker's heartbeat payload."""

    worker_id: str
    lanes: list[str]
    device: str
    models: list[ModelInfo]
    started_at: float
    jobs_done: int = 0


class RecordField:
    """Field names of the job record hash."""

    status = "status"
    model = "model"
    method = "method"
    lane = "lane"
    params = "params"
    target = "target"
    created_at = "created_at"
    started_at = "started_at"
    finished_at = "finished_at"
    progress = "progress"
    attempts = "attempts"
    error = "error"
    width = "width"
    height = "height"
    worker = "worker"
    cancel_requested = "cancel_requested"
    stream_id = "stream_id"
    cost = "cost"
    owner = "owner"
    """The identity (API key name) that created the job."""
    request_id = "request_id"
    callback_url = "callback_url"
    cache_key = "cache_key"
    """Where a success is recorded for reuse (absent: the client opted out)."""
    cached = "cached"
    """``1`` when the result was reused from an identical earlier job."""
    first_started_at = "first_started_at"
    """When a worker first started it (``queued_ms`` ends there, whatever happened after)."""
