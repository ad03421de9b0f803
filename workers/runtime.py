"""What a worker loads once at start: its device, its models (warmed up) and their facts."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from app.contract.jobs import ModelInfo, WorkerAnnouncement
from app.settings import Settings
from workers.explainers import ModelHandle
from workers.explainers.forward import forward_logits, prefers_channels_last

log = logging.getLogger("workers.runtime")


@dataclass(frozen=True)
class Runtime:
    """The loaded models of one worker process and the knobs its jobs use."""

    worker_id: str
    device: torch.device
    models: dict[str, ModelHandle]
    infos: dict[str, ModelInfo]
    lanes: tuple[str, ...]
    max_batch_size: int
    started_at: float = field(default_factory=time.time)

    def announcement(self, jobs_done: int = 0) -> WorkerAnnouncement:
        """The heartbeat payload: who serves what, where."""
        return WorkerAnnouncement(
            worker_id=self.worker_id,
            lanes=list(self.lanes),
            device=str(self.device),
            models=list(self.infos.values()),
            started_at=self.started_at,
            jobs_done=jobs_done,
        )


def choose_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU; otherwise as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available")
    return device


def default_worker_id() -> str:
    """``host-pid``: unique among live workers, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_lanes(text: str) -> tuple[str, ...]:
    """``"fast,slow"`` -> ``("fast", "slow")``; unknown lanes are refused."""
    from app.contract.keys import LANES

    lanes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [lane for lane in lanes if lane not in LANES]
    if not lanes or unknown:
        raise ValueError(f"lanes must be a comma-separated subset of {LANES}, got {text!r}")
    return tuple(lane for lane in LANES if lane in lanes)


def warm_up_gradients(handle: ModelHandle) -> None:
    """One forward and backward pass, so the first gradient job pays no first-call costs
    (nothing for a model that gives no gradients, as an ONNX graph)."""
    probe = torch.zeros(1, len(handle.mean), *handle.input_size, device=handle.device)
    with torch.inference_mode(False), torch.enable_grad():
        x = probe.requires_grad_(True)
        score = handle.model(x).float().max(dim=1).values.sum()
        if score.requires_grad:
            torch.autograd.grad(score, x)


def measure_timings(handle: ModelHandle, batch_size: int, repeats: int = 2) -> tuple[float, float]:
    """``(forward_ms, gradient_ms)`` per image: a gradient-free forward pass at ``batch_size``
    (16 at most on a CPU, where the per-image cost hardly depends on it), and one forward +
    backward pass of one image; best of ``repeats`` after a warm-up."""
    device = handle.device
    batch = batch_size if device.type == "cuda" else min(batch_size, 16)
    probe = torch.zeros(batch, len(handle.mean), *handle.input_size, device=device)
    channels_last = prefers_channels_last(handle.model)

    def timed(action: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            action()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - started)
        return best * 1000.0

    forward_logits(handle.model, probe, "float32", channels_last)  # warm-up at this batch
    forward_ms = timed(lambda: forward_logits(handle.model, probe, "float32", channels_last))
    gradient_ms = timed(lambda: warm_up_gradients(handle))
    return forward_ms / batch, gradient_ms


def describe(handle: ModelHandle, batch_size: int) -> ModelInfo:
    """Warm ``handle`` up and describe it: what the zoo knows, plus its measured timings."""
    from workers.zoo import model_info

    warm_up_gradients(handle)
    forward_ms, gradient_ms = measure_timings(handle, batch_size)
    log.info(
        "event=model_timed model=%s forward_ms=%.3f gradient_ms=%.3f",
        handle.name,
        forward_ms,
        gradient_ms,
    )
    from workers.support import unsupported_methods

    facts = {
        "forward_ms": round(forward_ms, 4),
        "gradient_ms": round(gradient_ms, 4),
        "unsupported": unsupported_methods(handle),
    }
    return model_info(handle).model_copy(update=facts)


def build_runtime(settings: Settings) -> Runtime:
    """Choose the device, set torch's threads, load every model once and warm it up."""
    from workers.zoo import load_models

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    device = choose_device(settings.device)
    started = time.perf_counter()
    models = load_models(settings.models_file, device)
    infos = {name: describe(handle, settings.max_batch_size) for name, handle in models.items()}
    log.info(
        "event=models_loaded models=%s device=%s elapsed_ms=%.0f",
        ",".join(models),
        device,
        (time.perf_counter() - started) * 1000,
    )
    return Runtime(
        worker_id=settings.worker_name or default_worker_id(),
        device=device,
        models=models,
        infos=infos,
        lanes=parse_lanes(settings.lanes),
        max_batch_size=settings.max_batch_size,
    )
