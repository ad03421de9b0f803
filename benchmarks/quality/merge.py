"""Merge a rerun of some methods into the saved runs: ``python -m benchmarks.quality.merge DIR``.

A change to one method then reruns that method, not every method on every model (hours on a
small CPU)::

    python -m benchmarks.quality --only neuromask --out /tmp/rerun --no-readme
    python -m benchmarks.quality.merge /tmp/rerun   # then: python -m benchmarks.quality --model

Each model's rerun in ``DIR`` (``<stem>.json``, ``.md``, ``.png`` written by ``--only``)
replaces the saved rows of the same name in ``benchmarks/results/<stem>.json``, their lines of
the table in ``<stem>.md`` and their columns of ``<stem>.png``. Each merged row keeps the
commit and the date it ran at (``commit`` and ``date`` in its JSON record, a line under the
run's own in the Markdown), so no row claims a commit it did not run at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from benchmarks.quality.config import EVALUATION_MODELS
from benchmarks.quality.figure import GAP, TILE

RESULTS = Path(__file__).resolve().parents[1] / "results"
RERUN = "* Rerun alone"


def merge_rerun(rerun: Path, saved: Path) -> list[str]:
    """Merge the run ``rerun`` (a stem: ``.json``, ``.md``, ``.png``) into ``saved``; the
    merged methods' names."""
    new, old = (json.loads(s.with_suffix(".json").read_text("utf-8")) for s in (rerun, saved))
    names = [record["name"] for record in old["rows"]]
    missing = [record["name"] for record in new["rows"] if record["name"] not in names]
    if missing or new["scenes"] != old["scenes"]:
        raise ValueError(f"{rerun.name}: {missing or 'other scenes'} not in the saved run")
    new_lines = rerun.with_suffix(".md").read_text("utf-8").splitlines()
    lines = saved.with_suffix(".md").read_text("utf-8").splitlines()
    sheet, source = (Image.open(s.with_suffix(".png")).convert("RGB") for s in (saved, rerun))
    took = next(i for i, line in enumerate(lines) if line.startswith("* One run took"))
    merged = []
    for column, record in enumerate(new["rows"], start=1):
        name, index = record["name"], names.index(record["name"])
        old["rows"][index] = record | {"commit": new["commit"], "date": new["date"]}
        prefix = f"| {name} | "
        at = next(i for i, line in enumerate(lines) if line.startswith(prefix))
        lines[at] = next(line for line in new_lines if line.startswith(prefix))
        left = column * (TILE + GAP)
        tiles = source.crop((left, 0, left + TILE, source.height))
        sheet.paste(tiles, ((1 + index) * (TILE + GAP), 0))
        # one provenance line per method, so a later rerun of one replaces only its own
        lines = [line for line in lines if not line.startswith(f"{RERUN}: `{name}` ")]
        lines.insert(
            took + 1,
            f"{RERUN}: `{name}` at {new['commit']} on {new['date']} ({new['minutes']:.1f} min; "
            "their rows and figure columns, s / image on that run's machine). The other rows: "
            "the run above.",
        )
        merged.append(name)
    saved.with_suffix(".json").write_text(
        json.dumps(old, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    saved.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sheet.save(saved.with_suffix(".png"), optimize=True)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.merge", description=__doc__)
    parser.add_argument("rerun", type=Path, help="the --out folder of an --only run")
    parser.add_argument("--into", type=Path, default=RESULTS)
    args = parser.parse_args()
    for model in EVALUATION_MODELS:
        if (args.rerun / f"{model.stem}.json").exists():
            names = merge_rerun(args.rerun / model.stem, args.into / model.stem)
            print(f"{model.name}: merged {', '.join(names)} into {args.into / model.stem}.*")


if __name__ == "__main__":
    main()
