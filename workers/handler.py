"""One group of compatible jobs, from image bytes to results: stages as plain functions.

decode (PNG bytes -> RGB image) -> preprocess (resize to the model input without cropping,
normalise) -> batch on the device -> explain (one batched explainer call; a job without a
target asks for its top-1 class, which the explainer resolves from the clean forward pass it
runs anyway, and returns those logits: the prediction costs no pass of its own) -> predictions
(softmax top 5 of those logits) -> normalise (per image, min-max to [0, 1]) -> evaluate (when
asked) -> :class:`~app.contract.jobs.WorkerResult`.

Nothing here touches Redis: :func:`run_group` takes the jobs and their image bytes and returns one
:class:`Outcome` per job, a result or a problem. Failures stay with the job that caused them: an
explainer error in a group re-runs its jobs one by one, and a CUDA out-of-memory error retries
with half the batch down to one sample before it fails the job (never the process).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.contract.jobs import Prediction, WorkerResult
from app.contract.metrics import evaluation_passes
from workers.batcher import is_out_of_memory
from workers.explainers import Cancelled, ModelHandle, ProgressFn, get_explainer
from workers.explainers.base import TOP1, no_progress
from workers.explainers.postprocess import normalise, upsample
from workers.grouping import Job

log = logging.getLogger("workers.handler")

TOP_K = 5


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem object, stored as the job's ``error``.

    Types are the gateway's documented ``/problems/<slug>`` URIs (``app/problems.py``).
    """

    status: int
    title: str
    detail: str
    type: str = "about:blank"

    def as_dict(self) -> dict[str, Any]:
        """The problem+json object."""
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


def invalid(detail: str) -> Problem:
    """A request the worker cannot serve as asked (HTTP 422)."""
    return Problem(422, "Invalid request", detail, "/problems/invalid-request")


def internal(detail: str) -> Problem:
    """A failure inside the worker (HTTP 500)."""
    return Problem(500, "Internal error", detail, "/problems/internal-error")


@dataclass
class Outcome:
    """What became of one job: a result and its heatmap, or a problem."""

    job: Job
    result: WorkerResult | None = None
    heatmap: np.ndarray | None = None
    """(H, W) float32 in [0, 1] at the model's input resolution."""
    problem: Problem | None = None


# --- stages --------------------------------------------------------------------------------


def decode_image(data: bytes | None) -> Image.Image:
    """PNG (or any Pillow-readable) bytes -> RGB image; ``ValueError`` if it cannot be read."""
    if data is None:
        raise ValueError("the job's image is no longer stored")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except Exception as error:  # Pillow raises many types for corrupt data
        raise ValueError(f"the image could not be decoded ({type(error).__name__})") from error


def preprocess(image: Image.Image, handle: ModelHandle) -> Tensor:
    """Resize to the model input (the whole image, no crop) and normalise: ``(3, H, W)``."""
    height, width = handle.input_size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    tensor = pixels.permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(handle.mean).view(-1, 1, 1)
    std = torch.tensor(handle.std).view(-1, 1, 1)
    return (tensor - mean) / std


def to_batch(tensors: list[Tensor], device: torch.device) -> Tensor:
    """Stack ``(3, H, W)`` tensors into one ``(B, 3, H, W)`` batch on ``device``."""
    return torch.stack(tensors).to(device, non_blocking=True)


def predict_logits(handle: ModelHandle, inputs: Tensor) -> Tensor:
    """Logits ``(B, classes)`` of one gradient-free pass (only for an explainer that returned
    no clean logits)."""
    return handle.evaluate(inputs)


def label_of(handle: ModelHandle, index: int) -> str:
    """The class label, or the index as text when the model has no labels."""
    return handle.labels[index] if index < len(handle.labels) else str(index)


def top_predictions(handle: ModelHandle, probs: Tensor, k: int = TOP_K) -> list[Prediction]:
    """The ``k`` most probable classes of one row, most probable first."""
    scores, indices = probs.topk(min(k, probs.shape[-1]))
    return [
        Prediction(index=int(i), label=label_of(handle, int(i)), score=float(s))
        for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


def choose_targets(requested: list[int | None], probs: Tensor) -> list[int]:
    """Each row's requested class, or its top-1 class when none was asked for."""
    top1 = probs.argmax(dim=1).tolist()
    return [top if wanted is None else wanted for wanted, top in zip(requested, top1, strict=True)]


def requested_targets(requested: list[int | None], device: torch.device) -> Tensor:
    """``(B,)`` long: the requested classes, :data:`TOP1` where none was asked for."""
    values = [TOP1 if wanted is None else wanted for wanted in requested]
    return torch.tensor(values, dtype=torch.long, device=device)


def check_target(target: int | None, num_classes: int) -> None:
    """``ValueError`` when a requested class index does not exist."""
    if target is not None and not 0 <= target < num_classes:
        raise ValueError(f"target {target} is not a class index (0 to {num_classes - 1})")


def clean_maps(saliency: Tensor, size: tuple[int, int]) -> Tensor:
    """Float32 maps at the input size, non-finite values replaced by 0, min-max normalised."""
    maps = upsample(saliency.float(), size)
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return normalise(maps)


# --- explaining with failure isolation --------------------------------------------------------


@dataclass
class Explained:
    """One row's explanation: the normalised map, its metadata and the clean-input probabilities."""

    heatmap: Tensor
    meta: dict[str, Any]
    probs: Tensor


RowOutput = Explained | Problem


@dataclass
class ExplainCall:
    """One explainer call for a group: the rows are re-run alone or smaller when it fails."""

    handle: ModelHandle
    method: str
    params: dict[str, Any]
    inputs: Tensor
    targets: Tensor
    progress: ProgressFn
    job_ids: list[str] = field(default_factory=list)

    def run(self, rows: list[int], batch_size: int | None) -> dict[int, RowOutput]:
        """Explain ``rows``; a failure is confined to the rows that cause it.

        Retries happen after the ``except`` block, with the failure's traceback dropped: its
        frames would keep the failed call's activations alive through the retry (on a GPU,
        the very memory an out-of-memory retry needs).
        """
        failure: Exception | None = None
        try:
            return self._call(rows, batch_size)
        except Cancelled:
            raise
        except Exception as error:
            failure = error
        if is_out_of_memory(failure):
            failure = None
            return self._after_oom(rows, batch_size)
        if len(rows) > 1:
            failure = None
            return self._one_by_one(rows, batch_size)
        assert failure is not None
        return self._after_error(rows[0], failure)

    def _after_error(self, row: int, error: Exception) -> dict[int, RowOutput]:
        """A lone row's failure: its problem."""
        if isinstance(error, ValueError):  # ExplainerError is a ValueError
            return {row: invalid(str(error))}
        log.error(
            "event=explainer_crash job_id=%s method=%s",
            self._ids([row]),
            self.method,
            exc_info=error,
        )
        return {row: internal(f"{self.method} failed: {type(error).__name__}: {error}")}

    def _call(self, rows: list[int], batch_size: int | None) -> dict[int, RowOutput]:
        params = dict(self.params)
        if batch_size is not None:
            params["max_batch_size"] = batch_size
        whole = len(rows) == self.inputs.shape[0]
        inputs = self.inputs if whole else self.inputs[rows]
        targets = self.targets if whole else self.targets[rows]
        explanation = get_explainer(self.method)(
            self.handle, inputs, targets, **params, progress=self.progress
        )
        saliency = explanation.saliency
        if saliency.dim() != 3 or saliency.shape[0] != len(rows):
            raise RuntimeError(f"explainer returned saliency of shape {tuple(saliency.shape)}")
        extra_pass = explanation.logits is None
        logits = predict_logits(self.handle, inputs) if extra_pass else explanation.logits
        assert logits is not None
        if logits.shape[0] != len(rows):
            raise RuntimeError(f"explainer returned logits of shape {tuple(logits.shape)}")
        probs = logits.detach().float().softmax(dim=1).cpu()
        maps = clean_maps(saliency, tuple(inputs.shape[-2:]))
        out: dict[int, RowOutput] = {}
        for i, row in enumerate(rows):
            meta = dict(explanation.meta[i]) if i < len(explanation.meta) else {}
            if extra_pass:
                meta["forward_passes"] = meta.get("forward_passes", 0) + 1
            if batch_size is not None and batch_size != self.params.get("max_batch_size"):
                meta["max_batch_size_used"] = batch_size
            out[row] = Explained(maps[i], meta, probs[i])
        return out

    def _after_oom(self, rows: list[int], batch_size: int | None) -> dict[int, RowOutput]:
        log.warning(
            "event=out_of_memory job_id=%s method=%s rows=%d max_batch_size=%s",
            self._ids(rows),
            self.method,
            len(rows),
            batch_size,
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if batch_size is not None and batch_size > 1:
            return self.run(rows, batch_size // 2)
        if len(rows) > 1:
            half = len(rows) // 2
            return {**self.run(rows[:half], batch_size), **self.run(rows[half:], batch_size)}
        return {rows[0]: internal("out of memory even with one sample per forward pass")}

    def _one_by_one(self, rows: list[int], batch_size: int | None) -> dict[int, RowOutput]:
        out: dict[int, RowOutput] = {}
        for row in rows:
            out.update(self.run([row], batch_size))
        return out

    def _ids(self, rows: list[int]) -> str:
        return ",".join(self.job_ids[row] for row in rows) if self.job_ids else "?"


def evaluate_rows(
    handle: ModelHandle,
    inputs: Tensor,
    targets: Tensor,
    maps: Tensor,
    names: list[str],
    max_batch_size: int,
) -> list[dict[str, float]] | Problem:
    """Quality metrics of the given rows, or the problem that stopped them."""
    from workers.explainers.metrics import evaluate  # lazy: only jobs that ask pay for it

    try:
        return evaluate(handle, inputs, targets, maps, names, max_batch_size=max_batch_size)
    except Cancelled:
        raise
    except ValueError as error:
        return invalid(f"evaluation failed: {error}")
    except Exception as error:
        log.exception("event=evaluation_crash names=%s", names)
        return internal(f"evaluation failed: {type(error).__name__}: {error}")


# --- the group ---------------------------------------------------------------------------------


@dataclass
class GroupContext:
    """What a group run needs besides its jobs."""

    handle: ModelHandle
    num_classes: int
    default_max_batch_size: int
    worker_id: str = ""
    progress: ProgressFn = no_progress
    clock: Callable[[], float] = time.perf_counter


def run_group(ctx: GroupContext, jobs: list[Job], images: list[bytes | None]) -> list[Outcome]:
    """Run compatible ``jobs`` (same model, method, params) as one batched explainer call."""
    started = ctx.clock()
    outcomes = [Outcome(job) for job in jobs]
    rows: list[int] = []
    tensors: list[Tensor] = []
    for index, (job, data) in enumerate(zip(jobs, images, strict=True)):
        try:
            check_target(job.envelope.target, ctx.num_classes)
            tensors.append(preprocess(decode_image(data), ctx.handle))
            rows.append(index)
        except ValueError as error:
            outcomes[index].problem = invalid(str(error))
    if not rows:
        return outcomes
    live = [jobs[i] for i in rows]
    inputs = to_batch(tensors, ctx.handle.device)
    targets = requested_targets([job.envelope.target for job in live], inputs.device)
    params = live[0].params
    call = ExplainCall(
        ctx.handle, live[0].method, params, inputs, targets, ctx.progress, [j.job_id for j in live]
    )
    explained = call.run(list(range(len(live))), params.get("max_batch_size"))
    chosen = [_chosen(job.envelope.target, explained[i]) for i, job in enumerate(live)]
    evaluations = _evaluate(ctx, live, inputs, chosen, explained, params)
    compute_ms = (ctx.clock() - started) * 1000.0
    for i, index in enumerate(rows):
        output, evaluation = explained[i], evaluations.get(i)
        if isinstance(output, Problem) or isinstance(evaluation, Problem):
            outcomes[index].problem = output if isinstance(output, Problem) else evaluation
            continue
        target = chosen[i]
        meta = output.meta
        if evaluation:
            passes = evaluation_passes((inputs.shape[-2], inputs.shape[-1]), len(evaluation))
            meta = {**meta, "forward_passes": meta.get("forward_passes", 0) + passes}
            meta["evaluation_forward_passes"] = passes
        outcomes[index].heatmap = output.heatmap.cpu().numpy().astype("<f4", copy=False)
        outcomes[index].result = WorkerResult(
            job_id=live[i].job_id,
            model=live[i].model,
            method=live[i].method,
            params=params,
            target=Prediction(
                index=target,
                label=label_of(ctx.handle, target),
                score=float(output.probs[target]),
            ),
            predictions=top_predictions(ctx.handle, output.probs),
            heatmap_height=int(output.heatmap.shape[0]),
            heatmap_width=int(output.heatmap.shape[1]),
            meta=meta,
            evaluation=evaluation or {},
            compute_ms=compute_ms,
            group_size=len(live),
            worker=ctx.worker_id,
        )
    return outcomes


def _chosen(requested: int | None, output: RowOutput) -> int:
    """The class a row explained: as requested, else its clean top-1 (-1 for a failed row)."""
    if requested is not None:
        return requested
    return int(output.probs.argmax()) if isinstance(output, Explained) else TOP1


def _evaluate(
    ctx: GroupContext,
    jobs: list[Job],
    inputs: Tensor,
    chosen: list[int],
    explained: dict[int, RowOutput],
    params: dict[str, Any],
) -> dict[int, dict[str, float] | Problem]:
    """Metrics for the rows that asked for them (rows asking the same names run together)."""
    by_names: dict[tuple[str, ...], list[int]] = {}
    for row, job in enumerate(jobs):
        if job.envelope.evaluate and isinstance(explained[row], Explained):
            by_names.setdefault(tuple(job.envelope.evaluate), []).append(row)
    out: dict[int, dict[str, float] | Problem] = {}
    batch = params.get("max_batch_size") or ctx.default_max_batch_size
    targets = torch.tensor(chosen, dtype=torch.long, device=inputs.device)
    for names, rows in by_names.items():
        maps = torch.stack([explained[row].heatmap for row in rows])  # type: ignore[union-attr]
        scores = evaluate_rows(
            ctx.handle, inputs[rows], targets[rows], maps, list(names), int(batch)
        )
        for i, row in enumerate(rows):
            out[row] = scores if isinstance(scores, Problem) else dict(scores[i])
    return out
