"""Kind ``regression`` and ``--distill-accept``: hand counts on planted students, real pytest sessions."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import planted
import pytest
from scipy.stats import binomtest

from distill_eval import DistillSession, load_project_config, load_suite
from distill_eval.baseline import accept, missing_baseline_message
from distill_eval.checks.base import Metric
from distill_eval.checks.regression import mcnemar_difference_interval, mover_difference, mover_ratio
from distill_eval.errors import CheckError, ConfigError
from distill_eval.results import CheckResult, build_results, write_json

DROPS = ("accuracy_drop", "agreement_drop", "ece_increase", "kl_increase")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    planted.write_project(root, student="good")  # model "student" is the lookup table of "good"
    return root


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # the lookup factory is imported from the working directory
    monkeypatch.syspath_prepend(str(project))


def session_for(project: Path, text: str, results: list[CheckResult] | None = None):
    path = project / "suites" / "t.toml"
    path.write_text('[suite]\nname = "t"\nbootstrap = 300\n' + text)
    config = load_project_config(project)
    suite = load_suite(path, config)
    session = DistillSession(config, use_cache=False)
    session.results.extend(results or [])
    return session, suite


def run(project: Path, text: str, results: list[CheckResult] | None = None) -> list[CheckResult]:
    session, suite = session_for(project, text, results)
    for check in suite.checks:
        session.results.append(session.run_check(suite, check))
    return session.results[len(results or []) :]


def hand_counts(baseline: str, candidate: str) -> tuple[int, int]:
    data = planted.scenario()
    right_b = data[baseline].argmax(1) == data["y"]
    right_c = data[candidate].argmax(1) == data["y"]
    return int(np.sum(right_b & ~right_c)), int(np.sum(~right_b & right_c))


# -- paired mode -----------------------------------------------------------------------


def test_paired_identical_candidate_changes_nothing(project: Path) -> None:
    text = (
        '[[check]]\nkind = "regression"\nbaseline = "good"\nmax = { accuracy_drop = 0.0, negative_flip_rate = 0.0 }\n'
    )
    (r,) = run(project, text)
    assert r.outcome == "passed", r.message
    for name in (*DROPS, "negative_flip_rate"):
        assert r.metrics[name].value == 0.0, name
    assert r.metrics["accuracy_drop"].ci == (0.0, 0.0)  # no discordant example
    assert r.metrics["negative_flip_rate"].ci[0] == 0.0 < r.metrics["negative_flip_rate"].ci[1]
    assert r.models == {"teacher": "teacher", "student": "student", "baseline": "good"}
    latency = r.metrics["p50_ms_increase_ratio"]
    assert latency.value is None and "no latency check" in latency.note


def test_paired_worse_candidate_against_hand_counts(project: Path) -> None:
    text = (
        '[[check]]\nkind = "regression"\nbaseline = "good"\nstudent = "broken_slice"\n'
        "max = { negative_flip_rate = 0.01 }\n"
    )
    (r,) = run(project, text)
    data = planted.scenario()
    n, y = planted.N, data["y"]
    b, c = hand_counts("good", "broken_slice")
    assert b > 100 and c >= 0
    assert r.metrics["negative_flip_rate"].value == b / n
    accuracy = {m: np.mean(data[m].argmax(1) == y) for m in ("good", "broken_slice")}
    assert r.metrics["accuracy_drop"].value == pytest.approx(accuracy["good"] - accuracy["broken_slice"], abs=1e-12)
    # McNemar: condition on the b + c discordant examples, Clopper-Pearson on b / (b + c), map to (b - c) / n
    ci = binomtest(b, b + c).proportion_ci(confidence_level=0.95, method="exact")
    expected = ((b + c) * (2 * ci.low - 1) / n, (b + c) * (2 * ci.high - 1) / n)
    assert r.metrics["accuracy_drop"].ci == pytest.approx(expected, rel=1e-9)
    t = data["teacher"].argmax(1)
    top1 = {m: np.mean(data[m].argmax(1) == t) for m in ("good", "broken_slice")}
    assert r.metrics["agreement_drop"].value == pytest.approx(top1["good"] - top1["broken_slice"])
    for name in ("agreement_drop", "kl_increase"):  # clearly worse: the paired intervals exclude 0
        low, high = r.metrics[name].ci
        assert 0 < low <= r.metrics[name].value <= high, name
    assert r.outcome == "failed"
    assert r.message.startswith(f"negative_flip_rate = {b / n:.3g} [")
    assert "> max 0.01 (gate: estimate)" in r.message


def test_paired_latency_comes_from_a_latency_check_of_this_run(project: Path) -> None:
    timed = CheckResult(
        suite="t",
        file=str(project / "suites" / "t.toml"),
        gate="estimate",
        id="latency",
        kind="latency",
        outcome="passed",
        metrics={
            "student_p50_ms": Metric(2.0, (1.8, 2.2)),
            "teacher_p50_ms": Metric(1.0, (0.9, 1.1)),
            "speedup": Metric(0.5, (0.45, 0.56)),
        },
        models={"teacher": "good", "student": "student"},
    )
    (r,) = run(project, '[[check]]\nkind = "regression"\nbaseline = "good"\n', [timed])
    ratio = r.metrics["p50_ms_increase_ratio"]
    assert ratio.value == 2.0  # candidate p50 / baseline p50
    assert ratio.ci == pytest.approx((1 / 0.56, 1 / 0.45))  # the check's paired speedup interval, inverted


def test_paired_latency_with_a_real_latency_check(project: Path) -> None:
    text = (
        '[[check]]\nkind = "latency"\nteacher = "good"\nmin_time_s = 0.05\nwarmup = 1\n'
        '[[check]]\nkind = "regression"\nbaseline = "good"\n'
    )
    latency, r = run(project, text)
    ratio, speedup = r.metrics["p50_ms_increase_ratio"], latency.metrics["speedup"]
    assert ratio.value == latency.metrics["student_p50_ms"].value / latency.metrics["teacher_p50_ms"].value
    assert ratio.ci == pytest.approx((1 / speedup.ci[1], 1 / speedup.ci[0]))


# -- stored mode -----------------------------------------------------------------------

ACCEPTED = '[[check]]\nkind = "agreement"\nstudent = "STUDENT"\n[[check]]\nkind = "calibration"\nstudent = "STUDENT"\n'


def stored_doc(project: Path, student: str = "good") -> dict:
    session, suite = session_for(project, ACCEPTED.replace("STUDENT", student))
    session.results.extend(session.run_check(suite, check) for check in suite.checks)
    return build_results(session.results, models=session.model_provenance(), datasets=session.dataset_provenance())


@pytest.fixture(scope="module")
def accepted(project: Path) -> dict:
    """The accepted student's results: agreement and calibration of "good" (module-scoped: computed once)."""
    with pytest.MonkeyPatch.context() as m:
        m.chdir(project)
        m.syspath_prepend(str(project))
        return stored_doc(project)


def regression_against(project: Path, doc: dict, extra: str = "", student: str = "STUDENT") -> CheckResult:
    write_json(project / "suites" / "stored.json", doc)
    text = ACCEPTED + f'[[check]]\nkind = "regression"\nstudent = "{student}"\nbaseline_results = "stored.json"\n'
    return run(project, (text + extra).replace("STUDENT", "broken_slice"))[-1]


def test_stored_mode_compares_with_stored_values(project: Path, accepted: dict) -> None:
    r = regression_against(project, accepted)
    (suite,) = accepted["suites"]
    stored = {c["kind"]: c["metrics"] for c in suite["checks"]}
    data = planted.scenario()
    accuracy = np.mean(data["broken_slice"].argmax(1) == data["y"])
    assert r.metrics["accuracy_drop"].value == pytest.approx(
        stored["agreement"]["student_accuracy"]["value"] - accuracy
    )
    # MOVER from the stored interval and the candidate's own (Wilson) interval, by hand
    hits = int(np.sum(data["broken_slice"].argmax(1) == data["y"]))
    wilson = binomtest(hits, planted.N).proportion_ci(method="wilson")
    s_acc = stored["agreement"]["student_accuracy"]
    d = s_acc["value"] - accuracy
    expected = (
        d - math.hypot(s_acc["value"] - s_acc["ci"][0], wilson.high - accuracy),
        d + math.hypot(s_acc["ci"][1] - s_acc["value"], accuracy - wilson.low),
    )
    assert r.metrics["accuracy_drop"].ci == pytest.approx(expected, rel=1e-9)
    low, high = r.metrics["accuracy_drop"].ci
    assert low < r.metrics["accuracy_drop"].value < high
    assert r.metrics["negative_flip_rate"].value is None and "paired mode only" in r.metrics["negative_flip_rate"].note
    assert r.extras["baseline"]["checks"] == {"agreement": "agreement", "calibration": "calibration", "latency": None}


def test_stored_mode_same_student_drops_are_zero(project: Path, accepted: dict) -> None:
    write_json(project / "suites" / "stored.json", accepted)
    text = ACCEPTED + '[[check]]\nkind = "regression"\nbaseline_results = "stored.json"\nmax = { accuracy_drop = 0 }\n'
    r = run(project, text.replace("STUDENT", "student"))[-1]
    assert r.outcome == "passed"
    assert [r.metrics[m].value for m in DROPS] == [0.0, 0.0, 0.0, 0.0]


def test_a_missing_stored_metric_is_undefined_with_a_note(project: Path, accepted: dict) -> None:
    doc = json.loads(json.dumps(accepted))
    doc["suites"][0]["checks"] = [c for c in doc["suites"][0]["checks"] if c["kind"] != "calibration"]
    r = regression_against(project, doc)
    note = r.metrics["ece_increase"].note
    assert r.metrics["ece_increase"].value is None
    assert "no calibration check with student_ece on dataset 'test' in suite 't'" in note
    assert r.metrics["accuracy_drop"].value is not None
    with pytest.raises(CheckError, match=r"cannot apply 'max' bound to ece_increase: .*no calibration check"):
        regression_against(project, doc, "max = { ece_increase = 0.1 }\n")


def test_stored_latency_ratio(project: Path, accepted: dict) -> None:
    doc = json.loads(json.dumps(accepted))
    doc["suites"][0]["checks"].append(
        {
            "id": "latency",
            "kind": "latency",
            "outcome": "passed",
            "dataset": "test",
            "models": {"teacher": "teacher", "student": "student"},
            "metrics": {
                "student_p50_ms": {"value": 2.0, "ci": [1.9, 2.1]},
                "speedup": {"value": 5.0, "ci": [4.8, 5.2]},
            },
        }
    )
    now = CheckResult(
        suite="t",
        file=str(project / "suites" / "t.toml"),
        gate="estimate",
        id="latency",
        kind="latency",
        outcome="passed",
        metrics={"student_p50_ms": Metric(3.0, (2.7, 3.3)), "speedup": Metric(5.1, (4.7, 5.3))},
        models={"teacher": "teacher", "student": "broken_slice"},
    )
    write_json(project / "suites" / "stored.json", doc)
    text = '[[check]]\nkind = "regression"\nstudent = "broken_slice"\nbaseline_results = "stored.json"\n'
    (r,) = run(project, text, [now])
    ratio = r.metrics["p50_ms_increase_ratio"]
    assert ratio.value == 1.5
    # MOVER on the log scale, by hand: the measured ratio 3.0 / 2.0 ...
    d = math.log(3.0) - math.log(2.0)
    low = d - math.hypot(math.log(3.0) - math.log(2.7), math.log(2.1) - math.log(2.0))
    high = d + math.hypot(math.log(3.3) - math.log(3.0), math.log(2.0) - math.log(1.9))
    # ... and the teacher-corrected one, stored speedup / current speedup = 5.0 / 5.1: the teacher
    # slowed down by as much as the student, so the machine did
    d_t = math.log(5.0) - math.log(5.1)
    low_t = d_t - math.hypot(math.log(5.0) - math.log(4.8), math.log(5.3) - math.log(5.1))
    high_t = d_t + math.hypot(math.log(5.2) - math.log(5.0), math.log(5.1) - math.log(4.7))
    # their hull, widened by the 5% drift floor
    expected = (math.exp(min(low, low_t)) / 1.05, math.exp(max(high, high_t)) * 1.05)
    assert ratio.ci == pytest.approx(expected)
    assert expected[0] < 1 < math.exp(low)  # the teacher-corrected ratio reaches "unchanged"


def _timed_run(rng: np.random.Generator, machine: float, student_ms: float) -> tuple[Metric, Metric]:
    """One simulated latency check: the student's p50 and the speedup, as the latency kind computes them.

    ``machine`` scales every call of the run (the runner's speed that day); each pair shares a
    moment's slowdown, and each call has its own noise.
    """
    from distill_eval.checks.latency import _ratio_of_medians
    from distill_eval.latency import quantile_interval
    from distill_eval.metrics import bootstrap_intervals

    pairs = 400
    moment = rng.lognormal(0.0, 0.05, size=pairs)
    teacher = 10.0 * machine * moment * rng.lognormal(0.0, 0.1, size=pairs)
    student = student_ms * machine * moment * rng.lognormal(0.0, 0.1, size=pairs)
    estimate, ci, _ = quantile_interval(student, 0.5)
    speedup = bootstrap_intervals(
        {"s": _ratio_of_medians(teacher, student)}, pairs, n_resamples=300, rng=rng, method="percentile"
    )["s"]
    return Metric(estimate, ci), Metric(speedup.estimate, (speedup.low, speedup.high))


def test_an_unchanged_student_on_a_drifting_machine_never_fails_with_evidence() -> None:
    from distill_eval.checks.judge import judge
    from distill_eval.checks.regression import drift_tolerant_ratio
    from distill_eval.suite import Bound

    rng = np.random.default_rng(3)
    plain_excludes_one = 0
    for _ in range(30):
        base_p50, base_speedup = _timed_run(rng, rng.uniform(0.8, 1.25), 2.0)
        p50, speedup = _timed_run(rng, rng.uniform(0.8, 1.25), 2.0)  # the same student, another day
        plain = mover_ratio(p50, base_p50)
        plain_excludes_one += not plain[0] <= 1 <= plain[1]
        ci = drift_tolerant_ratio(p50, base_p50, speedup, base_speedup)
        assert ci[0] <= 1 <= ci[1]
        ratio = Metric(p50.value / base_p50.value, ci)
        # no evidence of a slowdown: lenient does not fail it, strict passes a loose enough bound
        assert judge_ok(judge, Bound, ratio, 1.1, "lenient")
        assert judge_ok(judge, Bound, ratio, 1.6, "strict")
    # the interval of the two p50s alone sees only each run's own noise: it excluded 1 again and again
    assert plain_excludes_one >= 10

    for _ in range(10):  # a planted 2x slowdown still fails, with evidence, whatever the drift
        base_p50, base_speedup = _timed_run(rng, rng.uniform(0.8, 1.25), 2.0)
        p50, speedup = _timed_run(rng, rng.uniform(0.8, 1.25), 4.0)
        ratio = Metric(p50.value / base_p50.value, drift_tolerant_ratio(p50, base_p50, speedup, base_speedup))
        assert not judge_ok(judge, Bound, ratio, 1.1, "lenient")
        assert not judge_ok(judge, Bound, ratio, 1.1, "strict")


def judge_ok(judge, bound, metric: Metric, limit: float, gate: str) -> bool:
    from distill_eval.checks.base import Measurement

    (result,) = judge(
        Measurement({"p50_ms_increase_ratio": metric}), [bound("p50_ms_increase_ratio", "max", limit)], gate=gate
    )
    return result.ok


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda doc: doc.update(schema=99), "has results schema 99, but this version of distill_eval reads schema 1"),
        (lambda doc: doc.pop("schema"), "is not a distill_eval results.json"),
        (
            lambda doc: doc["datasets"]["test"].update(sha256="0" * 64),
            "was measured on dataset 'test' with sha256 000000000000…, but it now has sha256",
        ),
    ],
    ids=["schema", "no-schema", "other-data"],
)
def test_unusable_stored_results_are_errors(project: Path, accepted: dict, change, message: str) -> None:
    doc = json.loads(json.dumps(accepted))
    change(doc)
    with pytest.raises(CheckError, match=message.replace("(", r"\(")):
        regression_against(project, doc)


def test_missing_project_baseline_says_how_to_create_it(project: Path) -> None:
    with pytest.raises(CheckError) as e:
        run(project, '[[check]]\nkind = "regression"\n')
    assert str(e.value) == (
        "no accepted baseline at reports/baseline.json; "
        "run `pytest --distill --distill-accept` on the accepted student to create it"
    )


# -- interval formulas -----------------------------------------------------------------


@pytest.mark.parametrize(("b", "c", "n"), [(30, 10, 1000), (0, 5, 50), (7, 0, 7), (1, 1, 2)])
def test_mcnemar_interval_matches_scipy(b: int, c: int, n: int) -> None:
    ci = binomtest(b, b + c).proportion_ci(method="exact")
    low, high = mcnemar_difference_interval(b, c, n)
    assert (low, high) == pytest.approx(((b + c) * (2 * ci.low - 1) / n, (b + c) * (2 * ci.high - 1) / n))
    assert low <= (b - c) / n <= high


def test_mover_reduces_to_the_wald_difference_for_symmetric_intervals() -> None:
    low, high = mover_difference(Metric(0.8, (0.77, 0.83)), Metric(0.7, (0.66, 0.74)))
    assert (low, high) == pytest.approx((0.1 - 0.05, 0.1 + 0.05))
    assert mover_difference(Metric(0.8, None), Metric(0.7, (0.6, 0.8))) is None
    assert mover_ratio(Metric(2.0, (1.0, 4.0)), Metric(1.0, (0.5, 2.0))) == pytest.approx(
        (2 ** (1 - math.sqrt(2)), 2 ** (1 + math.sqrt(2)))
    )


# -- collection ------------------------------------------------------------------------


def test_baseline_and_baseline_results_together_is_a_config_error(project: Path) -> None:
    text = '[[check]]\nkind = "regression"\nbaseline = "good"\nbaseline_results = "r.json"\n'
    with pytest.raises(ConfigError, match=r"check 'regression': set either 'baseline' .* or 'baseline_results'"):
        session_for(project, text)


def test_unknown_baseline_model_suggests_the_nearest(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"'baseline' names model 'godo', .*did you mean 'good'"):
        session_for(project, '[[check]]\nkind = "regression"\nbaseline = "godo"\n')


def test_accept_blocks_on_errors_but_not_on_failures_or_a_missing_baseline(tmp_path: Path) -> None:
    def result(id: str, kind: str, outcome: str, message: str = "") -> CheckResult:
        return CheckResult(
            suite="s", file="s.toml", gate="estimate", id=id, kind=kind, outcome=outcome, message=message
        )

    results_file, target = tmp_path / "results.json", tmp_path / "b" / "baseline.json"
    write_json(results_file, {"schema": 1, "suites": []})
    waiting = result("regression", "regression", "error", missing_baseline_message(target))
    done = accept([result("a", "agreement", "failed"), waiting], results_file, target)
    assert done.written and json.loads(target.read_text()) == {"schema": 1, "suites": []}
    assert done.describe(tmp_path) == (
        "baseline accepted: this run's results stored in b/baseline.json, although 1 check(s) failed (s::a); "
        "s::regression had no baseline to compare with yet (rerun to compare)"
    )
    target.unlink()
    other = result("regression-2", "regression", "error", "no baseline results at x.json (named by ...)")
    refused = accept([waiting, other, result("c", "calibration", "error", "NaN")], results_file, target)
    assert not refused.written and not target.exists()
    assert refused.errored == ("s::regression-2", "s::c")


# -- real sessions: --distill-accept ---------------------------------------------------

GATE = """
[suite]
name = "gate"
bootstrap = 200

[[check]]
kind = "agreement"

[[check]]
kind = "calibration"

[[check]]
kind = "regression"
max = { accuracy_drop = 0.0 }
"""


def pytester_project(pytester: pytest.Pytester, suite: str) -> Path:
    planted.write_project(pytester.path, student="good")
    (pytester.path / "suites" / "planted.toml").unlink()
    (pytester.path / "suites" / "gate.toml").write_text(suite)
    return pytester.path / "reports" / "baseline.json"


def use_student(pytester: pytest.Pytester, table: str) -> None:
    pyproject = pytester.path / "pyproject.toml"
    text = pyproject.read_text()
    # the first lookup table named is the student's
    pyproject.write_text(text.replace('table = "good.npy"', f'table = "{table}.npy"', 1))


def regression_check(pytester: pytest.Pytester) -> dict:
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    return next(c for c in doc["suites"][0]["checks"] if c["kind"] == "regression")


@pytest.mark.slow
def test_accept_then_gate_against_the_stored_baseline(pytester: pytest.Pytester) -> None:
    baseline = pytester_project(pytester, GATE)
    how_to = (
        "no accepted baseline at reports/baseline.json; "
        "run `pytest --distill --distill-accept` on the accepted student to create it"
    )
    # no baseline yet: the regression check is an error that says how to create one; nothing is written
    result = pytester.runpytest("--distill", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([f"*{how_to}*"])
    assert not baseline.exists()
    # accept the good student: its results become the baseline (the waiting regression check does not block)
    result = pytester.runpytest("--distill", "--distill-accept", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            f"*{how_to}*",
            "baseline accepted: this run's results stored in reports/baseline.json; "
            "gate::regression had no baseline to compare with yet (rerun to compare)",
        ]
    )
    stored = json.loads(baseline.read_text())
    assert stored == json.loads((pytester.path / "reports" / "results.json").read_text())
    # the same student again: every drop is exactly 0
    result = pytester.runpytest("--distill", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    check = regression_check(pytester)
    assert [check["metrics"][m]["value"] for m in DROPS] == [0.0, 0.0, 0.0, 0.0]
    assert baseline.read_text() == json.dumps(stored, indent=2) + "\n"  # untouched without the flag
    # a worse candidate fails on accuracy_drop
    use_student(pytester, "broken_slice")
    result = pytester.runpytest("--distill", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*regression check 'regression' of suite 'gate' failed: accuracy_drop = 0.0613 [*"])
    assert regression_check(pytester)["outcome"] == "failed"


@pytest.mark.slow
def test_accept_with_an_erroring_check_writes_nothing(pytester: pytest.Pytester) -> None:
    suite = (
        '[suite]\nname = "gate"\n\n[[check]]\nkind = "agreement"\n\n'
        '[[check]]\nkind = "regression"\nbaseline_results = "bad.json"\n'
    )
    baseline = pytester_project(pytester, suite)
    (pytester.path / "suites" / "bad.json").write_text("{not json")
    result = pytester.runpytest("--distill", "--distill-accept", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*cannot read the baseline suites/bad.json*",
            "--distill-accept refused: 1 check(s) errored (gate::regression); "
            "the baseline reports/baseline.json was not written",
        ]
    )
    assert not baseline.exists()


def _checks(doc: dict) -> dict[str, dict]:
    return {f"{s['name']}::{c['id']}": c for s in doc["suites"] for c in s["checks"]}


@pytest.mark.slow
def test_a_partial_run_says_so_and_accept_merges_it_into_the_baseline(pytester: pytest.Pytester) -> None:
    baseline = pytester_project(pytester, GATE.replace("max = { accuracy_drop = 0.0 }", 'baseline = "good"'))
    run = functools.partial(pytester.runpytest, "--distill", "-p", "no:cacheprovider")
    run("--distill-accept").assert_outcomes(passed=3)
    complete = json.loads(baseline.read_text())
    assert complete["deselected"] == []

    result = run("-k", "agreement", "--distill-accept")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "verdict: passed (partial run: 2 check(s) deselected); reports written to reports/*",
            "deselected, not judged: gate::calibration, gate::regression",
            "baseline accepted: this run's results stored in reports/baseline.json, merged with its stored results "
            "of 2 check(s) not run (gate::calibration, gate::regression)",
        ]
    )
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert doc["deselected"] == [
        {"suite": "gate", "file": "suites/gate.toml", "id": "calibration", "kind": "calibration"},
        {"suite": "gate", "file": "suites/gate.toml", "id": "regression", "kind": "regression"},
    ]
    summary = (pytester.path / "reports" / "summary.md").read_text()
    assert "**Partial run: 2 check(s) deselected" in summary and "gate::calibration, gate::regression**" in summary
    assert "partial run: 2 check(s) deselected" in (pytester.path / "reports" / "report.html").read_text()
    # the baseline still has every check, in file order; the deselected ones as accepted before
    merged = json.loads(baseline.read_text())
    assert list(_checks(merged)) == ["gate::agreement", "gate::calibration", "gate::regression"]
    assert _checks(merged)["gate::calibration"] == _checks(complete)["gate::calibration"]
    assert _checks(merged)["gate::agreement"] == _checks(doc)["gate::agreement"]
    assert merged["deselected"] == [] and merged["counts"]["passed"] == 3


@pytest.mark.slow
def test_accept_refuses_to_merge_checks_measured_on_another_student(pytester: pytest.Pytester) -> None:
    baseline = pytester_project(pytester, GATE.replace("max = { accuracy_drop = 0.0 }", 'baseline = "good"'))
    run = functools.partial(pytester.runpytest, "--distill", "-p", "no:cacheprovider")
    run("--distill-accept").assert_outcomes(passed=3)
    before = baseline.read_text()
    use_student(pytester, "broken_slice")
    result = run("-k", "agreement", "--distill-accept")
    result.stdout.fnmatch_lines(
        [
            "--distill-accept refused: this run is partial, and the stored results of the baseline "
            "reports/baseline.json it would keep (gate::calibration, gate::regression) were measured with "
            "another model 'student' (sha256 * in this run, * stored); run every check *"
        ]
    )
    assert baseline.read_text() == before
    # a complete run of the new student replaces the baseline
    run("--distill-accept")
    assert json.loads(baseline.read_text())["models"]["student"] != json.loads(before)["models"]["student"]


def test_accept_of_some_suite_files_keeps_the_others_but_not_deleted_ones(tmp_path: Path) -> None:
    def suite(name: str, outcome: str) -> dict:
        check = {"id": "agreement", "kind": "agreement", "outcome": outcome, "models": {"student": "s"}}
        return {"name": name, "file": f"suites/{name}.toml", "gate": "estimate", "checks": [check]}

    models = {"s": {"sha256": "ab" * 32}}
    (tmp_path / "suites").mkdir()
    for name in ("a", "b"):  # c.toml was deleted since the baseline was accepted
        (tmp_path / "suites" / f"{name}.toml").write_text("")
    target, results_file = tmp_path / "baseline.json", tmp_path / "results.json"
    write_json(
        target,
        {"schema": 1, "models": models, "suites": [suite("a", "failed"), suite("b", "passed"), suite("c", "passed")]},
    )
    write_json(results_file, {"schema": 1, "models": models, "suites": [suite("a", "passed")], "deselected": []})
    result = CheckResult(
        suite="a", file="suites/a.toml", gate="estimate", id="agreement", kind="agreement", outcome="passed"
    )
    done = accept([result], results_file, target, root=tmp_path)
    assert done.written and done.kept == ("b::agreement",)
    merged = json.loads(target.read_text())
    assert [(s["name"], s["checks"][0]["outcome"]) for s in merged["suites"]] == [("a", "passed"), ("b", "passed")]
    assert merged["counts"]["passed"] == 2 and merged["verdict"] == "passed"
    # the same merge with another student behind the kept check is refused, and writes nothing
    before = target.read_text()
    write_json(results_file, {"schema": 1, "models": {"s": {"sha256": "cd" * 32}}, "suites": [suite("a", "passed")]})
    refused = accept([result], results_file, target, root=tmp_path)
    assert not refused.written and refused.conflicts and target.read_text() == before
