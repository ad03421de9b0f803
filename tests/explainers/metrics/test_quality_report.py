"""The quality benchmark's bookkeeping: every method gets a row, README markers are honoured."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from benchmarks.quality.config import EVALUATION_MODELS, REQUIRED_METHODS, Settings
from benchmarks.quality.figure import GAP, TILE, draw_figure
from benchmarks.quality.merge import merge_rerun
from benchmarks.quality.report import END, START, table_row, update_readme
from benchmarks.quality.run import Row, Scored, effective_params, method_list
from benchmarks.quality.summary import CENTRE, load_runs, row_record, summary


def test_every_required_and_catalogued_method_is_listed() -> None:
    names = [name for name, _ in method_list()]
    assert set(REQUIRED_METHODS) <= set(names)
    assert len(names) == len(set(names))


def test_reduced_parameters_are_validated_and_reported() -> None:
    settings = Settings(reduced={"occlusion": {"stride": 16, "no_such_key": 1}})
    params, changed = effective_params("occlusion", settings)
    assert changed == {"stride": 16}
    assert params["stride"] == 16 and params["window"] is None  # scaled with the input


def test_missing_and_error_rows_keep_their_line() -> None:
    missing = table_row(Row("lime", "perturbation", "missing", "not registered"))
    assert missing.startswith("| lime | perturbation | **missing**: not registered |")
    assert missing.count("|") == 11  # as many cells as the header
    error = table_row(Row("rise", "perturbation", "error", "ValueError: a | b"))
    assert "a \\| b" in error and error.count(" | ") >= 9
    scores = Scored(*(torch.tensor([0.0, 1.0]) for _ in range(4)))
    ok = table_row(Row("gradcam", "gradient", "ok", scores=scores, sanity=torch.tensor([0.5])))
    assert "| 50.0 % | 50.0 % | 0.500 | 0.500 | 0.50 |" in ok


def test_readme_section_is_replaced_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    assert not update_readme(readme, "table", "fig.png")
    assert readme.read_text() == "intro\n"
    readme.write_text(f"intro\n{START}\nold\n{END}\nrest\n")
    assert update_readme(readme, "new table", "fig.png")
    text = readme.read_text()
    assert text.startswith(f"intro\n{START}\nnew table")
    assert "old" not in text and text.endswith(f"{END}\nrest\n")
    assert update_readme(readme, "newer", "fig.png")
    assert readme.read_text().count(START) == 1


def _run(model: str, pointing: list[float], deletion: float) -> dict[str, Any]:
    scores = Scored(
        torch.tensor(pointing), torch.tensor(pointing), torch.tensor([deletion]),
        torch.tensor([0.9]),
    )  # fmt: skip
    centre = Scored(*(torch.tensor([0.5]) for _ in range(4)))
    return {
        "model": model, "stem": f"quality-{model}", "size": [112, 112], "scenes": 2,
        "date": "2026-11-30", "commit": "abc", "minutes": 1.0, "threads": 1, "accuracy": 1.0,
        "rows": [row_record(Row("gradcam", "gradient", "ok", scores=scores))],
        "references": [row_record(Row(CENTRE, "reference", "reference", scores=centre))],
    }  # fmt: skip


def test_summary_marks_a_method_below_target_on_any_model() -> None:
    good = _run("a", [1.0, 1.0], deletion=0.2)
    assert "Every method meets the target" in summary([good, _run("b", [1.0, 1.0], 0.2)])
    missed = summary([good, _run("b", [1.0, 0.0], 0.2)], links="results/")
    assert "| gradcam | 100.0 ± 0.0 % · 0.200 · 0.900 | 50.0 ± 50.0 % · 0.200 · 0.900 ✗ |" in missed
    assert "Below the target somewhere (✗): `gradcam`" in missed
    assert "[`b`](results/quality-b.md)" in missed
    worse_than_centre = summary([_run("a", [1.0, 1.0], deletion=0.6)])
    assert "0.600 · 0.900 ✗" in worse_than_centre


def test_summary_reads_the_saved_runs_in_registry_order(tmp_path: Path) -> None:
    for model in reversed(EVALUATION_MODELS):
        (tmp_path / f"{model.stem}.json").write_text(json.dumps(_run(model.name, [1.0], 0.2)))
    runs = load_runs(tmp_path)
    assert [r["model"] for r in runs] == [m.name for m in EVALUATION_MODELS]
    assert runs[0]["stem"] == "quality"


def _save(stem: Path, rows: list[Row], commit: str, maps: Tensor) -> None:
    """A saved run of ``rows`` as ``python -m benchmarks.quality`` writes it (two scenes)."""
    images, masks = torch.rand(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.bool)
    run = _run("a", [0.5], 0.5) | {"rows": [row_record(r) for r in rows], "commit": commit}
    stem.with_suffix(".json").write_text(json.dumps(run | {"date": "2026-12-01"}))
    text = ["* One run took 1.0 min.", "", *(table_row(r) for r in rows), ""]
    stem.with_suffix(".md").write_text("\n".join(text))
    draw_figure(stem.with_suffix(".png"), images, masks, [replace(r, maps=maps) for r in rows], 2)


def test_a_rerun_of_one_method_replaces_its_row_column_and_commit_only(tmp_path: Path) -> None:
    halves, ones = (Scored(*(torch.tensor([v, v]) for _ in range(4))) for v in (0.5, 1.0))
    old = [Row(n, "f", "ok", scores=halves) for n in ("gradcam", "lime", "rise")]
    saved, rerun = tmp_path / "quality-a", tmp_path / "rerun" / "quality-a"
    rerun.parent.mkdir()
    _save(saved, old, "abc", torch.zeros(2, 16, 16))
    lime = Row("lime", "f", "ok", scores=ones)
    _save(rerun, [lime], "def", torch.ones(2, 16, 16))
    before = np.asarray(Image.open(saved.with_suffix(".png")))
    for _ in range(2):  # a second merge replaces the first's line
        assert merge_rerun(rerun, saved) == ["lime"]
    records = json.loads(saved.with_suffix(".json").read_text())["rows"]
    assert records[0] == row_record(old[0]) and records[2] == row_record(old[2])  # untouched
    assert records[1] == row_record(lime) | {"commit": "def", "date": "2026-12-01"}
    md = saved.with_suffix(".md").read_text().splitlines()
    assert md[3:6] == [table_row(old[0]), table_row(lime), table_row(old[2])]
    assert [line for line in md if line.startswith("* Rerun alone")] == [
        "* Rerun alone: `lime` at def on 2026-12-01 (1.0 min; their rows and figure columns, "
        "s / image on that run's machine). The other rows: the run above."
    ]
    after = np.asarray(Image.open(saved.with_suffix(".png")))
    new = np.asarray(Image.open(rerun.with_suffix(".png")))
    column = slice(2 * (TILE + GAP), 2 * (TILE + GAP) + TILE)  # scene, gradcam, lime, rise
    assert (after[:, column] == new[:, TILE + GAP : 2 * TILE + GAP]).all()
    assert (after[:, : column.start] == before[:, : column.start]).all()
    assert (after[:, column.stop :] == before[:, column.stop :]).all()
    assert (after[:, column] != before[:, column]).any()
    runs = [json.loads(saved.with_suffix(".json").read_text()) | {"stem": "quality-a"}]
    assert "at abc (1 min, 1 threads, top-1 100.0 %, `lime` rerun alone at def" in summary(runs)
    _save(rerun, [Row("lrp", "f", "ok", scores=ones)], "def", torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match="not in the saved run"):
        merge_rerun(rerun, saved)
