"""What a worker loads once at start: its device, its models (warmed up) and their facts."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

import torch

from app.contract.jobs import ModelInfo, WorkerAnnouncement
from app.settings import Settings
from workers.explainers import ModelHandle

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
    """One forward and backward pass, so the first gradient job pays no first-call costs."""
    probe = torch.zeros(1, len(handle.mean), *handle.input_size, device=handle.device)
    with torch.inference_mode(False), torch.enable_grad():
        x = probe.requires_grad_(True)
        score = handle.model(x).float().max(dim=1).values.sum()
        torch.autograd.grad(score, x)


def build_runtime(settings: Settings) -> Runtime:
    """Choose the device, set torch's threads, load every model once and warm it up."""
    from workers.zoo import load_models, model_info

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    device = choose_device(settings.device)
    started = time.perf_counter()
    models = load_models(settings.models_file, device)
    for handle in models.values():
        warm_up_gradients(handle)
    infos = {name: model_info(handle) for name, handle in models.items()}
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
