"""The compatibility matrix's report (``benchmarks/zoo.py``) reads back into the rows it was
written from, so a sweep of a few models can refresh their rows in an earlier report."""

from __future__ import annotations

import argparse

from benchmarks.zoo import merged, report, rows_from_report


def test_a_report_reads_back_into_its_rows_and_says_which_commit_swept_which() -> None:
    def row(arch: str, commit: str, lrp: dict) -> dict:
        return {
            "arch": arch, "size": 64, "params_m": 1.5, "layer": "features.3", "commit": commit,
            "methods": {
                "gradcam": {"status": "ok", "seconds": 0.25},
                "gradcam_pp": {"status": "blank", "reason": "constant map"},
                "lrp": lrp,
            },
        }  # fmt: skip

    refused = {"status": "refused", "reason": "LRP: no rule for layer 'x' (Window)"}
    crash = {"status": "crash", "reason": "RuntimeError: shapes"}
    rows = [row("net_a", "abc1234", refused), row("net_b", "abc1234", crash)]
    rows.append({"arch": "net_c", "size": 64, "not_swept": True})
    args = argparse.Namespace(families=False, threads=1)
    text = report(rows, args) + "\nRun on 2026-11-30 at commit abc1234.\n"
    back = rows_from_report(text)
    assert [r["arch"] for r in back] == ["net_a", "net_b"]  # the one not swept is left out
    assert back[0]["methods"]["lrp"] == refused and back[1]["methods"]["lrp"] == crash
    assert back[0]["methods"]["gradcam"] == {"status": "ok", "seconds": 0.25}
    assert report([*back, rows[2]], args) == report(rows, args)  # the same matrix again
    back[1]["commit"] = "def5678"
    assert "* abc1234: 1 models (net_a)" in report(back, args)
    assert "* def5678: 1 models (net_b)" in report(back, args)
    assert rows_from_report(report(back, args)) == back  # the commits read back too


def test_a_partial_sweep_replaces_its_cells_and_says_so() -> None:
    base = {
        "arch": "net", "size": 64, "params_m": 1.0, "layer": "x", "commit": "abc1234",
        "methods": {
            "gradcam": {"status": "ok", "seconds": 0.5},
            "lrp": {"status": "refused", "reason": "LRP: no rule"},
        },
    }  # fmt: skip
    again = {**base, "commit": "def5678", "methods": {"lrp": {"status": "ok", "seconds": 0.1}}}
    row = merged(again, base)
    assert row["methods"]["gradcam"] == base["methods"]["gradcam"]
    assert row["methods"]["lrp"] == {"status": "ok", "seconds": 0.1}
    text = report([row], argparse.Namespace(families=False, threads=1))
    assert "The lrp cells of net were swept again at def5678." in text
    back = rows_from_report(text)
    assert back[0]["commit"] == "abc1234" and back[0]["rerun"] == row["rerun"]
    assert report(back, argparse.Namespace(families=False, threads=1)) == text
    assert "| net | 64 | 1.0 | `x` | ✓ 0.50 | ✓ 0.10 |" in text
