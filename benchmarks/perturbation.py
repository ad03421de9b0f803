"""Perturbation family: our batched explainers against reference implementations, side by side.

For each model (random weights: this is a speed benchmark) and one 224 px scene, every pair
runs the *same number of model evaluations* (counted by a wrapper around the model, not
assumed), at the same forward batch size:

* ``occlusion`` vs Captum ``Occlusion`` (same window, stride, zero baseline, probability);
* ``lime`` vs Captum ``Lime`` (our quickshift superpixels as its feature mask, ridge α = 1,
  cosine kernel 0.25) and vs the ``lime`` package (``LimeImageExplainer``, its own quickshift);
  every LIME timing includes its segmentation;
* ``rise`` vs a straightforward reference loop (the original ``eclique/RISE`` code path:
  masks resized one by one with scikit-image, stored, then batched forwards and one matmul);
* ``fmo`` vs exhaustive occlusion at FMO's finest window (28 px at 224) with a dense stride,
  with the deletion AUC (METHODS §7.1) of both maps.

Every method is also compared with its *floor*: evaluations × the best per-image forward time
of that model (best over the batch sizes tried), measured in the same run.

    nice -n 10 .venv/bin/python -m benchmarks.perturbation            # full run (~10 min CPU)
    .venv/bin/python -m benchmarks.perturbation --models resnet18 --rise-masks 100 --quick

Prints a Markdown table (results: ``benchmarks/results/perturbation.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from workers.demo.scenes import make_scenes
from workers.explainers.base import ModelHandle
from workers.explainers.metrics import deletion_auc, insertion_auc, pointing_game
from workers.explainers.perturbation.fmo import fmo
from workers.explainers.perturbation.lime import lime
from workers.explainers.perturbation.occlusion import occlusion
from workers.explainers.perturbation.rise import rise
from workers.explainers.perturbation.superpixels import superpixels
from workers.zoo import ModelsFileError, load_models

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


class Counting(nn.Module):
    """Counts the rows (model evaluations) that go through ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model's logits."""
        self.rows += x.shape[0]
        return self.model(x)


@dataclass
class Result:
    """One timed run."""

    model: str
    method: str
    impl: str
    seconds: float
    evals: int
    reference: str | None = None
    note: str = ""


@dataclass
class Setup:
    """What every run of one model shares."""

    name: str
    handle: ModelHandle
    counter: Counting
    inputs: Tensor
    target: int
    device: torch.device
    batch: int
    repeats: int = 2
    clock: Callable[[], float] = time.perf_counter

    def race(self, runs: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, int, Any]]:
        """Each run ``repeats`` times, interleaved; the fastest time of each (the machine is
        shared, so the minimum is the least disturbed measurement)."""
        best: dict[str, tuple[float, int, Any]] = {}
        for _ in range(self.repeats):
            for name, fn in runs.items():
                seconds, evals, out = self.timed(fn)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, evals, out)
        return best

    def timed(self, fn: Callable[[], Any]) -> tuple[float, int, Any]:
        """(seconds on ``clock``, evaluations, result) of ``fn``; CUDA synchronised around it."""
        self.counter.rows = 0
        self._sync()
        start = self.clock()
        out = fn()
        self._sync()
        return self.clock() - start, self.counter.rows, out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def probs(self, x: Tensor) -> Tensor:
        """Softmax of the counted model (what the reference libraries explain)."""
        return self.counter(x).softmax(dim=1)


def floor_per_image(setup: Setup, batches: list[int], reps: int) -> tuple[float, int]:
    """Best per-image forward time over ``batches`` and both memory layouts (NCHW, NHWC),
    fastest of ``reps``; returns it with its batch size."""
    best, best_batch = math.inf, batches[0]
    with torch.inference_mode():
        for batch in batches:
            for layout in (torch.contiguous_format, torch.channels_last):
                x = setup.inputs.expand(batch, -1, -1, -1).contiguous(memory_format=layout)
                setup.counter(x)  # warm-up at this size and layout
                for _ in range(reps):
                    seconds, _, _ = setup.timed(lambda x=x: setup.counter(x))
                    if seconds / batch < best:
                        best, best_batch = seconds / batch, batch
    return best, best_batch


def bench_occlusion(setup: Setup, window: int, stride: int) -> list[Result]:
    """Ours vs Captum Occlusion: same windows, zero baseline, probability drop."""
    from captum.attr import Occlusion

    targets = torch.tensor([setup.target], device=setup.device)

    def ours() -> Tensor:
        return occlusion(
            setup.handle,
            setup.inputs,
            targets,
            window=window,
            stride=stride,
            max_batch_size=setup.batch,
        ).saliency[0]

    def captum() -> Tensor:
        with torch.no_grad():
            return Occlusion(setup.probs).attribute(
                setup.inputs,
                sliding_window_shapes=(3, window, window),
                strides=(3, stride, stride),
                baselines=0.0,
                target=setup.target,
                perturbations_per_eval=setup.batch,
            )[0, 0]

    runs = setup.race({"ours": ours, "Captum Occlusion": captum})
    ours_map, captum_map = runs["ours"][2], runs["Captum Occlusion"][2]
    difference = (ours_map - captum_map).abs().max().item()
    scale = (captum_map.max() - captum_map.min()).item()
    note = f"max abs(ours − Captum) = {difference / max(scale, 1e-12):.1e} of the map's range"
    return results_of(setup, f"occlusion {window}px/{stride}px", runs, "Captum Occlusion", note)


def results_of(
    setup: Setup,
    label: str,
    runs: dict[str, tuple[float, int, Any]],
    reference: str,
    note: str = "",
    notes: dict[str, str] | None = None,
) -> list[Result]:
    """Rows of one comparison; runs named ``ours…`` are compared with ``reference``."""
    rows = []
    for index, (impl, (seconds, evals, _)) in enumerate(runs.items()):
        extra = (notes or {}).get(impl, note if index == 0 else "")
        compared = reference if impl.startswith("ours") else None
        rows.append(Result(setup.name, label, impl, seconds, evals, compared, extra))
    return rows


def hidden_means(inputs: Tensor, labels: Tensor, count: int) -> Tensor:
    """``(1, 3, H, W)``: each superpixel filled with its mean colour (lime's hidden image)."""
    flat = labels[0].flatten()
    sums = torch.zeros(count, 3, device=inputs.device).index_add_(0, flat, inputs[0].flatten(1).T)
    means = sums / torch.bincount(flat, minlength=count)[:, None].float()
    return means[labels[0]].permute(2, 0, 1)[None]


def bench_lime(setup: Setup, samples: int) -> list[Result]:
    """Ours vs Captum Lime vs the lime package, same samples, segmentation included."""
    import lime.lime_image as lime_image
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    lime_image.tqdm = lambda rows: rows  # no progress bar on stderr
    targets = torch.tensor([setup.target], device=setup.device)
    display = setup.handle.to_display(setup.inputs).clamp(0, 1)
    mean, std = setup.handle.mean_std(setup.inputs)

    def ours() -> Any:
        return lime(
            setup.handle, setup.inputs, targets, num_samples=samples, max_batch_size=setup.batch
        )

    def captum() -> Tensor:
        labels, counts = superpixels(display, "quickshift", 50, seed=0)
        explainer = Lime(
            setup.probs,
            interpretable_model=SkLearnRidge(alpha=1.0),
            similarity_func=get_exp_kernel_similarity_function("cosine", 0.25),
        )
        with torch.no_grad():
            return explainer.attribute(
                setup.inputs,
                baselines=hidden_means(setup.inputs, labels, counts[0]),
                target=setup.target,
                feature_mask=labels[None],
                n_samples=samples,
                perturbations_per_eval=setup.batch,
            )

    def classifier(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2).to(setup.device)
        with torch.no_grad():
            return setup.probs((x - mean) / std).cpu().numpy()

    def package() -> Any:
        return lime_image.LimeImageExplainer(kernel_width=0.25, random_state=0).explain_instance(
            display[0].permute(1, 2, 0).double().cpu().numpy(),
            classifier,
            labels=(setup.target,),
            top_labels=None,
            hide_color=None,
            num_samples=samples,
            batch_size=setup.batch,
            random_seed=0,
        )

    runs = setup.race({"ours": ours, "Captum Lime": captum, "lime package": package})
    segmentation = min(
        setup.timed(lambda: superpixels(display, "quickshift", 50, seed=0))[0]
        for _ in range(setup.repeats)
    )
    note = f"quickshift takes {segmentation:.2f} s of each LIME time"
    return results_of(setup, f"lime {samples} samples", runs, "lime package", note)


def rise_reference(setup: Setup, n_masks: int, cells: int, p: float) -> Tensor:
    """RISE the straightforward way (``eclique/RISE`` ``generate_masks`` + ``forward``)."""
    from skimage.transform import resize

    height, width = setup.inputs.shape[-2:]
    cell = math.ceil(height / cells)
    up = (cells + 1) * cell
    rng = np.random.RandomState(0)
    grid = (rng.rand(n_masks, cells, cells) < p).astype("float32")
    masks = np.empty((n_masks, height, width), dtype="float32")
    for i in range(n_masks):
        x, y = rng.randint(0, cell), rng.randint(0, cell)
        big = resize(grid[i], (up, up), order=1, mode="reflect", anti_aliasing=False)
        masks[i] = big[x : x + height, y : y + width]
    stack = torch.from_numpy(masks)[:, None].to(setup.device)
    scores = []
    with torch.no_grad():
        for start in range(0, n_masks, setup.batch):
            scores.append(setup.probs(stack[start : start + setup.batch] * setup.inputs))
    probs = torch.cat(scores)[:, setup.target]
    return (probs @ stack.view(n_masks, -1)).view(height, width) / n_masks / p


def bench_rise(setup: Setup, n_masks: int) -> list[Result]:
    """Ours vs the reference loop, same masks count, cells and p."""
    targets = torch.tensor([setup.target], device=setup.device)

    def ours() -> Any:
        return rise(
            setup.handle, setup.inputs, targets, n_masks=n_masks, max_batch_size=setup.batch
        )

    runs = setup.race(
        {"ours": ours, "reference loop": lambda: rise_reference(setup, n_masks, 7, 0.5)}
    )
    return results_of(setup, f"rise {n_masks} masks", runs, "reference loop")


def bench_fmo(setup: Setup, dense_stride: int, deletion_step: int) -> list[Result]:
    """FMO (default reconstruction) vs exhaustive occlusion at its finest window."""
    targets = torch.tensor([setup.target], device=setup.device)
    window = round(min(setup.inputs.shape[-2:]) / 16 * 2)  # FMO's finest window (2 cells of 16)

    def ours() -> Any:
        return fmo(setup.handle, setup.inputs, targets, max_batch_size=setup.batch)

    def dense() -> Any:
        return occlusion(
            setup.handle,
            setup.inputs,
            targets,
            window=window,
            stride=dense_stride,
            max_batch_size=setup.batch,
        )

    dense_name = f"occlusion {window}px/{dense_stride}px"

    def depth() -> Any:
        return fmo(setup.handle, setup.inputs, targets, combine="depth", max_batch_size=setup.batch)

    runs = setup.race({"ours fmo": ours, "ours fmo combine=depth": depth})
    runs[dense_name] = setup.timed(dense)  # the expensive side runs once
    plain = ModelHandle(
        name=setup.name, model=setup.counter.model, input_size=setup.handle.input_size, **IMAGENET
    )
    notes = {}
    for impl, (_, _, explanation) in runs.items():
        auc = deletion_auc(
            plain,
            setup.inputs,
            targets,
            explanation.saliency,
            step=deletion_step,
            max_batch_size=setup.batch,
        ).item()
        notes[impl] = f"deletion AUC {auc:.4f}"
    levels = runs["ours fmo"][2].meta[0]["windows_per_level"]
    notes["ours fmo"] += f"; windows per level {levels}"
    return results_of(setup, f"fmo vs {dense_name}", runs, dense_name, notes=notes)


def demo_quality(
    device: torch.device, scenes: int, batch: int, clock: Callable[[], float] = time.perf_counter
) -> str:
    """FMO vs exhaustive occlusion on the trained demo model, over held-out scenes: deletion
    and insertion AUC (mean, and the paired difference to the dense occlusion ± its standard
    error) and the pointing game. Random weights make these scores meaningless."""
    try:
        handle = load_models(None, device)["shapes"]
    except (ModelsFileError, OSError) as error:
        return f"(demo model not available: {error})"
    size = handle.input_size[0]
    data = make_scenes(scenes, seed=1_000_000, size=size)
    inputs = handle.from_display(data.images.to(device))
    targets = data.labels.to(device)
    window, stride = round(size / 8), max(1, size // 56)  # FMO's finest window; 2 px at 112
    counter = Counting(handle.model)
    counted = dataclasses.replace(handle, model=counter)
    dense = f"occlusion {window}px/{stride}px"
    runs = {
        dense: lambda: occlusion(
            counted, inputs, targets, window=window, stride=stride, max_batch_size=batch
        ),
        f"occlusion {window}px/{window // 2}px": lambda: occlusion(
            counted, inputs, targets, window=window, stride=window // 2, max_batch_size=batch
        ),
        "fmo (default, refine)": lambda: fmo(counted, inputs, targets, max_batch_size=batch),
        "fmo combine=depth": lambda: fmo(
            counted, inputs, targets, combine="depth", max_batch_size=batch
        ),
    }
    lines = [
        f"Trained demo model `shapes` ({size} px), {scenes} held-out scenes, true class; "
        f"Δ = paired difference to {dense} ± standard error:",
        "",
        "| method | evaluations / image | seconds | deletion AUC ↓ | Δ deletion | "
        "insertion AUC ↑ | Δ insertion | pointing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reference: dict[str, Tensor] = {}
    for name, run in runs.items():
        counter.rows = 0
        start = clock()
        saliency = run().saliency
        seconds = clock() - start
        scores = {
            "deletion": deletion_auc(handle, inputs, targets, saliency, max_batch_size=batch),
            "insertion": insertion_auc(handle, inputs, targets, saliency, max_batch_size=batch),
        }
        reference = reference or scores
        cells = []
        for key, values in scores.items():
            diff = (values - reference[key]).cpu()
            cells += [
                f"{values.mean():.4f}",
                f"{diff.mean():+.4f} ± {diff.std() / scenes**0.5:.4f}",
            ]
        pointing = pointing_game(saliency.cpu(), data.masks).mean()
        lines.append(
            f"| {name} | {counter.rows / scenes:.0f} | {seconds:.2f} | {' | '.join(cells)} | "
            f"{pointing:.2f} |"
        )
    return "\n".join(lines)


def make_setup(
    name: str, device: torch.device, size: int, batch: int, repeats: int, clock: Callable[[], float]
) -> Setup:
    """A random-weight torchvision model, one synthetic scene, its top-1 class."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    counter = Counting(model).eval()
    handle = ModelHandle(name=name, model=counter, input_size=(size, size), **IMAGENET)
    image = make_scenes(1, seed=1_000_000, size=size).images.to(device)
    inputs = handle.from_display(image)
    with torch.inference_mode():
        target = int(model(inputs).argmax())
    return Setup(name, handle, counter, inputs, target, device, batch, repeats, clock)


def table(results: list[Result], floors: dict[str, tuple[float, int]]) -> str:
    """Markdown: seconds, evaluations, ratio to the reference and to the floor."""
    lines = [
        "| model | comparison | implementation | evaluations | seconds | reference ÷ ours | "
        "÷ floor | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for result in results:
        reference = next(
            (
                r
                for r in results
                if r.model == result.model
                and r.method == result.method
                and r.impl == result.reference
            ),
            None,
        )
        speedup = f"{reference.seconds / result.seconds:.2f}×" if reference else ""
        floor = floors[result.model][0] * result.evals
        lines.append(
            f"| {result.model} | {result.method} | {result.impl} | {result.evals} | "
            f"{result.seconds:.2f} | {speedup} | {result.seconds / floor:.2f} | {result.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--batch", type=int, default=0, help="forward batch of every method (0: the floor's best)"
    )
    parser.add_argument("--occlusion-window", type=int, default=32)
    parser.add_argument("--occlusion-stride", type=int, default=16)
    parser.add_argument("--lime-samples", type=int, default=300)
    parser.add_argument("--rise-masks", type=int, default=500)
    parser.add_argument("--dense-stride", type=int, default=4)
    parser.add_argument("--deletion-step", type=int, default=448)
    parser.add_argument("--floor-batches", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side (fastest kept)")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="cpu: process CPU time (default on CPU: insensitive to other processes on a shared "
        "machine, exact with --threads 1); wall: elapsed time (default on CUDA)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--demo-scenes", type=int, default=16, help="FMO quality on the trained demo model (0: off)"
    )
    parser.add_argument("--skip", default="", help="comma-separated: occlusion,lime,rise,fmo")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    skip = set(filter(None, args.skip.split(",")))
    results: list[Result] = []
    floors: dict[str, tuple[float, int]] = {}
    started = time.perf_counter()
    for name in filter(None, args.models.split(",")):
        setup = make_setup(name, device, args.size, args.batch or 64, args.repeats, clock)
        batches = [int(b) for b in args.floor_batches.split(",")]
        floors[name] = floor_per_image(setup, batches, reps=setup.repeats)
        setup.batch = args.batch or floors[name][1]
        print(
            f"{name}: floor {floors[name][0] * 1000:.2f} ms/image at batch {floors[name][1]}, "
            f"target class {setup.target}; methods run at batch {setup.batch}",
            flush=True,
        )
        if "occlusion" not in skip:
            results += bench_occlusion(setup, args.occlusion_window, args.occlusion_stride)
        if "lime" not in skip:
            results += bench_lime(setup, args.lime_samples)
        if "rise" not in skip:
            results += bench_rise(setup, args.rise_masks)
        if "fmo" not in skip:
            results += bench_fmo(setup, args.dense_stride, args.deletion_step)
        again = floor_per_image(setup, [floors[name][1]], reps=setup.repeats)  # drift check
        floors[name] = min(floors[name], again)
        print(f"  done at {time.perf_counter() - started:.0f} s", flush=True)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU, {torch.get_num_threads()} torch threads")
    )
    print(f"\n{device_name}, torch {torch.__version__}, {clock_name} clock\n")
    if results:
        print(f"{args.size} px; wall time of the model runs {time.perf_counter() - started:.0f} s")
        for name, (seconds, batch) in floors.items():
            print(f"floor {name}: {seconds * 1000:.2f} ms per image (batch {batch})")
        print()
        print(table(results, floors))
    if args.demo_scenes:
        print("\n" + demo_quality(device, args.demo_scenes, args.batch or 64, clock))


if __name__ == "__main__":
    main()
