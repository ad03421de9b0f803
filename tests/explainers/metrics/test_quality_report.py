"""The quality benchmark's bookkeeping: every method gets a row, README markers are honoured."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.quality.config import REQUIRED_METHODS, Settings
from benchmarks.quality.report import END, START, table_row, update_readme
from benchmarks.quality.run import Row, Scored, effective_params, method_list


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
