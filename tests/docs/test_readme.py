"""The README stays true: its configuration table matches ``Settings``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_settings_table():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "settings_table", ROOT / "scripts/settings_table.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_table_is_current() -> None:
    module = load_settings_table()
    readme = (ROOT / "README.md").read_text()
    section = readme.split(module.START)[1].split(module.END)[0].strip()
    assert section == module.table(), "run: python scripts/settings_table.py --write"


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
