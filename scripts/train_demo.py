"""Train the bundled demo model (``shapes``) on synthetic scenes, on CPU, in a few minutes.

    .venv/bin/python scripts/train_demo.py            # writes workers/assets/shapes.{pt,json}

The quality benchmark's second evaluation model (another architecture, other scenes):

    .venv/bin/python scripts/train_demo.py --arch residual --style textured \
        --name shapes_residual --out benchmarks/quality/models

The third (the same network at 224 px: a 9×9 stride-4 stem, so that every later layer sees
what it sees at 112 px; about 30 minutes on one CPU thread, most of it drawing the scenes):

    .venv/bin/python scripts/train_demo.py --arch residual224 --style textured --size 224 \
        --name shapes_residual224 --out benchmarks/quality/models

The fourth (the residual network on crowded scenes: the object among three smaller shapes of
the other classes; 15 minutes on one thread, clean accuracy 97.8 %):

    .venv/bin/python scripts/train_demo.py --arch residual --style crowded \
        --name shapes_crowded --out benchmarks/quality/models

Every step draws a fresh batch with :func:`workers.demo.scenes.make_scenes` (seed = step, all
below 1_000_000). Half of each batch is occluded the way explanation methods perturb inputs,
in model-input space (0 = the mean colour):

* smooth masks: a random ``c×c`` binary grid (``c`` 3–8, keep probability 0.2–0.8),
  bilinearly up-sampled with a random shift (RISE), filled with 0 or a blurred copy (Gaussian,
  σ = 10 px: the blur fill of occlusion and of meaningful/extremal perturbation);
* blocky masks: the same grid up-sampled with nearest neighbours (superpixel-like on/off
  patches, as LIME and FMO switch regions), filled with 0;
* one to three filled rectangles of side 16–48 px (occlusion windows), filled with 0.

Pixel sizes (the rectangles, the fill's σ) are at 112 px and scale with ``--size``.

The target of an occluded scene is softened toward uniform in proportion to the hidden part
of the object, ``y = (1 − h)·onehot + h/K`` with ``h = 1 − Σ m·mask / Σ mask`` (``m`` the
kept fraction of each pixel), so that a model answers "I cannot tell" when the object is
gone instead of answering erratically. Loss: cross-entropy with these soft targets.

Evaluation (held-out seeds ``1_000_000 + i``): accuracy on clean scenes, and on the same
scenes occluded as above (with another generator), by hidden fraction of the object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.demo.net import (
    DEFAULT_LAYER,
    RESIDUAL_LAYER,
    RESIDUAL_WIDTHS,
    WIDTHS,
    ResidualShapesNet,
    ShapesNet,
    build_residual224,
)
from workers.demo.scenes import CLASSES, EVAL_SEED, STYLES, make_scenes
from workers.explainers.perturbation.engine import gaussian_blur

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
SIZE = 112
ASSETS = Path(__file__).resolve().parent.parent / "workers" / "assets"


def normalise(images: Tensor) -> Tensor:
    """[0, 1] images → model inputs."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def grid_masks(n: int, size: int, g: torch.Generator, mode: str) -> Tensor:
    """``(n, 1, size, size)`` keep-masks: random binary grids, up-sampled with a random shift."""
    cells = int(torch.randint(3, 9, (1,), generator=g))
    keep = 0.2 + 0.6 * torch.rand((n, 1, 1, 1), generator=g)
    grid = (torch.rand((n, 1, cells, cells), generator=g) < keep).float()
    scale = (cells - 1) / cells  # show (c − 1) of the c cells, shifted at random (RISE)
    shift = (torch.rand((n, 2), generator=g) * 2 - 1) * (1 - scale)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    sampling = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(grid, sampling, mode=mode, padding_mode="border", align_corners=False)


def rectangle_masks(n: int, size: int, g: torch.Generator) -> Tensor:
    """``(n, 1, size, size)`` keep-masks with one to three zeroed rectangles."""
    keep = torch.ones(n, 1, size, size)
    coords = torch.arange(size)
    count = torch.randint(1, 4, (n,), generator=g)
    scale = size / SIZE
    for k in range(3):
        side = (torch.randint(16, 49, (n, 2), generator=g) * scale).long()
        corner = (torch.rand((n, 2), generator=g) * (size - side + 1)).long()
        rows = (coords >= corner[:, 1:2]) & (coords < corner[:, 1:2] + side[:, 1:2])  # (n, S)
        cols = (coords >= corner[:, 0:1]) & (coords < corner[:, 0:1] + side[:, 0:1])
        hidden = rows[:, :, None] & cols[:, None, :] & (k < count).view(n, 1, 1)
        keep[:, 0][hidden] = 0.0
    return keep


def occlude(inputs: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Occluded copies of model inputs and the kept fraction of each pixel ``(n, 1, S, S)``."""
    n, _, size, _ = inputs.shape
    kind = torch.randint(0, 4, (n, 1, 1, 1), generator=g)
    smooth = grid_masks(n, size, g, "bilinear")
    blocky = grid_masks(n, size, g, "nearest")
    rectangles = rectangle_masks(n, size, g)
    keep = torch.where(kind <= 1, smooth, torch.where(kind == 2, blocky, rectangles))
    sigma = 10.0 * size / SIZE
    fill = torch.zeros_like(inputs)
    blurred_rows = (kind.view(-1) == 1).nonzero()[:, 0]  # blur only where it is the fill
    # torchvision's kernel_size 2·round(σ) + 1 (the first two models' fill), separable
    fill[blurred_rows] = gaussian_blur(inputs[blurred_rows], sigma, truncate=round(sigma) / sigma)
    return keep * inputs + (1 - keep) * fill, keep


def hidden_fraction(keep: Tensor, masks: Tensor) -> Tensor:
    """Share of the object's pixels hidden by ``keep`` ``(n, 1, S, S)``: ``(n,)`` in [0, 1]."""
    weights = masks.float()
    seen = (keep[:, 0] * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1)
    return (1 - seen).clamp(0, 1)


def soft_targets(labels: Tensor, hidden: Tensor, classes: int) -> Tensor:
    """``(1 − h)·onehot + h/K``."""
    onehot = F.one_hot(labels, classes).float()
    h = hidden.view(-1, 1)
    return (1 - h) * onehot + h / classes


ARCHS = {
    "plain": ("workers.demo.net:build", ShapesNet, DEFAULT_LAYER, WIDTHS),
    "residual": ("workers.demo.net:build_residual", ResidualShapesNet, RESIDUAL_LAYER,
                 RESIDUAL_WIDTHS),
    "residual224": ("workers.demo.net:build_residual224", build_residual224, RESIDUAL_LAYER,
                    RESIDUAL_WIDTHS),
}  # fmt: skip
"""``--arch``: (factory, class or builder, default CAM layer, widths)."""


def training_batch(
    step: int, batch: int, occluded: float, style: str = "plain", size: int = SIZE
) -> tuple[Tensor, Tensor]:
    """Inputs and soft targets of one step (scenes and occlusions seeded by the step)."""
    scenes = make_scenes(batch, seed=step, size=size, style=style)
    inputs = normalise(scenes.images)
    g = torch.Generator().manual_seed(500_000 + step)
    count = round(batch * occluded)
    hidden = torch.zeros(batch)
    if count:
        inputs[:count], keep = occlude(inputs[:count], g)
        hidden[:count] = hidden_fraction(keep, scenes.masks[:count])
    return inputs, soft_targets(scenes.labels, hidden, len(CLASSES))


@torch.inference_mode()
def evaluate(
    model: nn.Module, scenes_count: int, batch: int = 128, style: str = "plain", size: int = SIZE
) -> dict[str, float]:
    """Clean and occluded accuracy on held-out scenes (seeds 1_000_000 + i)."""
    model.eval()
    clean_hits, rows = [], []
    for i in range(math.ceil(scenes_count / batch)):
        scenes = make_scenes(batch, seed=EVAL_SEED + i, size=size, style=style)
        inputs = normalise(scenes.images)
        clean_hits.append(model(inputs).argmax(1) == scenes.labels)
        occluded, keep = occlude(inputs, torch.Generator().manual_seed(2_000_000 + i))
        probs = model(occluded).softmax(1)
        hidden = hidden_fraction(keep, scenes.masks)
        rows.append((probs, scenes.labels, hidden))
    probs = torch.cat([r[0] for r in rows])
    labels = torch.cat([r[1] for r in rows])
    hidden = torch.cat([r[2] for r in rows])
    hit = probs.argmax(1) == labels
    true_prob = probs.gather(1, labels.view(-1, 1))[:, 0]
    result = {
        "scenes": float(len(labels)),
        "clean_accuracy": torch.cat(clean_hits).float().mean().item(),
        "occluded_accuracy": hit.float().mean().item(),
    }
    for name, low, high in (("lt25", 0, 0.25), ("25to75", 0.25, 0.75), ("ge75", 0.75, 1.01)):
        chosen = (hidden >= low) & (hidden < high)
        result[f"occluded_hidden_{name}_share"] = chosen.float().mean().item()
        result[f"occluded_hidden_{name}_accuracy"] = hit[chosen].float().mean().item()
        result[f"occluded_hidden_{name}_true_prob"] = true_prob[chosen].mean().item()
        result[f"occluded_hidden_{name}_max_prob"] = probs[chosen].max(1).values.mean().item()
    return result


def train(
    steps: int,
    batch: int,
    lr: float,
    occluded: float,
    seed: int,
    arch: str,
    style: str,
    size: int = SIZE,
) -> nn.Module:
    """The trained model (eval mode)."""
    torch.manual_seed(seed)
    model = ARCHS[arch][1](num_classes=len(CLASSES))
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    model.train()
    started = time.monotonic()
    for step in range(steps):
        inputs, targets = training_batch(step, batch, occluded, style, size)
        loss = -(targets * model(inputs).log_softmax(1)).sum(1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.monotonic() - started:.0f} s")
    return model.eval()


def main() -> None:
    """Train, evaluate, write ``<name>.pt`` and ``<name>.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--occluded", type=float, default=0.5, help="share of each batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--eval-scenes", type=int, default=2048)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="plain")
    parser.add_argument("--style", choices=STYLES, default="plain", help="scenes")
    parser.add_argument("--size", type=int, default=SIZE, help="input side in pixels")
    parser.add_argument("--name", default="shapes")
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    if args.steps * 1 >= EVAL_SEED:
        parser.error("training seeds must stay below 1_000_000")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model = train(
        args.steps, args.batch, args.lr, args.occluded, args.seed, args.arch, args.style, args.size
    )
    train_seconds = time.monotonic() - started
    metrics = evaluate(model, args.eval_scenes, style=args.style, size=args.size)
    print(json.dumps(metrics, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    factory, _, layer, widths = ARCHS[args.arch]
    torch.save(model.state_dict(), args.out / f"{args.name}.pt")
    facts = {
        "name": args.name,
        "factory": factory,
        "weights": f"{args.name}.pt",
        "input_size": [args.size, args.size],
        "mean": list(MEAN),
        "std": list(STD),
        "labels": list(CLASSES),
        "target_layer": layer,
        "scene_style": args.style,
        "training": {
            "command": "python scripts/train_demo.py "
            f"--steps {args.steps} --batch {args.batch} --lr {args.lr} "
            f"--occluded {args.occluded} --seed {args.seed} --threads {args.threads}"
            + (
                f" --arch {args.arch} --style {args.style} --size {args.size} --name {args.name}"
                if args.name != "shapes"
                else ""
            ),
            "widths": list(widths),
            "scene_seeds": f"0..{args.steps - 1}",
            "seconds": round(train_seconds),
            "torch": torch.__version__,
        },
        "evaluation": {k: round(v, 4) for k, v in metrics.items()},
    }
    (args.out / f"{args.name}.json").write_text(
        json.dumps(facts, indent=2) + "\n", encoding="utf-8"
    )
    print(f"wrote {args.out / args.name}.pt and .json in {train_seconds:.0f} s of training")


if __name__ == "__main__":
    main()
