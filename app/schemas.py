"""Request and response models of the HTTP API; their field descriptions are the API docs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.contract.jobs import JobCost, JobStatus

Style = Literal["overlay", "heatmap", "gray"]

TargetIn = StrictInt | Annotated[str, Field(min_length=1, max_length=200)]

_TARGET_DOC = (
    "Class to explain: an index (0-based) or a label of the model (see GET /v1/models); "
    "default: the model's top-1 class."
)
_PARAMS_DOC = (
    "Method parameters (see GET /v1/methods for each method's schema); unknown keys are "
    "refused. Missing keys take their defaults; the response echoes the effective values."
)
_WAIT_DOC = (
    "Seconds to wait for the result before answering 202 with the job URL; 0 answers 202 at "
    "once. Default and upper bound are set by the deployment (30 s and 120 s unless changed)."
)
_EVALUATE_DOC = (
    "Quality metrics to compute on the heatmap, from `deletion` and `insertion` (RISE paper); "
    "in a form, a comma-separated list or repeated fields."
)
_CALLBACK_DOC = (
    "A URL the service POSTs the final job JSON to when the job ends, signed with "
    "`X-Xplain-Signature: sha256=<hex HMAC-SHA256 of the body>`; its host must be one the "
    "deployment allows (XPLAIN_WEBHOOK_HOSTS). Retried with back-off until it answers 2xx."
)
_CACHE_DOC = (
    "Answer from the stored result of identical earlier work (same image bytes, model, "
    "method, effective parameters, target and metrics) without computing it again, marked "
    "`cached: true`; false always computes."
)


class ExplanationFields(BaseModel):
    """The fields of an explanation request other than the image."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str = Field("gradcam", max_length=100, description="Explanation method name.")
    model: str | None = Field(
        None,
        max_length=200,
        description="Model name; may be omitted when the service serves exactly one model.",
    )
    target: TargetIn | None = Field(None, description=_TARGET_DOC)
    params: dict[str, Any] | None = Field(None, description=_PARAMS_DOC)
    wait: float | None = Field(None, ge=0, description=_WAIT_DOC)
    evaluate: list[Annotated[str, Field(max_length=50)]] | None = Field(
        None, max_length=10, description=_EVALUATE_DOC
    )
    callback_url: str | None = Field(None, max_length=2000, description=_CALLBACK_DOC)
    cache: bool = Field(True, description=_CACHE_DOC)


class ExplanationRequest(ExplanationFields):
    """A JSON explanation request: the image travels as base64."""

    image: str = Field(
        description="The image file (PNG, JPEG, WebP, GIF, BMP or TIFF) as base64, or as a "
        "`data:image/...;base64,` URL."
    )


class ExplanationForm(BaseModel):
    """A multipart explanation request (documentation of the form fields)."""

    file: bytes = Field(
        json_schema_extra={"format": "binary"},
        description="The image file: PNG, JPEG, WebP, GIF, BMP or TIFF. Grayscale, 16-bit, "
        "CMYK, palette and transparent images are converted to RGB (transparent pixels "
        "become white); the EXIF orientation is applied.",
    )
    method: str = Field("gradcam", description="Explanation method name.")
    model: str | None = Field(None, description="Model name (optional if only one is served).")
    target: str | None = Field(None, description=_TARGET_DOC)
    params: str | None = Field(None, description="A JSON object. " + _PARAMS_DOC)
    wait: float | None = Field(None, description=_WAIT_DOC)
    evaluate: str | None = Field(None, description=_EVALUATE_DOC)
    callback_url: str | None = Field(None, description=_CALLBACK_DOC)
    cache: bool | None = Field(None, description=_CACHE_DOC)


class ProblemDetail(BaseModel):
    """An error (RFC 9457 problem details)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="URI of the problem type (served as docs).")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field("", description="What went wrong with this request, for a person.")
    instance: str | None = Field(None, description="The request path.")


class TargetOut(BaseModel):
    """The class the heatmap explains."""

    index: int = Field(description="Class index.")
    label: str = Field(description="Class label.")
    score: float = Field(description="The model's softmax probability of this class.")


class Heatmap(BaseModel):
    """The saliency map at the model's input resolution, covering the whole upload."""

    width: int = Field(description="Columns (the model's input width).")
    height: int = Field(description="Rows (the model's input height).")
    data: list[list[float]] | None = Field(
        None,
        description="`height` rows of `width` floats in [0, 1] (larger = more important), "
        "rounded to 4 decimals; null when the request asked to leave it out "
        "(`heatmap_data=false`). Resize it to the upload's size to overlay it.",
    )


class Timings(BaseModel):
    """Where the time went, in milliseconds (null where not known yet)."""

    queued_ms: float | None = Field(
        None,
        description="From creation until a worker first took it (a takeover after a "
        "worker died, or a hand-back at shutdown, does not add the time it ran there).",
    )
    compute_ms: float | None = Field(
        None, description="Compute time of the batched call that produced the heatmap."
    )
    total_ms: float | None = Field(None, description="From creation until it finished (or now).")


class ImageSize(BaseModel):
    """Size of the uploaded image after EXIF orientation."""

    width: int = Field(description="Pixels.")
    height: int = Field(description="Pixels.")


class JobLinks(BaseModel):
    """Related resources."""

    self: str = Field(description="This job.")
    heatmap_png: str = Field(description="The heatmap as PNG at the upload's size.")
    events: str = Field(description="Server-sent progress events.")


class Job(BaseModel):
    """A job: its status while it runs, and the explanation once it succeeded."""

    job_id: str = Field(description="Job id.")
    status: JobStatus = Field(
        description="`queued`, `running`, `succeeded`, `failed` or `cancelled`."
    )
    progress: float = Field(description="Fraction done, 0 to 1.")
    model: str = Field(description="Model name.")
    method: str = Field(description="Method name.")
    params: dict[str, Any] = Field(
        description="Effective method parameters (defaults filled in, the seed included); "
        "once succeeded, the values the worker used."
    )
    requested_target: int | None = Field(
        description="The class index asked for (null: the top-1 class)."
    )
    image: ImageSize = Field(description="Size of the upload.")
    created_at: datetime | None = Field(None, description="When the job was created (UTC).")
    started_at: datetime | None = Field(None, description="When a worker started it.")
    finished_at: datetime | None = Field(None, description="When it reached a final status.")
    timings: Timings = Field(description="Queue, compute and total time.")
    target: TargetOut | None = Field(None, description="The explained class (once succeeded).")
    predictions: list[TargetOut] | None = Field(
        None, description="The model's top-5 classes (once succeeded)."
    )
    heatmap: Heatmap | None = Field(None, description="The saliency map (once succeeded).")
    meta: dict[str, Any] | None = Field(
        None,
        description="What the method reports (layer used, forward passes, ...), plus the "
        "worker and the number of jobs computed in the same batched call (`group_size`).",
    )
    evaluation: dict[str, float] | None = Field(
        None, description="Requested quality metrics (`evaluate`), by name."
    )
    cost: JobCost | None = Field(
        None,
        description="The estimate admission used: forward and backward passes (the prediction "
        "and requested metrics included) and seconds of worker compute (GET /v1/methods).",
    )
    cached: bool = Field(
        False, description="The result was reused from identical earlier work (no compute)."
    )
    request_id: str | None = Field(None, description="X-Request-ID of the creating request.")
    error: ProblemDetail | None = Field(None, description="Why it failed (status `failed`).")
    links: JobLinks = Field(description="URLs of this job, its PNG and its event stream.")


class ModelOut(BaseModel):
    """A model served by at least one live worker."""

    name: str = Field(description="The name clients use.")
    architecture: str = Field("", description="Architecture (informative).")
    input_size: tuple[int, int] = Field(description="Height, width of the model input.")
    num_classes: int = Field(description="Number of classes.")
    labels: list[str] = Field(description="Class labels, by index.")
    mean: list[float] = Field(description="Per-channel normalisation mean.")
    std: list[float] = Field(description="Per-channel normalisation std.")
    default_layer: str | None = Field(description="Layer used when `layer` is not given.")
    layers: list[str] = Field(description="Dotted module names usable as the `layer` parameter.")
    unsupported: dict[str, str] = Field(
        default_factory=dict,
        description="Methods this model cannot run at their defaults, with the reason (the "
        "worker tries them at load); a layer-based one still runs with an explicit `layer`.",
    )
    workers: int = Field(description="Live workers serving it.")
    lanes: list[str] = Field(description="Cost lanes served for it (`fast`, `slow`).")
    devices: list[str] = Field(description="Devices of those workers.")


class ModelList(BaseModel):
    """The models of the live workers."""

    models: list[ModelOut] = Field(description="One entry per model name.")


class MethodOut(BaseModel):
    """An explanation method and its parameters."""

    name: str = Field(description="The name clients use as `method`.")
    family: str = Field(description="perturbation, optimisation, gradient or propagation.")
    lane: str = Field(description="Cost lane: `fast` (about one forward+backward) or `slow`.")
    summary: str = Field(description="One line on what it computes.")
    paper: str = Field(description="Where it was published.")
    params_schema: dict[str, Any] = Field(description="JSON schema of its `params`.")
    defaults: dict[str, Any] = Field(description="Default value of every parameter.")
    cost: str = Field(description="Passes one image costs, from the parameters.")


class MethodCatalog(BaseModel):
    """Every method, and the evaluation metrics a job may ask for."""

    methods: list[MethodOut] = Field(description="Every method, by family and name.")
    evaluations: dict[str, str] = Field(description="Metric name -> what it measures.")
    cost_model: str = Field(description="How a job's cost is estimated and capped.")


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = Field("ok", description="Always `ok` when the process answers.")


class Readiness(BaseModel):
    """Readiness: Redis answers and at least one worker is alive."""

    status: Literal["ready"] = Field("ready", description="`ready` (otherwise a 503 problem).")
    workers: int = Field(description="Live workers.")
    models: list[str] = Field(description="Models they serve.")


class ProblemType(BaseModel):
    """Documentation of a problem type URI."""

    type: str = Field(description="The problem type URI (this resource).")
    status: int = Field(description="HTTP status the problem comes with.")
    title: str = Field(description="Short summary.")
    description: str = Field(description="When it happens and what to do.")
