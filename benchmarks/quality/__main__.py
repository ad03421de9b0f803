"""``python -m benchmarks.quality``: run the quality benchmark and write its results."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from benchmarks.quality.config import EVALUATION_MODELS, EvaluationModel, Settings
from benchmarks.quality.figure import draw_figure, figure_rows
from benchmarks.quality.report import body, update_readme, write_markdown
from benchmarks.quality.run import accuracy, run_all
from benchmarks.quality.summary import (
    current_commit,
    load_runs,
    save_scores,
    summary,
    write_summary,
)

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = {model.name: model for model in EVALUATION_MODELS}


def parse() -> tuple[list[Settings], Path, bool]:
    """One Settings per model to run, the output folder, and whether to update README.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    parser.add_argument(
        "--model",
        nargs="*",
        default=list(REGISTRY),
        help=f"models to judge on (default: every evaluation model, {', '.join(REGISTRY)})",
    )
    parser.add_argument("--scenes", type=int, default=None, help="default: the model's")
    parser.add_argument("--sanity-scenes", type=int, default=None, help="default: the model's")
    parser.add_argument("--figure-scenes", type=int, default=Settings.figure_scenes)
    parser.add_argument("--group", type=int, default=Settings.group, help="images per call")
    parser.add_argument("--step", type=int, default=None, help="pixels per deletion step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-file", default=None, help="for a model not in the registry")
    parser.add_argument("--style", default=None, help="scenes: plain or textured")
    parser.add_argument("--only", nargs="*", default=[], help="run these methods only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = parser.parse_args()
    runs = []
    for name in args.model:
        known = REGISTRY.get(name, EvaluationModel(name, args.models_file, "plain"))
        scenes = args.scenes or known.scenes
        runs.append(
            Settings(
                scenes=scenes,
                sanity_scenes=args.sanity_scenes or min(known.sanity_scenes, scenes),
                figure_scenes=min(args.figure_scenes, scenes),
                group=args.group,
                step=args.step,
                device=args.device,
                models_file=args.models_file or known.models_file,
                model=name,
                style=args.style or known.style,
                only=tuple(args.only),
            )
        )
    return runs, args.out, not args.no_readme and not args.only


def run_one(settings: Settings, out: Path) -> None:
    """Judge every method on one model: ``<stem>.md``, ``.png`` and ``.json``."""
    stem = REGISTRY.get(settings.model, EvaluationModel(settings.model, None, "")).stem
    print(f"== {settings.model}: {settings.scenes} scenes", flush=True)
    commit, began = current_commit(), time.perf_counter()
    bench, rows, references = run_all(settings, partial(print, flush=True))
    seconds, top1 = time.perf_counter() - began, accuracy(bench)
    text = body(bench, rows, references, top1, seconds)
    draw_figure(
        out / f"{stem}.png",
        bench.images,
        bench.masks,
        figure_rows(rows, references),
        settings.figure_scenes,
    )
    write_markdown(out / f"{stem}.md", text, f"{stem}.png", settings.model)
    save_scores(out / f"{stem}.json", bench, rows, references, top1, seconds, commit)
    print(f"wrote {out / stem}.md, .png and .json", flush=True)


def main() -> None:
    """Run every method on each model, then write the summary of every model's saved run
    (``quality-summary.md``) and, unless told not to, the README section."""
    runs, out, readme = parse()
    out.mkdir(parents=True, exist_ok=True)
    for settings in runs:
        run_one(settings, out)
    saved = load_runs(out)
    write_summary(out, saved)
    print(f"wrote {out / 'quality-summary.md'}")
    if not readme:
        return
    text = summary(saved, links="benchmarks/results/")
    if update_readme(ROOT / "README.md", text, "benchmarks/results/quality.png"):
        print("updated the quality section of README.md")
    else:
        print("README.md has no <!-- quality:start --> / <!-- quality:end --> markers: unchanged")


if __name__ == "__main__":
    main()
