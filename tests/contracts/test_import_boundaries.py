"""Import rules of DESIGN.md, checked in fresh interpreters.

* ``app`` (the gateway) never imports torch or ``workers``: its image stays small and starts fast.
* ``workers.explainers`` (the method library) never imports Redis, FastAPI or the settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(statement: str) -> set[str]:
    """Top-level names of the modules loaded by ``statement`` in a new interpreter."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_gateway_imports_neither_torch_nor_workers() -> None:
    modules = loaded_after("import app.main")
    assert "fastapi" in modules  # the probe really imported the gateway
    forbidden = {m for m in modules if m.split(".")[0] in {"torch", "torchvision", "workers"}}
    assert not forbidden, f"the gateway imported {sorted(forbidden)}"


@pytest.mark.parametrize("package", ["workers.explainers", "app.contract.methods"])
def test_method_library_and_contract_import_no_service_code(package: str) -> None:
    modules = loaded_after(f"import {package}")
    assert package in modules
    forbidden = {
        m
        for m in modules
        if m.split(".")[0] in {"redis", "fastapi", "starlette", "uvicorn", "pydantic_settings"}
        or m == "app.settings"
    }
    assert not forbidden, f"{package} imported {sorted(forbidden)}"
