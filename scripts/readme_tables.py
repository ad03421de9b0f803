"""Print (or write into README.md) the tables generated from the code: settings and methods.

python scripts/readme_tables.py           # print both tables
python scripts/readme_tables.py --write   # replace the README sections between markers
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.contract.methods import method_specs
from app.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def settings_table() -> str:
    """Markdown table: variable, default, meaning."""
    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(unset)" if default is None else f"`{default}`"
        lines.append(f"| `{prefix}{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return "default" if value is None else str(value).replace("|", "\\|")


def methods_table() -> str:
    """Markdown table: method, family, lane, passes per image, parameters with defaults, paper."""
    lines = [
        "| method | family | lane | passes per image | parameters (default) | paper |",
        "|---|---|---|---|---|---|",
    ]
    order = ("perturbation", "optimisation", "gradient", "propagation")
    specs = sorted(method_specs().values(), key=lambda s: (order.index(s.family), s.name))
    for spec in specs:
        params = ", ".join(
            f"`{name}`={_shown(field.default)}" for name, field in spec.params.model_fields.items()
        )
        cost = (inspect.getdoc(spec.params.passes) or "").replace("\n", " ")
        lines.append(
            f"| `{spec.name}` | {spec.family} | {spec.lane} | {cost} | {params} | {spec.paper} |"
        )
    return "\n".join(lines)


SECTIONS = {"settings": settings_table, "methods": methods_table}


def markers(name: str) -> tuple[str, str]:
    """The README comments around a generated section."""
    return f"<!-- {name}:table:start -->", f"<!-- {name}:table:end -->"


def section(text: str, name: str) -> str:
    """The current content of a generated section of ``text``."""
    start, end = markers(name)
    return text.split(start)[1].split(end)[0].strip()


def write_readme() -> None:
    """Replace every generated section with the current table."""
    text = README.read_text()
    for name, render in SECTIONS.items():
        start, end = markers(name)
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{render()}\n{end}{tail}"
    README.write_text(text)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print("\n\n".join(render() for render in SECTIONS.values()))
