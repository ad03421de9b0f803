"""``python -m benchmarks.quality``: run the quality benchmark and write its results."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from benchmarks.quality.config import Settings
from benchmarks.quality.figure import draw_figure, figure_rows
from benchmarks.quality.report import body, update_readme, write_markdown
from benchmarks.quality.run import accuracy, run_all

ROOT = Path(__file__).resolve().parents[2]


def parse() -> tuple[Settings, Path, bool]:
    """Settings, the output folder, and whether to update README.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    parser.add_argument("--scenes", type=int, default=Settings.scenes)
    parser.add_argument("--sanity-scenes", type=int, default=Settings.sanity_scenes)
    parser.add_argument("--figure-scenes", type=int, default=Settings.figure_scenes)
    parser.add_argument("--group", type=int, default=Settings.group, help="images per call")
    parser.add_argument("--step", type=int, default=None, help="pixels per deletion step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-file", default=None, help="models.toml (default: demo)")
    parser.add_argument("--model", default=Settings.model)
    parser.add_argument(
        "--style", default=Settings.style, help="scenes: plain (demo model) or textured"
    )
    parser.add_argument("--only", nargs="*", default=[], help="run these methods only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = parser.parse_args()
    settings = Settings(
        scenes=args.scenes,
        sanity_scenes=args.sanity_scenes,
        figure_scenes=min(args.figure_scenes, args.scenes),
        group=args.group,
        step=args.step,
        device=args.device,
        models_file=args.models_file,
        model=args.model,
        style=args.style,
        only=tuple(args.only),
    )
    return settings, args.out, not args.no_readme and args.model == Settings.model


def main() -> None:
    """Run every method, then write quality.md, quality.png and the README section (the
    demo model), or quality-<model>.md and .png (another model)."""
    settings, out, readme = parse()
    began = time.perf_counter()
    bench, rows, references = run_all(settings, partial(print, flush=True))
    text = body(bench, rows, references, accuracy(bench), time.perf_counter() - began)
    out.mkdir(parents=True, exist_ok=True)
    stem = "quality" if settings.model == Settings.model else f"quality-{settings.model}"
    draw_figure(
        out / f"{stem}.png",
        bench.images,
        bench.masks,
        figure_rows(rows, references),
        settings.figure_scenes,
    )
    write_markdown(out / f"{stem}.md", text, f"{stem}.png", settings.model)
    print(f"wrote {out / stem}.md and .png")
    if readme:
        figure = (out / f"{stem}.png").resolve().relative_to(ROOT).as_posix()
        if update_readme(ROOT / "README.md", text, figure):
            print("updated the quality section of README.md")
        else:
            print(
                "README.md has no <!-- quality:start --> / <!-- quality:end --> markers: "
                "left unchanged"
            )


if __name__ == "__main__":
    main()
