"""The worker's scheduler and batcher on a real GPU: passes shared between tasks give each
task the logits it would get alone, and a real CUDA out-of-memory error (the allocator capped
with ``set_per_process_memory_fraction``) halves the pass until it fits, failing nobody."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from workers.batcher import Batcher, Request
from workers.scheduler import Scheduler, Task

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def wide_net() -> nn.Module:
    """Two 64-channel convolutions at full resolution: 16 MiB of activations per 256² image
    and layer, so 64 images need about 2 GiB."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()


@pytest.fixture
def capped_gpu() -> Iterator[int]:
    """Cap this process's CUDA allocator at 1 GiB for the test; the cap in bytes."""
    torch.cuda.empty_cache()
    cap = 1 << 30
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap / total)
    torch.cuda.reset_peak_memory_stats()
    try:
        yield cap
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_a_real_out_of_memory_error_halves_the_pass_and_every_row_gets_its_logits(
    capped_gpu: int,
) -> None:
    model = wide_net().cuda()
    inputs = [torch.rand(32, 3, 256, 256, device="cuda", generator=None) for _ in range(2)]
    with torch.inference_mode():
        expected = [torch.cat([model(x[i : i + 8]) for i in range(0, 32, 8)]) for x in inputs]
    batcher = Batcher(model, batch_size=64, channels_last=False)
    requests = [Request(owner=object(), inputs=x) for x in inputs]
    for request in requests:
        batcher.add(request)
    for _ in range(100):
        if all(r.finished for r in requests):
            break
        batcher.run(list(batcher.pending))
    for request, want in zip(requests, expected, strict=True):
        assert request.error is None
        assert request.result is not None
        torch.testing.assert_close(request.result, want, rtol=1e-4, atol=1e-4)
    assert batcher.stats.rows == 64
    assert batcher.stats.passes > 2  # 64 rows did not fit in 1 GiB: the pass was halved
    assert torch.cuda.max_memory_allocated() <= capped_gpu


def test_tasks_sharing_gpu_passes_get_what_they_would_get_alone() -> None:
    model = wide_net().cuda()
    generator = torch.Generator().manual_seed(1)
    chunks = [[torch.rand(6, 3, 64, 64, generator=generator) for _ in range(3)] for _ in range(3)]
    with torch.inference_mode():
        alone = [[model(c.cuda()).cpu() for c in task] for task in chunks]
    scheduler = Scheduler(batch_size=16, ageing=0.0)

    def body(task_chunks: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        def run() -> list[torch.Tensor]:
            out = []
            for index, chunk in enumerate(task_chunks):
                out.append(scheduler.evaluate(model, chunk.cuda()).cpu())
                scheduler.pause((index + 1) / len(task_chunks))
            return out

        return run

    tasks = [Task(f"t{i}", body(c), cost_s=1.0, pure=True) for i, c in enumerate(chunks)]
    for task in tasks:
        scheduler.submit(task)
    while scheduler.busy:
        scheduler.step()
    for task, want in zip(tasks, alone, strict=True):
        assert task.error is None
        for got, expected in zip(task.result, want, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert scheduler.stats()["shared_passes"] >= 1
