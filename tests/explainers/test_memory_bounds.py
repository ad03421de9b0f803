"""Every method's peak memory stays within its chunk's budget at its largest allowed parameters.

The probe (``tests/explainers/memory_probe.py``) runs each method in a fresh process on one
112-px image through a small CNN, at the worker's batch of 64 rows, with the largest values its
parameter model allows (RISE 100,000 masks of 112 cells, LIME 100,000 samples of 2,000 SLIC
segments, occlusion with a 1-px window at a 1-px stride, Smooth Grad-CAM++ 1,000 samples,
Integrated Grad-CAM 1,000 steps, extremal perturbation at step 1 and σ 21, meaningful
perturbation with a full-resolution mask and σ 100 blurs, FMO with every level down to 1-px
cells...), and cancels it at its third progress report: by then everything it sets up has been
allocated, and every chunk after that is the same size. Before this was bounded, RISE drew all
N·s² uniforms at once (5 GB here), extremal perturbation unfolded 0.2 GB per mask row and
LIME's solve held ``(N, K)`` float64 copies (1.6 GB each).

``python -m tests.explainers.memory_probe 224 rise lime ...`` gives the figures at 224 px
(all under 180 MB, LIME's solve 160 MB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.contract.methods import method_specs

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MB = 96.0
"""A method's peak above its resident size before the call, at 112 px and 64 rows a chunk."""
SOLVE_BUDGET_MB = 192.0
"""LIME's ridge solve at its largest (2,000 superpixels): a few K × K float64 matrices."""
LONG = {
    "occlusion",
    "fmo",
    "rise",
    "lime",
    "integrated_gradcam",
    "smooth_gradcam_pp",
    "meaningful_perturbation",
    "extremal_perturbation",
    "neuromask",
}
"""Methods that are still running when the probe cancels them."""


@pytest.fixture(scope="module")
def peaks() -> dict[str, dict[str, object]]:
    names = [*sorted(method_specs()), "evaluate", "lime_solve"]
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "131072",  # large blocks go back to the system when freed
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.explainers.memory_probe", "112", *names],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["method"]: row for row in rows}


@pytest.mark.parametrize("name", [*sorted(method_specs()), "evaluate"])
def test_peak_memory_is_bounded_by_the_chunk(
    peaks: dict[str, dict[str, object]], name: str
) -> None:
    row = peaks[name]
    assert float(row["peak_mb"]) <= BUDGET_MB, row  # type: ignore[arg-type]
    if name in LONG:
        assert row["outcome"] == "cancelled", row  # it really was mid-work


def test_the_lime_solve_is_bounded_by_the_superpixels(peaks: dict[str, dict[str, object]]) -> None:
    assert float(peaks["lime_solve"]["peak_mb"]) <= SOLVE_BUDGET_MB  # type: ignore[arg-type]
