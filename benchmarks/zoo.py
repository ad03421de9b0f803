"""Every torchvision classifier against every method: the compatibility matrix.

``.venv/bin/python -m benchmarks.zoo --out benchmarks/results/zoo.md`` builds each
classification architecture that ``torchvision.models.list_models`` returns (random weights;
a small input where the architecture allows one) and prepares it as a worker does (eval mode,
warm-up forward, automatic CAM layer). Then, for each of the 17 methods, it explains one image
(top-1 class) and records what came back:

* ``ok`` — a finite map that is not constant, with the seconds it took;
* ``blank`` — a finite constant map (a random network's top class can have negative evidence
  everywhere at a layer: the CAM note says so);
* a refusal — the 422 detail the client would get (why the method cannot run on that
  architecture);
* ``crash`` — any other exception: a defect.

Parameters are cut to keep the sweep to minutes per model on a CPU (``SWEEP_PARAMS``: fewer
masks, samples and iterations); the matrix is about what runs and what each method says, not
about quality or speed. ``--families`` sweeps one model per family (:data:`FAMILIES`) instead
of all of them (~40 min on a 2-core CPU against several hours). ``--timing`` adds, for one
model per family at 224 px, the seconds of ``gradcam``, ``fmo`` (defaults) and ``rise``
(``--rise-masks``, default 500), in a file of their own (``zoo-timing.md`` beside ``--out``).

torchvision initialises a ViT's head to zero, so a random ViT predicts the same for every
input and every map is constant; the sweep gives zero-initialised heads small random weights.
Results are cached per model in ``--cache`` (JSON), so a long sweep can be resumed, shared
with a second process (``--reverse`` sweeps from the last model), or reported part-way
(``--cached-only``: the models not swept yet are listed as such). ``--from-report`` fills the
cache from an earlier report's rows (their cells: status, seconds, reason, and the commit its
note names), so a change that concerns a few models reruns only those (the rows of
``--models`` are swept again, or only their ``--methods`` cells) and the report says which
commit swept which rows and cells.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from benchmarks.quality.summary import current_commit
from workers import zoo_torchvision as tv
from workers.explainers import ExplainerError, explainer_names, get_explainer
from workers.explainers.base import ModelHandle
from workers.zoo import prepare

METHODS = [
    "gradcam", "gradcam_pp", "xgradcam", "layercam", "scorecam", "integrated_gradcam",
    "smooth_gradcam_pp", "lrp", "gradcam_lrp", "gradual_extrapolation", "occlusion", "fmo",
    "rise", "lime", "extremal_perturbation", "meaningful_perturbation", "neuromask",
]  # fmt: skip
SWEEP_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradcam": {"steps": 4},
    "smooth_gradcam_pp": {"n_samples": 3},
    "occlusion": {"window": 16, "stride": 16},
    "rise": {"n_masks": 64},
    "lime": {"num_samples": 32, "segmentation": "slic", "segments": 16},
    "extremal_perturbation": {"iterations": 10, "step": 3, "sigma": 6.0},
    "meaningful_perturbation": {"iterations": 10, "mask_scale": 4},
    "neuromask": {"iterations": 10},
}
SIZES = {"inception_v3": 160, "vit_h_14": 56, "maxvit_t": 224}
"""Input sizes where the sweep's default (64 px) does not fit the architecture."""
FAMILIES = [
    "resnet50", "vgg16", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
    "convnext_tiny", "regnet_y_800mf", "inception_v3", "googlenet", "shufflenet_v2_x1_0",
    "squeezenet1_1", "mnasnet1_0", "alexnet", "vit_b_16", "swin_t", "maxvit_t",
]  # fmt: skip


def build(arch: str, size: int) -> ModelHandle:
    """``arch`` with random weights, prepared on the CPU as a worker prepares a model."""
    kwargs: dict[str, Any] = {}
    if arch.startswith("vit_"):
        kwargs["image_size"] = size
    if arch.startswith("maxvit"):
        kwargs["input_size"] = (size, size)
    if arch in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    torch.manual_seed(0)
    model = torchvision.models.get_model_builder(arch)(weights=None, **kwargs)
    for module in model.modules():  # a zero head predicts the same for every input
        if isinstance(module, nn.Linear) and not bool(module.weight.any()):
            nn.init.normal_(module.weight, std=0.01)
    handle = ModelHandle(
        arch,
        model,
        (size, size),
        default_layer=tv.default_layer(arch, model),
        architecture=f"torchvision:{arch}",
    )
    return prepare(handle, torch.device("cpu"))


def image(size: int) -> torch.Tensor:
    """One smooth random image (4×4 colour cells, bilinear), normalised like ImageNet."""
    cells = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    picture = torch.nn.functional.interpolate(cells, size=(size, size), mode="bilinear")
    mean = torch.tensor(tv.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tv.IMAGENET_STD).view(1, 3, 1, 1)
    return (picture - mean) / std


def run_one(handle: ModelHandle, method: str, x: torch.Tensor, params: dict[str, Any]) -> dict:
    """Explain ``x`` with ``method``; the outcome as a JSON-able dict."""
    started = time.perf_counter()
    try:
        explanation = get_explainer(method)(handle, x, torch.tensor([-1]), **params)
    except ExplainerError as error:
        return {"status": "refused", "reason": str(error)}
    except Exception as error:
        return {"status": "crash", "reason": f"{type(error).__name__}: {error}"[:300]}
    seconds = time.perf_counter() - started
    saliency = explanation.saliency
    meta = explanation.meta[0] if explanation.meta else {}
    out = {"seconds": round(seconds, 3), "layer": meta.get("layer")}
    if not bool(torch.isfinite(saliency).all()):
        return {**out, "status": "crash", "reason": "non-finite map"}
    if float(saliency.std()) == 0.0:
        return {**out, "status": "blank", "reason": meta.get("note", "constant map")}
    return {**out, "status": "ok"}


def sweep_model(arch: str, size: int, methods: list[str]) -> dict[str, Any]:
    """One row of the matrix."""
    started = time.perf_counter()
    try:
        handle = build(arch, size)
    except Exception as error:
        return {"arch": arch, "size": size, "error": f"{type(error).__name__}: {error}"[:300]}
    params = sum(p.numel() for p in handle.model.parameters())
    x = image(size)
    row: dict[str, Any] = {
        "arch": arch, "size": size, "params_m": round(params / 1e6, 1),
        "layer": handle.default_layer, "methods": {},
    }  # fmt: skip
    for method in methods:
        row["methods"][method] = run_one(handle, method, x, SWEEP_PARAMS.get(method, {}))
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["commit"] = current_commit()
    return row


def timing(arch: str, rise_masks: int) -> dict[str, float]:
    """Seconds of gradcam, fmo (defaults) and rise at 224 px on one model."""
    handle = build(arch, 224 if arch not in ("inception_v3",) else 299)
    x = image(handle.input_size[0])
    out = {}
    for method, params in (("gradcam", {}), ("fmo", {}), ("rise", {"n_masks": rise_masks})):
        warm = {"n_masks": 16} if method == "rise" else {}
        get_explainer(method)(handle, x, torch.tensor([-1]), **warm)
        started = time.perf_counter()
        get_explainer(method)(handle, x, torch.tensor([-1]), **params)
        out[method] = round(time.perf_counter() - started, 2)
    return out


SYMBOL = {"ok": "✓", "blank": "○", "refused": "✗", "crash": "‼"}


def report(rows: list[dict[str, Any]], args: Any) -> str:
    """The markdown of the matrix and its reasons."""
    methods = [m for m in METHODS if any(m in r.get("methods", {}) for r in rows)]
    reasons: dict[str, int] = {}
    lines = [
        "# Every torchvision classifier against every method",
        "",
        f"Command: `.venv/bin/python -m benchmarks.zoo --out benchmarks/results/zoo.md"
        f"{' --families' if args.families else ''}"
        f"{f' --threads {args.threads}' if args.threads != 2 else ''}` "
        "(`benchmarks/zoo.py`: what it does and the cut "
        "parameters). torchvision "
        f"{torchvision.__version__}, torch {torch.__version__}, {platform.machine()} CPU, "
        "random weights.",
        "",
        "✓ a finite, varying map (seconds); ○ a constant map (for a CAM: negative evidence "
        "everywhere for the random network's top class); ✗ⁿ refused with reason n (the 422 "
        "detail, below); ‼ a crash (a defect). *layer*: the default / automatic CAM layer.",
        "",
        "| model | px | M params | layer | " + " | ".join(methods) + " |",
        "|---|---:|---:|---|" + "---|" * len(methods),
    ]
    counts = dict.fromkeys(SYMBOL, 0)
    for row in rows:
        if row.get("not_swept"):
            lines.append(f"| {row['arch']} | {row['size']} | | not swept yet |")
            continue
        if "error" in row:
            lines.append(f"| {row['arch']} | {row['size']} | | build failed: {row['error']} |")
            continue
        cells = []
        for method in methods:
            got = row["methods"].get(method, {})
            status = got.get("status", "")
            counts[status] = counts.get(status, 0) + 1
            if status == "ok":
                cells.append(f"✓ {got['seconds']:.2f}")
            elif status in ("refused", "crash"):
                key = _reason_key(got["reason"])
                number = reasons.setdefault(key, len(reasons) + 1)
                cells.append(f"{SYMBOL[status]}{number}")
            else:
                cells.append(SYMBOL.get(status, "?"))
        layer = row.get("layer") or "—"
        lines.append(
            f"| {row['arch']} | {row['size']} | {row['params_m']} | `{layer}` | "
            + " | ".join(cells)
            + " |"
        )
    total = sum(counts.values())
    swept = [row for row in rows if not row.get("not_swept")]
    lines += [
        "",
        f"{len(swept)} models{f' (of {len(rows)})' if len(swept) < len(rows) else ''}"
        f" × {len(methods)} methods: "
        + ", ".join(f"{counts.get(s, 0)} {SYMBOL[s]}" for s in SYMBOL)
        + f" (of {total}).",
        "",
        "Reasons:",
        "",
    ]
    lines += [f"{n}. {text}" for text, n in sorted(reasons.items(), key=lambda kv: kv[1])]
    lines += [] if reasons else ["none: every method ran on every model swept."]
    commits: dict[str, list[str]] = {}
    for row in swept:
        commits.setdefault(row.get("commit", "unknown"), []).append(row["arch"])
    if set(commits) - {"unknown"}:
        lines += ["", "Rows swept at each commit:", ""]
        lines += [
            f"* {commit}: {len(archs)} models"
            + (f" ({', '.join(archs)})" if len(archs) <= 10 else "")
            for commit, archs in commits.items()
        ]
    reruns: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for row in swept:
        if "rerun" in row:
            done = row["rerun"]
            reruns.setdefault((done["commit"], tuple(done["methods"])), []).append(row["arch"])
    for (commit, cells), archs in reruns.items():
        what = f"The {', '.join(cells)} cells of {', '.join(archs)}"
        lines += ["", f"{what} were swept again at {commit}."]
    return "\n".join(lines) + "\n"


def rows_from_report(text: str) -> list[dict[str, Any]]:
    """The swept rows of an earlier :func:`report`, as cache rows (a blank cell's note is not
    in the report: "constant map")."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    methods = [cell.strip() for cell in lines[header].strip().strip("|").split("|")][4:]
    reasons = dict(re.findall(r"^(\d+)\. (.*)$", text.split("\nReasons:\n", 1)[-1], re.M))
    commit = re.search(r"at commit ([0-9a-f]{7,40})", text)
    default, commits = commit.group(1) if commit else "unknown", {}
    for sha, names in re.findall(r"^\* ([0-9a-f]{7,40}): \d+ models(?: \((.*)\))?$", text, re.M):
        if names:
            commits |= dict.fromkeys(names.split(", "), sha)
        else:  # the list names the models of the smaller groups only
            default = sha
    reruns = {}
    for cells, archs, sha in re.findall(
        r"^The (.+) cells of (.+) were swept again at ([0-9a-f]{7,40})\.$", text, re.M
    ):
        done = {"commit": sha, "methods": cells.split(", ")}
        reruns |= {arch: dict(done) for arch in archs.split(", ")}
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("| "):
            break
        arch, size, params, layer, *marks = (c.strip() for c in line.strip().strip("|").split("|"))
        if not params:  # not swept, or failed to build
            continue
        outcomes = {}
        for method, mark in zip(methods, marks, strict=True):
            if mark.startswith("✓"):
                outcomes[method] = {"status": "ok", "seconds": float(mark[1:])}
            elif mark == SYMBOL["blank"]:
                outcomes[method] = {"status": "blank", "reason": "constant map"}
            else:
                status = "refused" if mark.startswith(SYMBOL["refused"]) else "crash"
                outcomes[method] = {"status": status, "reason": reasons[mark[1:]]}
        rows.append({
            "arch": arch, "size": int(size), "params_m": float(params),
            "layer": None if layer.strip("`") == "—" else layer.strip("`"), "methods": outcomes,
            "commit": commits.get(arch, default),
            **({"rerun": reruns[arch]} if arch in reruns else {}),
        })  # fmt: skip
    return rows


def timing_report(timings: dict[str, dict[str, float]], args: Any) -> str:
    """The markdown of the 224 px timings (``--timing``), one model per family."""
    lines = [
        "# Seconds of three methods at 224 px, one torchvision model per family",
        "",
        f"Command: `.venv/bin/python -m benchmarks.zoo --families --timing --threads "
        f"{args.threads} --out benchmarks/results/zoo.md` (writes this file beside the matrix). "
        f"torch {torch.__version__}, {platform.machine()} CPU, {args.threads} torch thread(s), "
        f"random weights: `gradcam`, `fmo` at its defaults, `rise` with {args.rise_masks} masks.",
        "",
        "| model | gradcam | fmo | rise |",
        "|---|---:|---:|---:|",
    ]
    for arch, got in timings.items():
        lines.append(f"| {arch} | {got['gradcam']} | {got['fmo']} | {got['rise']} |")
    return "\n".join(lines) + "\n"


def _reason_key(reason: str) -> str:
    """A reason with the layer name, shapes and model-specific numbers kept (the first line)."""
    return reason.splitlines()[0][:240]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument(
        "--families", action="store_true", help="one model per family (FAMILIES), not all"
    )
    parser.add_argument("--methods", default="", help="comma-separated (default: all 17)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/xplain-zoo"))
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--rise-masks", type=int, default=500)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--reverse", action="store_true", help="sweep from the last model (a second process)"
    )
    parser.add_argument(
        "--cached-only", action="store_true", help="report what the cache holds, sweep nothing"
    )
    parser.add_argument(
        "--from-report", type=Path, help="fill the cache with this report's rows (not --models')"
    )
    return parser.parse_args()


def seed_cache(report_file: Path, cache: Path, rerun: set[str]) -> None:
    """The cache holds ``report_file``'s rows; those of ``rerun`` (swept again) are kept aside
    as ``<arch>.base.json``, for the cells a partial sweep (``--methods``) does not redo."""
    for row in rows_from_report(report_file.read_text(encoding="utf-8")):
        name = f"{row['arch']}.base.json" if row["arch"] in rerun else f"{row['arch']}.json"
        (cache / name).write_text(json.dumps(row))
    for arch in rerun:
        (cache / f"{arch}.json").unlink(missing_ok=True)


def merged(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A partial sweep's ``row`` over the earlier ``base`` row: its cells replace the base's,
    and the row says which cells were rerun at which commit."""
    if "error" in row:
        return row
    rerun = {"commit": row.get("commit", "unknown"), "methods": list(row["methods"])}
    return {**base, "methods": {**base["methods"], **row["methods"]}, "rerun": rerun}


def collect(
    archs: list[str], methods: list[str], args: argparse.Namespace, sweep: set[str] | None = None
) -> list[dict]:
    """Every model's row: from the cache, or swept now (and cached) if it is in ``sweep``
    (None: any)."""
    rows = []
    for arch in reversed(archs) if args.reverse else archs:
        cached = args.cache / f"{arch}.json"
        if cached.is_file():
            row = json.loads(cached.read_text())
        elif args.cached_only or (sweep is not None and arch not in sweep):
            row = {"arch": arch, "size": SIZES.get(arch, args.size), "not_swept": True}
        else:
            row = sweep_model(arch, SIZES.get(arch, args.size), methods)
            base = args.cache / f"{arch}.base.json"
            if base.is_file() and set(methods) < set(METHODS):
                row = merged(row, json.loads(base.read_text()))
            cached.write_text(json.dumps(row))
            gc.collect()
        print(arch, row.get("seconds", row.get("error")), flush=True)
        rows.append(row)
    return rows[::-1] if args.reverse else rows


def collect_timings(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``--timing``: one model per family at 224 px (cached too)."""
    timings = {}
    for arch in FAMILIES:
        cached = args.cache / f"timing-{arch}-{args.rise_masks}.json"
        if not cached.is_file():
            cached.write_text(json.dumps(timing(arch, args.rise_masks)))
            gc.collect()
        timings[arch] = json.loads(cached.read_text())
        print(arch, timings[arch], flush=True)
    return timings


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    archs = args.models.split(",") if args.models else tv.architectures()
    if args.families:
        archs = FAMILIES
    known = set(explainer_names())
    methods = [m for m in (args.methods.split(",") if args.methods else METHODS) if m in known]
    args.cache.mkdir(parents=True, exist_ok=True)
    sweep = None
    if args.from_report:  # the report's rows, and those of --models swept again
        sweep = set(args.models.split(",")) - {""}
        seed_cache(args.from_report, args.cache, sweep)
        archs = tv.architectures()
    rows = collect(archs, methods, args, sweep)
    timings = collect_timings(args) if args.timing else {}
    text = report(rows, args)
    timed = timing_report(timings, args) if timings else ""
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        if timed:
            args.out.with_name(f"{args.out.stem}-timing.md").write_text(timed, encoding="utf-8")
    else:
        print(text + ("\n" + timed if timed else ""))


if __name__ == "__main__":
    main()
