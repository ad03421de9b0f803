"""Every evaluation model's scores side by side: ``quality-<model>.json`` and the summary table.

Each model's run saves its rows as JSON next to its Markdown table; the summary reads the JSON
of every model in :data:`~benchmarks.quality.config.EVALUATION_MODELS` that has one, so one
model can be rerun without the others and the summary still shows the rows of all of them.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.quality.config import EVALUATION_MODELS
from benchmarks.quality.run import Bench, Row, standard_error

TARGET = 0.9
"""Pointing-game share every method should reach on every model (issue 14)."""
CENTRE = "centre prior (Gaussian, σ = ¼ side)"


def _stat(values: Tensor) -> dict[str, float]:
    return {"mean": float(values.float().mean()), "se": standard_error(values)}


def row_record(row: Row) -> dict[str, Any]:
    """The summary statistics of one row (no per-scene values, no maps)."""
    record: dict[str, Any] = {"name": row.name, "family": row.family, "status": row.status}
    if row.message:
        record["message"] = row.message
    if row.changed:
        record["changed"] = row.changed
    if row.scores is not None:
        s = row.scores
        record |= {
            "pointing": _stat(s.pointing),
            "energy": _stat(s.energy),
            "deletion": _stat(s.deletion),
            "insertion": _stat(s.insertion),
        }
    if row.sanity is not None:
        record["sanity"] = float(row.sanity.mean())
    if row.seconds_per_image is not None:
        record["seconds_per_image"] = row.seconds_per_image
    return record


RESULTS = ":(exclude)benchmarks/results"


def current_commit() -> str:
    """The checkout's commit, ``+changes`` when a tracked file outside ``benchmarks/results``
    differs from it (results written by an earlier run are not code the run measures)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", RESULTS)
    return head + ("+changes" if changed else "")


def save_scores(
    path: Path, bench: Bench, rows: list[Row], references: list[Row], accuracy: float,
    seconds: float, commit: str,
) -> None:  # fmt: skip
    """Write one model's run as JSON (read back by :func:`summary`)."""
    n, _, height, width = bench.inputs.shape
    record = {
        "model": bench.handle.name,
        "size": [height, width],
        "scenes": n,
        "style": bench.settings.style,
        "accuracy": accuracy,
        "minutes": seconds / 60,
        "threads": torch.get_num_threads(),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "rows": [row_record(r) for r in rows],
        "references": [row_record(r) for r in references],
    }
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def load_runs(folder: Path) -> list[dict[str, Any]]:
    """The saved run of every evaluation model that has one, in the registry's order."""
    runs = []
    for model in EVALUATION_MODELS:
        path = folder / f"{model.stem}.json"
        if path.exists():
            runs.append(json.loads(path.read_text(encoding="utf-8")) | {"stem": model.stem})
    return runs


def _cell(
    row: dict[str, Any] | None, centre: dict[str, Any], judged: bool = True
) -> tuple[str, bool]:
    """A table cell (pointing ± SE, deletion, insertion) and whether the row meets the target:
    pointing ≥ 90 % and both AUCs better than the centre prior's (always, unless ``judged``)."""
    if row is None or "pointing" not in row:
        status = "not run" if row is None else f"**{row['status']}**"
        return status, False
    pointing, deletion, insertion = row["pointing"], row["deletion"], row["insertion"]
    beats_centre = (
        deletion["mean"] < centre["deletion"]["mean"]
        and insertion["mean"] > centre["insertion"]["mean"]
    )
    meets = not judged or (pointing["mean"] >= TARGET and beats_centre)
    mark = "" if meets else " ✗"
    text = (
        f"{100 * pointing['mean']:.1f} ± {100 * pointing['se']:.1f} % · "
        f"{deletion['mean']:.3f} · {insertion['mean']:.3f}{mark}"
    )
    return text, meets


def summary(runs: list[dict[str, Any]], links: str = "") -> str:
    """Method × model: pointing game ± its standard error · deletion AUC · insertion AUC;
    each model's column links to ``<links><stem>.md``."""
    if not runs:
        return "No saved runs."
    header = "| method | " + " | ".join(
        f"[`{r['model']}`]({links}{r['stem']}.md) {r['size'][0]} px, {r['scenes']} scenes"
        for r in runs
    )
    lines = [header + " |", "|---|" + "---:|" * len(runs)]
    by_model = [{row["name"]: row for row in r["rows"] + r["references"]} for r in runs]
    names = list(dict.fromkeys(row["name"] for r in runs for row in r["rows"]))
    failing = []
    for name in [*names, CENTRE]:
        cells = [_cell(rows.get(name), rows[CENTRE], name != CENTRE) for rows in by_model]
        lines.append(f"| {name} | " + " | ".join(text for text, _ in cells) + " |")
        failing += [name] if not all(meets for _, meets in cells) else []
    runs_text = "; ".join(
        f"`{r['model']}` {r['date']} at {r['commit']} ({r['minutes']:.0f} min, "
        f"{r['threads']} threads, top-1 {100 * r['accuracy']:.1f} %"
        + "".join(
            f", `{row['name']}` rerun alone at {row['commit']} {row['date']}"
            for row in r["rows"]
            if "commit" in row
        )
        + ")"
        for r in runs
    )
    verdict = (
        "Every method meets the target on every model."
        if not failing
        else "Below the target somewhere (✗): " + ", ".join(f"`{n}`" for n in failing) + "."
    )
    return "\n".join(
        [
            "Each cell: pointing game ± its standard error · deletion AUC (↓) · insertion AUC "
            f"(↑), every method at its defaults. ✗: pointing below {100 * TARGET:.0f} % or an "
            "AUC no better than the centre prior's (last row). " + verdict,
            "",
            *lines,
            "",
            f"Runs: {runs_text}.",
        ]
    )


def write_summary(folder: Path, runs: list[dict[str, Any]]) -> None:
    """Write ``quality-summary.md`` in ``folder`` from the saved ``runs``."""
    text = summary(runs)
    (folder / "quality-summary.md").write_text(
        "# Quality of every method on every evaluation model\n\n"
        "Written by `python -m benchmarks.quality` from the `quality*.json` files next to "
        "this one; do not edit by hand.\n\n" + text + "\n",
        encoding="utf-8",
    )
