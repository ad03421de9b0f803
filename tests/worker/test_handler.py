"""The handler's stages and group execution, in-process and without Redis."""

from __future__ import annotations

import io
import math
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from app.contract.jobs import JobEnvelope
from tests.worker.nets import build
from tests.worker.support import png, random_png, solid_png
from workers.explainers import ModelHandle, get_explainer
from workers.grouping import Job, effective_params
from workers.handler import (
    GroupContext,
    decode_image,
    preprocess,
    run_group,
    top_predictions,
)
from workers.runtime import Runtime

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_handle(
    model: nn.Module, classes: int = 3, size: tuple[int, int] = (32, 32)
) -> ModelHandle:
    """A handle like the zoo's for ``model`` (eval mode, CPU)."""
    return ModelHandle(
        name="m",
        model=model.eval(),
        input_size=size,
        mean=MEAN,
        std=STD,
        labels=tuple(f"c{i}" for i in range(classes)),
        default_layer="features.2" if hasattr(model, "features") else None,
    )


def make_job(
    method: str = "gradcam",
    params: dict | None = None,
    target: int | None = None,
    evaluate: list[str] | None = None,
    n: int = 0,
) -> Job:
    """A job as the loop builds it from an envelope."""
    envelope = JobEnvelope(
        job_id=f"job{n}",
        lane="fast" if method == "gradcam" else "slow",
        model="m",
        method=method,
        params=params or {},
        target=target,
        evaluate=evaluate or [],
        enqueued_at=0.0,
    )
    return Job(envelope, envelope.lane, f"{n}-0", "", effective_params(method, params, 64), 1)


def context(handle: ModelHandle, classes: int = 3) -> GroupContext:
    return GroupContext(handle, classes, 64, "test")


# --- stages ------------------------------------------------------------------------------------


def test_preprocess_resizes_the_whole_image_without_cropping() -> None:
    """A 64x32 (wide) image, left half red and right half blue, squeezed to 32x32."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    tensor = preprocess(decode_image(png(pixels)), make_handle(build()))
    assert tensor.shape == (3, 32, 32)
    # Normalised: 1 -> (1 - 0.5) / 0.25 = 2, 0 -> -2. Both halves survive (no centre crop).
    assert torch.allclose(tensor[0, :, :15], torch.tensor(2.0))
    assert torch.allclose(tensor[2, :, :15], torch.tensor(-2.0))
    assert torch.allclose(tensor[0, :, 17:], torch.tensor(-2.0))
    assert torch.allclose(tensor[2, :, 17:], torch.tensor(2.0))
    assert torch.allclose(tensor[1], torch.tensor(-2.0))


def test_decode_accepts_grey_and_alpha_images_as_rgb() -> None:
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (5, 4)).save(buffer, format="PNG")
        image = decode_image(buffer.getvalue())
        assert image.mode == "RGB" and image.size == (5, 4)


def test_decode_refuses_garbage_with_a_value_error() -> None:
    with pytest.raises(ValueError, match="could not be decoded"):
        decode_image(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="no longer stored"):
        decode_image(None)


class FixedLogits(nn.Module):
    """Logits that ignore the input: ``log(p)`` for a known distribution ``p``."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(probs).log())
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1) + self.scale * x.mean()


def test_predictions_are_the_softmax_top5_in_order() -> None:
    probs = [0.05, 0.3, 0.1, 0.02, 0.25, 0.08, 0.2]
    handle = make_handle(FixedLogits(probs), classes=7)
    got = handle.evaluate(torch.zeros(2, 3, 32, 32)).softmax(dim=1)
    assert torch.allclose(got, torch.tensor(probs).expand(2, -1), atol=1e-6)
    top = top_predictions(handle, got[0])
    assert [p.index for p in top] == [1, 4, 6, 2, 5]
    assert [p.label for p in top] == ["c1", "c4", "c6", "c2", "c5"]
    assert [p.score for p in top] == pytest.approx([0.3, 0.25, 0.2, 0.1, 0.08], abs=1e-6)


# --- groups ------------------------------------------------------------------------------------


def test_a_group_gives_each_job_what_it_gets_alone(runtime: Runtime) -> None:
    """Batched gradcam with per-row targets equals the explainer on each image alone."""
    handle = runtime.models["tiny"]
    images = [random_png(i) for i in range(3)]
    jobs = [make_job(target=t, n=i) for i, t in enumerate([None, 0, 2])]
    outcomes = run_group(context(handle), jobs, images)
    assert all(o.problem is None for o in outcomes)
    for job, image, outcome in zip(jobs, images, outcomes, strict=True):
        x = preprocess(decode_image(image), handle)[None]
        probs = handle.evaluate(x).softmax(dim=1)[0]
        target = int(probs.argmax()) if job.envelope.target is None else job.envelope.target
        alone = get_explainer("gradcam")(handle, x, torch.tensor([target])).saliency[0]
        low, high = alone.min(), alone.max()
        expected = ((alone - low) / (high - low)).numpy()
        assert outcome.result is not None and outcome.heatmap is not None
        assert outcome.result.target.index == target
        assert outcome.result.target.score == pytest.approx(float(probs[target]), rel=1e-5)
        assert outcome.result.group_size == 3
        assert outcome.heatmap.dtype == np.float32 and outcome.heatmap.shape == (32, 32)
        assert outcome.heatmap.min() == 0.0 and outcome.heatmap.max() == pytest.approx(1.0)
        np.testing.assert_allclose(outcome.heatmap, expected, atol=1e-5)


class Picky(nn.Module):
    """The tiny CNN, but it refuses all-black images (``ValueError``) or crashes on grey ones."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build()
        self.features = self.net.features

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        # Gradient recording is on after the CAM layer only (CAMs run the layers before
        # theirs without).
        flat = x[:, 0].flatten(1)
        if torch.is_grad_enabled() and bool((flat < -1.99).all(dim=1).any()):
            raise ValueError("all-black images are not supported")
        if torch.is_grad_enabled() and bool((flat.abs() < 0.01).all(dim=1).any()):
            raise RuntimeError("kernel crashed")
        return self.net.head(self.net.pool(features).flatten(1))


def test_an_explainer_error_fails_only_the_job_that_causes_it() -> None:
    handle = make_handle(Picky())
    images = [random_png(1), solid_png(0), random_png(2), solid_png(128), None, b"junk"]
    jobs = [make_job(n=i) for i in range(len(images))]
    outcomes = run_group(context(handle), jobs, images)
    problems = [o.problem.status if o.problem else None for o in outcomes]
    assert problems == [None, 422, None, 500, 422, 422]
    assert "all-black" in outcomes[1].problem.detail  # type: ignore[union-attr]
    assert "kernel crashed" in outcomes[3].problem.detail  # type: ignore[union-attr]
    assert outcomes[0].result is not None and outcomes[2].result is not None


def test_an_unknown_target_class_fails_that_job_only(runtime: Runtime) -> None:
    jobs = [make_job(target=3, n=0), make_job(target=1, n=1)]
    outcomes = run_group(context(runtime.models["tiny"]), jobs, [random_png(0), random_png(1)])
    assert outcomes[0].problem is not None and outcomes[0].problem.status == 422
    assert "target 3" in outcomes[0].problem.detail
    assert outcomes[1].result is not None and outcomes[1].result.target.index == 1


class Small(nn.Module):
    """The tiny CNN on a device that runs out of memory above ``limit`` samples per forward
    in inference mode (perturbation passes); ``limit=0`` means always."""

    def __init__(self, limit: int, cpu: bool = False) -> None:
        super().__init__()
        self.net = build()
        self.features = self.net.features
        self.limit = limit
        self.cpu = cpu
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_inference_mode_enabled():
            self.sizes.append(x.shape[0])
            if x.shape[0] > self.limit and self.cpu:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")
            if x.shape[0] > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.net(x)


@pytest.mark.parametrize("cpu", [False, True])
def test_out_of_memory_halves_the_batch_until_it_fits(cpu: bool) -> None:
    model = Small(limit=4, cpu=cpu)
    handle = make_handle(model)
    params = {"window": 8, "stride": 8, "max_batch_size": 16}
    jobs = [make_job("occlusion", params, n=i) for i in range(2)]
    images = [random_png(5), random_png(6)]
    outcomes = run_group(context(handle), jobs, images)
    assert all(o.result is not None for o in outcomes), [o.problem for o in outcomes]
    assert max(model.sizes) == 16 and 8 in model.sizes
    assert outcomes[0].result.meta["max_batch_size_used"] == 4  # type: ignore[union-attr]
    assert outcomes[0].result.params["max_batch_size"] == 16  # type: ignore[union-attr]
    # Same maps as a direct call at the batch size that fits.
    x = torch.stack([preprocess(decode_image(i), handle) for i in images])
    targets = handle.evaluate(x).argmax(dim=1)
    model.limit = 10**6
    direct = get_explainer("occlusion")(handle, x, targets, window=8, stride=8, max_batch_size=4)
    for row, outcome in enumerate(outcomes):
        sal = direct.saliency[row]
        expected = ((sal - sal.min()) / (sal.max() - sal.min())).numpy()
        np.testing.assert_allclose(outcome.heatmap, expected, atol=1e-5)  # type: ignore[arg-type]


def test_a_failed_call_frees_its_activations_before_the_retry() -> None:
    # Grad-CAM's gradient pass runs outside the batcher: the handler halves its batch; the
    # failed call's frames must not keep its activations alive through the retry.
    seen: list[bool] = []
    last: list[weakref.ref[Tensor]] = []

    class Hoarding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = build()
            self.features = self.net.features

        def forward(self, x: Tensor) -> Tensor:
            if not torch.is_inference_mode_enabled():
                if last:
                    seen.append(last[-1]() is not None)
                activation = torch.ones(x.shape[0], 1 << 16)
                last.append(weakref.ref(activation))
                if x.shape[0] > 1:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.net(x)

    handle = make_handle(Hoarding())
    jobs = [make_job("gradcam", {}, n=i) for i in range(2)]
    outcomes = run_group(context(handle), jobs, [random_png(5), random_png(6)])
    assert all(o.result is not None for o in outcomes), [o.problem for o in outcomes]
    assert seen and not any(seen)


@pytest.mark.parametrize("cpu", [False, True])
def test_out_of_memory_at_one_sample_fails_the_job_not_the_process(
    caplog: pytest.LogCaptureFixture, cpu: bool
) -> None:
    model = Small(limit=0, cpu=cpu)
    outcomes = run_group(
        context(make_handle(model)),
        [make_job("occlusion", {"window": 8, "stride": 8, "max_batch_size": 8})],
        [random_png(1)],
    )
    assert outcomes[0].problem is not None and outcomes[0].problem.status == 500
    assert "out of memory" in outcomes[0].problem.detail
    tried = [r.getMessage().rsplit("=", 1)[1] for r in caplog.records if "out_of_memory" in r.msg]
    assert tried == ["8", "4", "2", "1"]


def test_evaluation_is_computed_for_the_jobs_that_ask(runtime: Runtime) -> None:
    handle = runtime.models["tiny"]
    jobs = [make_job(evaluate=["deletion", "insertion"], n=0), make_job(n=1)]
    outcomes = run_group(context(handle), jobs, [random_png(3), random_png(4)])
    first, second = (o.result for o in outcomes)
    assert first is not None and second is not None
    assert set(first.evaluation) == {"deletion", "insertion"}
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in first.evaluation.values())
    assert second.evaluation == {}
