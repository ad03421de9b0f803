"""The quality benchmark's bookkeeping: every method gets a row, README markers are honoured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality.config import EVALUATION_MODELS, REQUIRED_METHODS, Settings
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
