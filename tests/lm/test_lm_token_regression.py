"""Stored-mode regression on token data: the accepted student's per-sequence record, paired sequence by sequence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_lm_plugin import FACTORY, PYPROJECT, _teacher_samples

from distill_eval.baseline import read_token_record, token_records_path

METRICS = ("accuracy_drop", "agreement_drop", "ece_increase", "kl_increase", "negative_flip_rate")

#: the same check twice: in stored mode, and paired with the accepted student's model (same id, same draws)
STORED = """
[suite]
name = "lm-stored"
dataset = "tokens"
student = "{student}"
bootstrap = 200

[[check]]
id = "regression"
kind = "regression"
max = {{ agreement_drop = 0.02, kl_increase = 0.05 }}
"""

PAIRED = STORED.replace('name = "lm-stored"', 'name = "lm-paired"').replace(
    'kind = "regression"', 'kind = "regression"\nbaseline = "student"'
)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(tiny_lm=FACTORY)
    pytester.makefile(".toml", pyproject=PYPROJECT)
    ids = _teacher_samples(40, 24)
    mask = np.ones_like(ids)
    mask[::5, 18:] = 0  # some padded sequences
    np.savez(pytester.path / "tokens.npz", input_ids=ids, attention_mask=mask)
    (pytester.path / "suites").mkdir()
    return pytester


def _run(project: pytest.Pytester, student: str, *args: str, paired: bool = False, **outcomes: int):
    (project.path / "suites" / "stored.toml").write_text(STORED.format(student=student))
    paired_suite = project.path / "suites" / "paired.toml"
    if paired:
        paired_suite.write_text(PAIRED.format(student=student))
    elif paired_suite.exists():
        paired_suite.unlink()
    run = project.runpytest("-p", "no:cacheprovider", "--distill", *args)
    run.assert_outcomes(**outcomes)
    results = json.loads((project.path / "reports" / "results.json").read_text())
    return {s["name"]: s["checks"][0] for s in results["suites"]}, run.stdout.str()


def test_a_worse_student_fails_against_the_accepted_record_and_the_accepted_one_passes(
    project: pytest.Pytester,
) -> None:
    checks, _ = _run(project, "student", "--distill-accept", errors=1)
    accepted = checks["lm-stored"]
    assert accepted["outcome"] == "error"
    assert accepted["message"] == (
        "no accepted baseline at reports/baseline.json; run `pytest --distill --distill-accept` on the accepted "
        "student to create it"
    )  # as a classification regression says it
    sidecar = token_records_path(project.path / "reports" / "baseline.json")
    assert sidecar.name == "baseline.tokens.npz" and sidecar.is_file()
    record = read_token_record(project.path / "reports" / "baseline.json", "lm-stored", "regression")
    assert record["meta"]["student"] == "student" and record["meta"]["tokens"] > 0
    # per sequence, not per token: the record is small (one bit per token for the right/wrong mask)
    assert record["arrays"]["agree"].shape == (40,) and record["arrays"]["ece_bins"].shape == (40, 15)

    checks, _ = _run(project, "broken", paired=True, failed=2)
    stored, paired = checks["lm-stored"], checks["lm-paired"]
    for name in ("agreement_drop", "kl_increase"):
        low, high = stored["metrics"][name]["ci"]
        assert 0 < low <= stored["metrics"][name]["value"] <= high, name
    # the stored record pairs sequence by sequence exactly as the paired mode pairs the two models
    for name in METRICS:
        got, want = stored["metrics"][name], paired["metrics"][name]
        assert math.isclose(got["value"], want["value"], rel_tol=1e-9, abs_tol=1e-12), name
        assert np.allclose(got["ci"], want["ci"], rtol=1e-9, atol=1e-12), name
    assert stored["baseline"]["mode"] == "stored" and stored["baseline"]["student"] == "student"

    checks, _ = _run(project, "student", passed=1)
    same = checks["lm-stored"]["metrics"]
    for name in METRICS:  # the accepted student against its own record: nothing moved
        assert same[name]["value"] == 0 and same[name]["ci"] == [0, 0], name


def test_a_record_of_other_data_is_refused_naming_both(project: pytest.Pytester) -> None:
    _run(project, "student", "--distill-accept", errors=1)
    with np.load(project.path / "tokens.npz") as f:
        ids, mask = f["input_ids"], f["attention_mask"]
    np.savez(project.path / "tokens.npz", input_ids=ids[:-1], attention_mask=mask[:-1])
    checks, _ = _run(project, "student", errors=1)
    message = checks["lm-stored"]["message"]
    assert "was measured on dataset 'tokens' with sha256" in message and "now has sha256" in message
    record = read_token_record(project.path / "reports" / "baseline.json", "lm-stored", "regression")
    assert record["meta"]["dataset_sha256"][:12] in message


def test_a_baseline_without_the_check_s_record_says_how_to_store_it(project: pytest.Pytester) -> None:
    _run(project, "student", "--distill-accept", errors=1)
    token_records_path(project.path / "reports" / "baseline.json").unlink()
    checks, _ = _run(project, "student", errors=1)
    message = checks["lm-stored"]["message"]
    assert message.startswith("no per-sequence token record of check 'regression' of suite 'lm-stored'")
    assert "baseline.tokens.npz not found" in message and "pytest --distill --distill-accept" in message
    # accepting again is not blocked by the missing record: it stores one, and the next run compares
    _run(project, "student", "--distill-accept", errors=1)
    checks, _ = _run(project, "student", passed=1)
    assert checks["lm-stored"]["metrics"]["agreement_drop"]["value"] == 0


def test_accepting_under_xdist_stores_the_workers_records(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    (project.path / "suites" / "stored.toml").write_text(STORED.format(student="student"))
    project.runpytest("-p", "no:cacheprovider", "--distill", "--distill-accept", "-n", "2").assert_outcomes(errors=1)
    from_workers = read_token_record(project.path / "reports" / "baseline.json", "lm-stored", "regression")
    token_records_path(project.path / "reports" / "baseline.json").unlink()
    _run(project, "student", "--distill-accept", errors=1)  # the record is missing, which accepting stores
    serial = read_token_record(project.path / "reports" / "baseline.json", "lm-stored", "regression")
    assert from_workers["meta"] == serial["meta"]
    for name, array in serial["arrays"].items():  # the wire keeps every value and dtype exactly
        assert from_workers["arrays"][name].dtype == array.dtype, name
        np.testing.assert_array_equal(from_workers["arrays"][name], array, err_msg=name)


def test_a_record_measured_against_another_teacher_is_refused(project: pytest.Pytester) -> None:
    _run(project, "student", "--distill-accept", errors=1)
    pyproject = project.path / "pyproject.toml"
    teacher = '[tool.distill_eval.models.teacher]\nfactory = "tiny_lm:build"\n'
    assert teacher in pyproject.read_text()
    pyproject.write_text(pyproject.read_text().replace(teacher, teacher + "kwargs = { noise = 0.05, seed = 7 }\n"))
    checks, _ = _run(project, "student", errors=1)
    message = checks["lm-stored"]["message"]
    assert "was measured against teacher 'teacher' with fingerprint" in message and "accept a baseline" in message


TIMED = """
[suite]
name = "lm-timed"
dataset = "tokens"
bootstrap = 200

[[check]]
id = "latency"
kind = "latency"
prompt_length = 8
new_tokens = 4
threads = 1
min_time_s = 0.05

[[check]]
id = "regression"
kind = "regression"
max = {{ p50_ms_increase_ratio = {bound} }}
"""


def test_the_stored_latency_ratio_reads_the_baseline_s_token_latency_check(project: pytest.Pytester) -> None:
    suite = project.path / "suites" / "timed.toml"
    suite.write_text(TIMED.format(bound=100.0))
    project.runpytest("-p", "no:cacheprovider", "--distill", "--distill-accept").assert_outcomes(passed=1, errors=1)
    stored = json.loads((project.path / "reports" / "baseline.json").read_text())
    accepted = stored["suites"][0]["checks"][0]["metrics"]["student_e2e_p50_ms"]["value"]

    project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=2)
    results = json.loads((project.path / "reports" / "results.json").read_text())
    latency, regression = results["suites"][0]["checks"]
    ratio = regression["metrics"]["p50_ms_increase_ratio"]
    current = latency["metrics"]["student_e2e_p50_ms"]["value"]
    assert math.isclose(ratio["value"], current / accepted, rel_tol=1e-9)  # this run's p50 over the stored one
    low, high = ratio["ci"]
    assert low <= ratio["value"] <= high

    # a bound the ratio cannot meet fails the check: the metric is gated, not only reported
    suite.write_text(TIMED.format(bound=1e-6))
    project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=1, failed=1)
