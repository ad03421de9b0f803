"""Print (or write into README.md) the configuration table generated from ``Settings``.

python scripts/settings_table.py           # print the table
python scripts/settings_table.py --write   # replace the README section between markers
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.settings import Settings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def table() -> str:
    """Markdown table: variable, default, meaning."""
    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(unset)" if default is None else f"`{default}`"
        lines.append(f"| `{prefix}{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)


def write_readme() -> None:
    """Replace the README's settings section with the current table."""
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print(table())
