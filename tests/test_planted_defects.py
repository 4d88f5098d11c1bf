"""Each planted defect is caught by its own check and by no other (real pytest sessions)."""

from __future__ import annotations

import json

import planted
import pytest

CHECKS = ("calibration", "agreement", "slices", "copied_errors")


@pytest.mark.parametrize(
    ("student", "caught_by", "message"),
    [
        ("good", None, None),
        ("overconfident", "calibration", "*student_ece = 0.1* > max 0.05 (gate: estimate)*"),
        ("broken_slice", "slices", "*retention of slice 'group-b' = 0.1* < min 0.8 (gate: estimate)*"),
        ("copier", "copied_errors", "*copied_share = 0.8* > max 0.3 (gate: estimate)*"),
    ],
)
def test_defect_is_caught_by_its_own_check_only(pytester: pytest.Pytester, student, caught_by, message) -> None:
    planted.write_project(pytester.path, student=student)
    result = pytester.runpytest("--distill", "-p", "no:cacheprovider", "-rf")
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    outcomes = {c["id"]: c["outcome"] for s in doc["suites"] for c in s["checks"]}
    expected = {check: ("failed" if check == caught_by else "passed") for check in CHECKS}
    assert outcomes == expected
    if caught_by is None:
        result.assert_outcomes(passed=4)
        assert result.ret == 0
    else:
        result.assert_outcomes(passed=3, failed=1)
        assert result.ret == 1
        result.stdout.fnmatch_lines([message])
        result.stdout.no_fnmatch_line("*Traceback*")


def test_slice_scores_match_a_hand_count(pytester: pytest.Pytester) -> None:
    planted.write_project(pytester.path, student="broken_slice")
    pytester.runpytest("--distill", "-p", "no:cacheprovider")
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    (check,) = [c for s in doc["suites"] for c in s["checks"] if c["kind"] == "slices"]
    data = planted.scenario()
    y, group = data["y"], data["group"]
    t_hit = data["teacher"].argmax(1) == y
    s_hit = data["broken_slice"].argmax(1) == y
    for sl in check["slices"]:
        mask = group == sl["name"][-1]
        assert sl["support"] == int(mask.sum())
        assert sl["student_score"]["value"] == pytest.approx(s_hit[mask].mean())
        assert sl["teacher_score"]["value"] == pytest.approx(t_hit[mask].mean())
        assert sl["retention"]["value"] == pytest.approx(s_hit[mask].mean() / t_hit[mask].mean())
        assert sl["gap"]["value"] == pytest.approx(t_hit[mask].mean() - s_hit[mask].mean())
    worst = min(sl["retention"]["value"] for sl in check["slices"])
    assert check["metrics"]["worst_retention"]["value"] == pytest.approx(worst)
    failing = [b for b in check["bounds"] if not b["ok"]]
    assert [b["slice"] for b in failing] == ["group-b"]
