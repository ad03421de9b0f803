"""The README stays true: its generated tables match the code, and it shows the two commands."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_tables():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "readme_tables", ROOT / "scripts/readme_tables.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["settings", "methods"])
def test_generated_tables_are_current(name: str) -> None:
    module = load_tables()
    readme = (ROOT / "README.md").read_text()
    assert module.section(readme, name) == module.SECTIONS[name](), (
        "run: python scripts/readme_tables.py --write"
    )


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
