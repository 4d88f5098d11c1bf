"""summary.md and report.html escape what users wrote; `distill-eval report` round-trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from distill_eval.report import render_html, render_summary

HOSTILE = "<script>alert('x')</script>|`"


def _doc() -> dict:
    return {
        "schema": 1,
        "verdict": "failed",
        "created": "2026-01-01T00:00:00+0000",
        "counts": {"passed": 0, "failed": 1, "warned": 0, "error": 0},
        "command": ["pytest", "--distill"],
        "models": {
            "student": {
                "path": HOSTILE,
                "factory": None,
                "weights": None,
                "sha256": "ab" * 32,
                "params": 10,
                "format": "torchscript",
            }
        },
        "datasets": {"test": {"path": "t.npz", "sha256": "cd" * 32, "n": 5}},
        "environment": {"python": "3.11"},
        "suites": [
            {
                "name": HOSTILE,
                "file": "suites/x.toml",
                "gate": "estimate",
                "checks": [
                    {
                        "id": "slices",
                        "kind": "slices",
                        "outcome": "failed",
                        "message": f"retention of slice '{HOSTILE}' = 0.5 < min 0.9 (gate: estimate)",
                        "metrics": {"worst_retention": {"value": 0.5, "ci": None}},
                        "bounds": [
                            {
                                "metric": "retention",
                                "op": "min",
                                "bound": 0.9,
                                "ok": False,
                                "value": 0.5,
                                "ci": None,
                                "slice": HOSTILE,
                            }
                        ],
                        "slices": [
                            {
                                "name": HOSTILE,
                                "support": 40,
                                "under_supported": False,
                                "where": "meta.x == '<b>'",
                                "student_score": {"value": 0.45, "ci": None},
                                "teacher_score": {"value": 0.9, "ci": None},
                                "retention": {"value": 0.5, "ci": None},
                                "gap": {"value": 0.45, "ci": None},
                            }
                        ],
                    }
                ],
            }
        ],
    }


def test_html_escapes_every_user_string_and_loads_nothing_external() -> None:
    html = render_html(_doc())
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>" not in html
    assert "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html


def test_markdown_escapes_table_breaking_characters() -> None:
    md = render_summary(_doc())
    assert "<script>" not in md
    row = next(line for line in md.splitlines() if line.startswith("| &lt;script"))
    # a pipe in a name must not add a column: 6 cells, 7 unescaped pipes
    assert row.replace("\\|", "").count("|") == 7
    assert "retention (&lt;script&gt;" in md and "= 0.5 (>= 0.9) ✗" in md


def test_cli_report_round_trip(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_doc()))
    out = tmp_path / "again.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill_eval",
            "report",
            str(results),
            "-o",
            str(out),
            "--summary",
            str(tmp_path / "s.md"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == render_html(_doc())
    assert (tmp_path / "s.md").read_text() == render_summary(_doc())


def test_cli_report_rejects_what_is_not_results(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "distill_eval", "report", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "not a distill_eval results.json" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "distill_eval", "report", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "file not found" in done.stderr and "Traceback" not in done.stderr
