"""Under pytest-xdist the controller writes the reports once, with every check and a serial run's values."""

from __future__ import annotations

import json
from pathlib import Path

import planted
import pytest

pytest.importorskip("xdist")

pytestmark = pytest.mark.slow

DISCOVER = """
[[check]]
id = "discovered"
kind = "slices"
discover = true
min = { retention = 0.8 }
"""

TIMING = ("created", "environment", "command")


def project(pytester: pytest.Pytester) -> Path:
    planted.write_project(pytester.path, student="broken_slice")
    (pytester.path / "suites" / "planted.toml").write_text(planted.SUITE + DISCOVER)
    return pytester.path / "reports"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # every run computes its outputs, so "loaded" in the models' provenance is the same in both
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--distill", "--distill-no-cache", *args)


def without_timing(doc: dict) -> dict:
    doc = {k: v for k, v in doc.items() if k not in TIMING}
    for suite in doc["suites"]:
        for check in suite["checks"]:
            check.pop("duration_s")
    return doc


def test_workers_results_equal_a_serial_run(pytester: pytest.Pytester) -> None:
    reports = project(pytester)
    serial = run(pytester)
    serial.assert_outcomes(passed=4, failed=1)
    serial_doc = json.loads((reports / "results.json").read_text())
    serial_summary = (reports / "summary.md").read_text()
    for name in ("results.json", "summary.md", "report.html"):
        (reports / name).unlink()

    parallel = run(pytester, "-n", "2", "--junitxml=junit.xml")
    parallel.assert_outcomes(passed=4, failed=1)
    parallel.stdout.fnmatch_lines(["*verdict: failed; reports written to reports/*"])
    doc = json.loads((reports / "results.json").read_text())

    assert [c["id"] for c in doc["suites"][0]["checks"]] == [
        "calibration",
        "agreement",
        "slices",
        "copied_errors",
        "discovered",
    ]
    assert set(doc["models"]) == {"teacher", "student"} and set(doc["datasets"]) == {"test"}
    assert without_timing(doc) == without_timing(serial_doc)
    assert (reports / "summary.md").read_text() == serial_summary
    assert (reports / "report.html").is_file()
    # the result travels on the report, not as a user property: JUnit XML stays small
    assert "distill_eval" not in (pytester.path / "junit.xml").read_text()


def test_accept_from_the_controller(pytester: pytest.Pytester) -> None:
    reports = project(pytester)
    result = run(pytester, "-n", "2", "--distill-accept")
    result.stdout.fnmatch_lines(["*baseline accepted: this run's results stored in *baseline.json*"])
    assert json.loads((reports / "baseline.json").read_text()) == json.loads((reports / "results.json").read_text())


def test_k_under_xdist_reports_only_the_selected_checks(pytester: pytest.Pytester) -> None:
    reports = project(pytester)
    run(pytester, "-n", "2", "-k", "calibration or agreement").assert_outcomes(passed=2)
    doc = json.loads((reports / "results.json").read_text())
    assert [c["id"] for c in doc["suites"][0]["checks"]] == ["calibration", "agreement"]
    assert doc["counts"]["passed"] == 2


def test_every_kind_reaches_the_controller(pytester: pytest.Pytester) -> None:
    # latency and leakage extras carry machine facts and ids: all must survive execnet's serialiser
    reports = project(pytester)
    suite = pytester.path / "suites" / "planted.toml"
    suite.write_text(
        suite.read_text()
        + '\n[[check]]\nkind = "latency"\nmin_time_s = 0.1\nwarmup = 2\n'
        + '\n[[check]]\nkind = "regression"\nbaseline = "good"\n'
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=6, failed=1)
    doc = json.loads((reports / "results.json").read_text())
    kinds = [c["kind"] for c in doc["suites"][0]["checks"]]
    assert kinds == ["calibration", "agreement", "slices", "copied_errors", "slices", "latency", "regression"]
    (latency,) = [c for c in doc["suites"][0]["checks"] if c["kind"] == "latency"]
    assert latency["machine"]["torch"] and latency["pairs"] > 0


def test_a_warn_check_a_filter_fails_and_deselected_checks_reach_the_controllers_report(
    pytester: pytest.Pytester,
) -> None:
    import digits

    pytester.makefile(".toml", pyproject=digits.pyproject(dataset='source = "sklearn:digits"'))
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "gate.toml").write_text(
        '[suite]\nname = "gate"\n\n[[check]]\nkind = "agreement"\nseverity = "warn"\nmin = { top1 = 0.999 }\n'
        '\n[[check]]\nkind = "calibration"\n'
    )
    result = run(pytester, "-n", "2", "-W", "error", "-k", "agreement")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*verdict: failed (partial run: 1 check(s) deselected);*"])
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert doc["verdict"] == "failed" and doc["suites"][0]["checks"][0]["outcome"] == "failed"
    # the workers deselected it; the controller's report says so
    assert doc["deselected"] == [
        {"suite": "gate", "file": "suites/gate.toml", "id": "calibration", "kind": "calibration"}
    ]
