"""The weighted statistics behind each check's intervals equal the metrics they bootstrap."""

from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import planted
import pytest
from sklearn.metrics import cohen_kappa_score

from distill_eval import metrics as M
from distill_eval.checks.agreement import _kappa
from distill_eval.checks.calibration import _classwise, _temperature, _top_label
from distill_eval.checks.copied_errors import _chance_copy_rate, _error_consistency
from distill_eval.checks.intervals import Intervals
from distill_eval.outputs import ModelOutputs

RNG = np.random.default_rng(7)
N, C = 400, 5
LOGITS = RNG.normal(0, 2, size=(N, C))
OTHER = LOGITS + RNG.normal(0, 1.5, size=(N, C))
Y = RNG.integers(0, C, size=N)
ONES = np.ones((1, N))


def intervals(bounded: frozenset[str] = frozenset()) -> Intervals:
    """Intervals over N examples, outside any pytest run."""
    suite = SimpleNamespace(confidence=0.95, bootstrap=200, seed=0)
    ctx = SimpleNamespace(suite=suite, bounded_metrics=bounded, rng_for=lambda purpose: np.random.default_rng(0))
    return Intervals(ctx, N)  # type: ignore[arg-type]


def at(iv: Intervals, statistic, weights: np.ndarray = ONES) -> np.ndarray:
    """A statistic of weighted sums, evaluated at explicit weight rows."""
    return statistic(iv.sums.weighted(weights))


@pytest.mark.parametrize("binning", ["uniform", "quantile"])
def test_ece_and_mce_statistics_equal_the_metrics(binning: str) -> None:
    out = ModelOutputs("m", "d", LOGITS)
    bins, n_bins, gap = _top_label(out, Y, 10, binning)
    iv = intervals()
    ece = at(iv, iv.binned_error(gap, bins, n_bins))[0]
    mce = at(iv, iv.binned_error(gap, bins, n_bins, reduce="mce"))[0]
    assert ece == pytest.approx(M.expected_calibration_error(out.probs, Y, bins=10, binning=binning))
    assert mce == pytest.approx(M.maximum_calibration_error(out.probs, Y, bins=10, binning=binning))
    classwise = _classwise(out, Y, 10, binning)(ONES)[0]
    assert classwise == pytest.approx(M.classwise_ece(out.probs, Y, bins=10, binning=binning))


def test_weighted_ece_equals_ece_of_the_resampled_rows() -> None:
    """A bootstrap weight row of counts gives the ECE of the data with rows repeated that often."""
    out = ModelOutputs("m", "d", LOGITS)
    bins, n_bins, gap = _top_label(out, Y, 10, "uniform")
    idx = RNG.integers(0, N, size=N)
    counts = np.bincount(idx, minlength=N)[None, :].astype(float)
    resampled = M.expected_calibration_error(out.probs[idx], Y[idx], bins=10)
    iv = intervals()
    assert at(iv, iv.binned_error(gap, bins, n_bins), counts)[0] == pytest.approx(resampled)


def test_temperature_statistics_refit_on_weights() -> None:
    stat = _temperature(LOGITS, Y)(ONES)[0]
    assert stat == pytest.approx(M.fit_temperature(LOGITS, Y), rel=1e-4)
    then_ece = _temperature(LOGITS, Y, then_ece=(15, "uniform"))(ONES)[0]
    expected = M.expected_calibration_error(M.softmax(LOGITS, temperature=stat), Y, bins=15)
    assert then_ece == pytest.approx(expected, abs=1e-6)


def test_kappa_statistic_equals_sklearn() -> None:
    a, b = LOGITS.argmax(1), OTHER.argmax(1)
    iv = intervals()
    kappa = _kappa(iv, a, b, C)
    assert at(iv, kappa)[0] == pytest.approx(cohen_kappa_score(a, b))
    idx = RNG.integers(0, N, size=N)  # and on a resample: the kappa of the repeated rows
    counts = np.bincount(idx, minlength=N)[None, :].astype(float)
    assert at(iv, kappa, counts)[0] == pytest.approx(cohen_kappa_score(a[idx], b[idx]))


def test_copy_statistics_equal_the_metrics() -> None:
    t, s = LOGITS.argmax(1), OTHER.argmax(1)
    iv = intervals()
    chance = _chance_copy_rate(iv, Y, t, s, C)
    assert at(iv, chance)[0] == pytest.approx(M.chance_copy_rate(Y, t, s, n_classes=C))
    idx = RNG.integers(0, N, size=N)
    counts = np.bincount(idx, minlength=N)[None, :].astype(float)
    assert at(iv, chance, counts)[0] == pytest.approx(M.chance_copy_rate(Y[idx], t[idx], s[idx], n_classes=C))
    assert at(iv, _error_consistency(iv, t == Y, s == Y))[0] == pytest.approx(M.error_consistency(Y, t, s))
    copied = (t != Y) & (s == t)
    assert at(iv, iv.ratio(copied, t != Y))[0] == pytest.approx(M.copy_rate(Y, t, s))


def test_chance_copy_rate_sums_only_the_cells_that_occur() -> None:
    # 1000 classes (ImageNet's count): a full (class, answer) grid is 10**6 sums per resample and
    # family, gigabytes at the usual 1000 resamples; N = 400 examples occupy at most 400 cells.
    classes, resamples = 1000, 20
    rng = np.random.default_rng(3)
    y = rng.integers(0, classes, size=N)
    t = np.where(rng.random(N) < 0.3, rng.integers(0, classes, size=N), y)
    s = np.where(rng.random(N) < 0.5, t, y)  # copies half the teacher's answers, its errors included
    iv = intervals()
    chance = _chance_copy_rate(iv, y, t, s, classes)
    assert at(iv, chance)[0] == pytest.approx(M.chance_copy_rate(y, t, s, n_classes=classes))
    tracemalloc.start()
    try:
        resampled = chance(iv.sums.resample(np.random.default_rng(0), resamples))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.isfinite(resampled).all() and peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_ratio_is_nan_where_undefined() -> None:
    iv = intervals()
    numerator, denominator = np.zeros(N), np.zeros(N)
    numerator[0] = denominator[0] = 1.0
    weights = np.zeros((2, N))
    weights[0, 0] = weights[1, 1] = 1.0
    assert at(iv, iv.ratio(numerator, denominator), weights)[0] == 1.0
    assert np.isnan(at(iv, iv.ratio(numerator, denominator), weights)[1])


def test_costly_intervals_run_when_cheap_or_bounded() -> None:
    calls = []

    def factory():
        calls.append(1)
        return lambda w: w @ np.ones(N) / w.sum(axis=1)

    iv = intervals()
    iv.add_refit("cheap", factory, cost=10)
    iv.add_refit("dear", factory, cost=10**12)
    assert len(calls) == 1 and set(iv.compute()) == {"cheap"}
    bounded = intervals(frozenset({"dear"}))
    bounded.add_refit("dear", factory, cost=10**12)
    assert set(bounded.compute()) == {"dear"}


def _results_without_timing(path) -> dict:
    doc = json.loads(path.read_text())
    for key in ("created", "environment", "command"):
        doc.pop(key)
    for suite in doc["suites"]:
        for check in suite["checks"]:
            check.pop("duration_s")
    return doc


def test_two_runs_give_identical_results(pytester: pytest.Pytester) -> None:
    planted.write_project(pytester.path, student="broken_slice")
    suite = pytester.path / "suites" / "planted.toml"
    suite.write_text(suite.read_text().replace('kind = "slices"', 'kind = "slices"\ndiscover = true'))
    pytester.runpytest("--distill", "-p", "no:cacheprovider", "--distill-no-cache")
    first = _results_without_timing(pytester.path / "reports" / "results.json")
    # the other order: per-check seeds, not session order, decide every random draw
    pytester.runpytest("--distill", "-p", "no:cacheprovider", "-k", "slices or calibration")
    pytester.runpytest("--distill", "-p", "no:cacheprovider")
    second = _results_without_timing(pytester.path / "reports" / "results.json")
    assert first == second
    (check,) = [c for c in first["suites"][0]["checks"] if c["kind"] == "slices"]
    assert all(m["ci"] is not None for m in check["metrics"].values())
    assert check["discovered"][0]["where"] == "meta.group == 'b'"


@pytest.mark.parametrize(("gate", "outcome"), [("estimate", "passed"), ("strict", "failed"), ("lenient", "passed")])
def test_gate_modes_end_to_end(pytester: pytest.Pytester, gate: str, outcome: str) -> None:
    planted.write_project(pytester.path, student="good")
    data = planted.scenario()
    agreement = float(np.mean(data["teacher"].argmax(1) == data["good"].argmax(1)))
    # a bound just below the estimate: inside the interval
    (pytester.path / "suites" / "planted.toml").write_text(
        f'[suite]\nname = "g"\n[[check]]\nkind = "agreement"\nmin = {{ top1 = {agreement - 0.005} }}\n'
    )
    result = pytester.runpytest("--distill", "-p", "no:cacheprovider", "--distill-gate", gate)
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert doc["suites"][0]["gate"] == gate
    assert doc["suites"][0]["checks"][0]["outcome"] == outcome
    if outcome == "failed":
        result.stdout.fnmatch_lines(
            [
                "*top1 = * [[]*, *[]] not entirely >= min * (gate: strict); "
                "inconclusive: the interval straddles the bound;"
                " about * examples (now 3,000) would settle it*"
            ]
        )


def test_a_check_may_override_the_suite_gate(pytester: pytest.Pytester) -> None:
    planted.write_project(pytester.path, student="good")
    data = planted.scenario()
    agreement = float(np.mean(data["teacher"].argmax(1) == data["good"].argmax(1)))
    check = f'kind = "agreement"\nmin = {{ top1 = {agreement - 0.005} }}\n'
    (pytester.path / "suites" / "planted.toml").write_text(
        f'[suite]\nname = "g"\ngate = "strict"\n[[check]]\n{check}[[check]]\nid = "relaxed"\ngate = "estimate"\n{check}'
    )
    pytester.runpytest("--distill", "-p", "no:cacheprovider")
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert doc["suites"][0]["gate"] == "strict"
    checks = doc["suites"][0]["checks"]
    assert [(c["gate"], c["outcome"]) for c in checks] == [("strict", "failed"), ("estimate", "passed")]
    # --distill-gate overrides both
    pytester.runpytest("--distill", "-p", "no:cacheprovider", "--distill-gate", "lenient")
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert [(c["gate"], c["outcome"]) for c in doc["suites"][0]["checks"]] == [("lenient", "passed")] * 2
