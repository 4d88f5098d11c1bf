"""Calibration metrics against hand computations, Python loops and scikit-learn."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn.metrics import brier_score_loss, log_loss

from distill_eval.metrics import (
    brier_per_example,
    brier_score,
    calibration_bins,
    classwise_ece,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    negative_log_likelihood,
    nll_per_example,
    softmax,
)

# --- plain-Python reference ---------------------------------------------------


def reference_edges(values, bins, binning):
    if binning == "uniform":
        return [i / bins for i in range(bins + 1)]
    inner = statistics.quantiles(sorted(values), n=bins, method="inclusive") if bins > 1 else []
    return sorted({0.0, *(float(e) for e in inner), 1.0})


def reference_binned(values, hits, bins, binning):
    """(ece, mce, counts) by looping over examples and bins."""
    edges = reference_edges(values, bins, binning)
    groups = [[] for _ in range(len(edges) - 1)]
    for value, hit in zip(values, hits, strict=True):
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            if lo < value <= hi or (i == 0 and value == lo):
                groups[i].append((value, hit))
                break
        else:  # pragma: no cover - the reference must place every value
            raise AssertionError(f"value {value} fell in no bin of {edges}")
    n = len(values)
    ece, mce = 0.0, 0.0
    for group in groups:
        if group:
            conf = sum(v for v, _ in group) / len(group)
            acc = sum(h for _, h in group) / len(group)
            ece += len(group) / n * abs(acc - conf)
            mce = max(mce, abs(acc - conf))
    return ece, mce, [len(g) for g in groups]


def reference_top_label(probs, labels, bins, binning):
    conf = [float(max(row)) for row in probs]
    hits = [float(int(np.argmax(row)) == int(y)) for row, y in zip(probs, labels, strict=True)]
    return reference_binned(conf, hits, bins, binning)


def reference_classwise(probs, labels, bins, binning):
    n_classes = probs.shape[1]
    total = 0.0
    for k in range(n_classes):
        column = [float(p) for p in probs[:, k]]
        positive = [float(int(y) == k) for y in labels]
        total += reference_binned(column, positive, bins, binning)[0]
    return total / n_classes


def random_problem(seed, n=200, n_classes=4, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, size=(n, n_classes))
    labels = rng.integers(0, n_classes, size=n)
    return logits, softmax(logits), labels


# --- hand computations --------------------------------------------------------

# Five uniform bins: 0.6 and 0.8 sit exactly on inner edges and belong to the bin
# below; 1.0 belongs to the last bin.
#   bin (0.4, 0.6]: confidences 0.6, 0.6, 0.5 -> mean 17/30, accuracy 1/3
#   bin (0.6, 0.8]: confidence 0.8, wrong -> gap 0.8
#   bin (0.8, 1.0]: confidence 1.0, right -> gap 0
EDGE_PROBS = np.array([[0.6, 0.4], [0.4, 0.6], [1.0, 0.0], [0.8, 0.2], [0.5, 0.5]])
EDGE_LABELS = np.array([0, 0, 0, 1, 1])


def test_ece_by_hand_with_confidences_on_bin_edges():
    bins = calibration_bins(EDGE_PROBS, EDGE_LABELS, bins=5)
    np.testing.assert_array_equal(bins.count, [0, 0, 3, 1, 1])
    np.testing.assert_allclose(bins.edges, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(bins.confidence[2:], [17 / 30, 0.8, 1.0])
    np.testing.assert_allclose(bins.accuracy[2:], [1 / 3, 0.0, 1.0])
    assert np.isnan(bins.confidence[:2]).all()
    assert np.isnan(bins.accuracy[:2]).all()
    # ECE = (3 * (17/30 - 1/3) + 0.8) / 5 = (0.7 + 0.8) / 5
    assert expected_calibration_error(EDGE_PROBS, EDGE_LABELS, bins=5) == pytest.approx(0.3)
    assert maximum_calibration_error(EDGE_PROBS, EDGE_LABELS, bins=5) == pytest.approx(0.8)


def test_classwise_ece_by_hand_with_zero_probabilities():
    # Two bins (0, 0.5] (holding 0 too) and (0.5, 1].
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 1])
    # class 0: P = 1, .5, .2 vs 1, 0, 0 -> (2/3) * |0 - 0.35|          = 7/30
    # class 1: P = 0, .5, .2 vs 0, 1, 1 -> one bin, |2/3 - 7/30|        = 13/30
    # class 2: P = 0, 0, .6 vs 0, 0, 0  -> (2/3) * 0 + (1/3) * 0.6      = 6/30
    assert classwise_ece(probs, labels, bins=2) == pytest.approx(26 / 90)


def test_quantile_bins_by_hand():
    probs = np.array([[0.55, 0.45], [0.35, 0.65], [0.75, 0.25], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1])
    # confidences .55 .65 .75 .95, median edge (0.65 + 0.75) / 2 = 0.7
    bins = calibration_bins(probs, labels, bins=2, binning="quantile")
    np.testing.assert_allclose(bins.edges, [0.0, 0.7, 1.0])
    np.testing.assert_array_equal(bins.count, [2, 2])
    # bin 1: conf 0.6, acc 0.5; bin 2: conf 0.85, acc 1
    ece = expected_calibration_error(probs, labels, bins=2, binning="quantile")
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.15)
    mce = maximum_calibration_error(probs, labels, bins=2, binning="quantile")
    assert mce == pytest.approx(0.15)


def test_quantile_bins_collapse_duplicate_edges():
    probs = np.tile([1.0, 0.0], (6, 1))
    bins = calibration_bins(probs, np.zeros(6, dtype=int), bins=4, binning="quantile")
    np.testing.assert_array_equal(bins.edges, [0.0, 1.0])
    np.testing.assert_array_equal(bins.count, [6])
    tied = np.tile([0.7, 0.3], (5, 1))
    bins = calibration_bins(tied, [0, 0, 0, 1, 1], bins=3, binning="quantile")
    np.testing.assert_allclose(bins.edges, [0.0, 0.7, 1.0])
    np.testing.assert_array_equal(bins.count, [5, 0])
    assert bins.ece == pytest.approx(0.1)


def test_reliability_bins_are_frozen_and_read_only():
    bins = calibration_bins(EDGE_PROBS, EDGE_LABELS, bins=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bins.count = None  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        bins.count[0] = 7


def test_single_bin_and_single_class():
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    # one bin: mean confidence 0.8, accuracy 0.5
    assert expected_calibration_error(probs, [0, 0], bins=1) == pytest.approx(0.3)
    one_class = np.ones((4, 1))
    labels = np.zeros(4, dtype=int)
    assert expected_calibration_error(one_class, labels) == 0.0
    assert classwise_ece(one_class, labels) == 0.0
    assert brier_score(one_class, labels) == 0.0
    assert negative_log_likelihood(np.zeros((4, 1)), labels) == 0.0


# --- random data against the references ---------------------------------------


@pytest.mark.parametrize("binning", ["uniform", "quantile"])
@pytest.mark.parametrize(("seed", "bins"), [(0, 1), (1, 7), (2, 15), (3, 40)])
def test_ece_and_mce_match_the_loop_reference(seed, bins, binning):
    # 199 examples: interior quantile positions are never whole, so no
    # confidence lies exactly on a quantile edge (where rounding could differ).
    _, probs, labels = random_problem(seed, n=199)
    ece, mce, counts = reference_top_label(probs, labels, bins, binning)
    result = calibration_bins(probs, labels, bins=bins, binning=binning)
    np.testing.assert_array_equal(result.count, counts)
    assert expected_calibration_error(probs, labels, bins=bins, binning=binning) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(probs, labels, bins=bins, binning=binning) == pytest.approx(mce, abs=1e-12)


def test_ece_on_decimal_bin_edges_matches_the_reference():
    # Confidences drawn from the decimal edges themselves (0.1, 0.2, ...).
    rng = np.random.default_rng(5)
    conf = rng.integers(5, 11, size=300) / 10
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = rng.integers(0, 2, size=300)
    ece, mce, counts = reference_top_label(probs, labels, 10, "uniform")
    np.testing.assert_array_equal(calibration_bins(probs, labels, bins=10).count, counts)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(probs, labels, bins=10) == pytest.approx(mce, abs=1e-12)


@pytest.mark.parametrize("binning", ["uniform", "quantile"])
@pytest.mark.parametrize(("seed", "bins"), [(0, 5), (1, 15)])
def test_classwise_ece_matches_the_per_class_reference(seed, bins, binning):
    _, probs, labels = random_problem(seed, n=199, n_classes=5)
    expected = reference_classwise(probs, labels, bins, binning)
    result = classwise_ece(probs, labels, bins=bins, binning=binning)
    assert result == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bins": 0}, r"'bins' parameter .* \[1, inf\)\. Got 0 instead"),
        ({"bins": 2.5}, "'bins' parameter"),
        ({"bins": True}, "'bins' parameter"),
        ({"binning": "equal"}, r"'binning' parameter .* Got 'equal' instead"),
    ],
)
def test_bin_options_are_validated(kwargs, message):
    for metric in (calibration_bins, expected_calibration_error, classwise_ece):
        with pytest.raises(ValueError, match=message):
            metric(EDGE_PROBS, EDGE_LABELS, **kwargs)


# --- Brier and NLL against scikit-learn ---------------------------------------


def test_brier_binary_is_twice_sklearn():
    _, probs, labels = random_problem(0, n_classes=2)
    expected = 2 * brier_score_loss(labels, probs[:, 1])
    assert brier_score(probs, labels) == pytest.approx(expected, rel=1e-12)


def test_brier_multiclass_is_the_one_vs_rest_sum_of_sklearn():
    _, probs, labels = random_problem(1, n_classes=5)
    expected = sum(brier_score_loss((labels == k).astype(int), probs[:, k]) for k in range(5))
    assert brier_score(probs, labels) == pytest.approx(expected, rel=1e-12)
    per_example = brier_per_example(probs, labels)
    assert per_example.shape == (200,)
    assert np.all((per_example >= 0) & (per_example <= 2))


def test_nll_matches_sklearn_log_loss():
    logits, probs, labels = random_problem(2, n_classes=6)
    expected = log_loss(labels, probs, labels=np.arange(6))
    assert negative_log_likelihood(logits, labels) == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(
        nll_per_example(logits, labels),
        -np.log(probs[np.arange(200), labels]),
        rtol=1e-10,
    )


def test_nll_is_finite_when_the_label_probability_underflows():
    logits = np.array([[0.0, -1000.0], [0.0, -800.0], [5.0, 0.0]])
    labels = np.array([1, 1, 0])
    assert softmax(logits)[0, 1] == 0.0  # underflows in float64
    per_example = nll_per_example(logits, labels)
    np.testing.assert_allclose(per_example[:2], [1000.0, 800.0])
    assert per_example[2] == pytest.approx(np.log1p(np.exp(-5.0)))
    assert np.isfinite(negative_log_likelihood(logits, labels))


# --- temperature scaling ------------------------------------------------------


def sample_labels(rng, probs):
    return (probs.cumsum(axis=1) > rng.random((probs.shape[0], 1))).argmax(axis=1)


def test_fit_temperature_recovers_an_overconfidence_factor():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 5))
    labels = sample_labels(rng, scipy.special.softmax(true_logits, axis=1))
    logits = 3.0 * true_logits
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature=temperature), labels)
    assert after < before
    # the fitted temperature is the NLL minimiser: nearby temperatures do worse
    best = negative_log_likelihood(logits / temperature, labels)
    for other in (temperature * 0.9, temperature * 1.1):
        assert negative_log_likelihood(logits / other, labels) > best


def test_fit_temperature_is_near_one_for_a_calibrated_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(4000, 4))
    labels = sample_labels(rng, scipy.special.softmax(logits, axis=1))
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.1)


def test_fit_temperature_heads_for_the_lower_bound_for_separable_data():
    # Every example right with a margin of 2: the NLL falls towards 0 as T
    # shrinks, and is flat to machine precision near T = 0.05 (exp(-2 / T)).
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    temperature = fit_temperature(logits, [0, 1, 0])
    assert 0.05 <= temperature < 0.1
    assert negative_log_likelihood(logits / temperature, [0, 1, 0]) < 1e-8
    assert fit_temperature(logits, [0, 1, 0], bounds=(0.5, 2.0)) == pytest.approx(0.5, rel=1e-3)


def test_fit_temperature_validates_bounds():
    with pytest.raises(ValueError, match="'bounds' parameter"):
        fit_temperature(np.zeros((2, 2)), [0, 1], bounds=(2.0, 1.0))


def test_consistency_resampling_calibrates_its_own_test() -> None:
    """For perfectly calibrated models, the observed ECE exceeds the 97.5% null quantile ~2.5% of the time."""
    from distill_eval.metrics import consistency_resampling, expected_calibration_error

    rng = np.random.default_rng(0)
    exceed = 0
    for _ in range(200):
        logits = rng.normal(0, 2, size=(500, 10))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = (p.cumsum(axis=1) < rng.random((500, 1))).sum(axis=1)  # labels drawn from the model itself
        null = consistency_resampling(p.max(axis=1), n_draws=300, rng=rng)
        exceed += expected_calibration_error(p, y) > np.quantile(null, 0.975)
    assert 1 <= exceed <= 14  # nominal 5 of 200


def test_consistency_resampling_flags_an_overconfident_model() -> None:
    from distill_eval.metrics import consistency_resampling, expected_calibration_error

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(500, 10))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) < rng.random((500, 1))).sum(axis=1)
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)  # same labels, overconfident
    null = consistency_resampling(sharp.max(axis=1), n_draws=300, rng=rng)
    assert expected_calibration_error(sharp, y) > np.quantile(null, 0.975)


def test_consistency_resampling_of_large_bins_matches_drawing_every_outcome() -> None:
    """Large bins use the normal law for their sums; the null must match drawing each outcome."""
    from distill_eval.metrics import bin_index, consistency_resampling

    rng = np.random.default_rng(2)
    conf = rng.beta(8, 2, size=100_000)  # most bins hold thousands of examples, the low ones a few
    index, edges = bin_index(conf, bins=15)
    exact = np.empty(400)
    for d in range(exact.size):  # the definition, one Bernoulli per example
        gap = (rng.random(conf.size) < conf) - conf
        exact[d] = np.abs(np.bincount(index, weights=gap, minlength=edges.size - 1)).sum() / conf.size
    fast = consistency_resampling(conf, n_draws=4000, rng=np.random.default_rng(3))
    for q in (0.1, 0.5, 0.9, 0.975):
        assert np.quantile(fast, q) == pytest.approx(np.quantile(exact, q), rel=0.08)
    assert scipy.stats.ks_2samp(fast, exact).pvalue > 0.001


@pytest.mark.parametrize("binning", ["uniform", "quantile"])
def test_reliability_bins_from_confidence_equal_calibration_bins(binning: str) -> None:
    from distill_eval.metrics import calibration_bins, reliability_bins

    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(6) * 0.5, size=700)
    y = rng.integers(0, 6, size=700)
    ours = reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, bins=12, binning=binning)
    reference = calibration_bins(p, y, bins=12, binning=binning)
    np.testing.assert_array_equal(ours.count, reference.count)
    assert ours.ece == pytest.approx(reference.ece, rel=1e-12)
    with pytest.raises(ValueError, match="confidence must be"):
        reliability_bins([1.5], [True])


def test_classwise_ece_one_pass_equals_the_per_class_definition() -> None:
    """Uniform bins take a one-pass path; it must equal the mean of one-vs-rest ECEs."""
    from distill_eval.metrics import classwise_ece

    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(4), size=900)
    p[:5] = np.eye(4)[[0, 1, 2, 3, 0]]  # probabilities of exactly 0 and 1 sit on the outer edges
    y = rng.integers(0, 4, size=900)
    per_class = []
    for k in range(4):  # one-vs-rest: bins (lo, hi] of p[:, k] against the indicator y == k
        index = np.clip(np.searchsorted(np.arange(16) / 15, p[:, k], side="left") - 1, 0, 14)
        gap = np.bincount(index, weights=(y == k) - p[:, k], minlength=15)
        per_class.append(np.abs(gap).sum() / 900)
    assert classwise_ece(p, y, bins=15) == pytest.approx(np.mean(per_class), rel=1e-12)


def test_equal_width_bins_on_many_values_match_the_edge_search() -> None:
    """The arithmetic path for equal-width bins must put every value where searchsorted does."""
    from distill_eval.metrics.calibration import _assign

    rng = np.random.default_rng(6)
    for bins in (1, 7, 10, 15, 100):
        edges = np.arange(bins + 1) / bins
        near = np.repeat(edges, 50) + rng.choice([-1, 0, 1], size=50 * (bins + 1)) * np.finfo(float).eps
        values = np.clip(np.concatenate([rng.random(20_000), near, [0.0, 1.0]]), 0.0, 1.0)
        expected = np.clip(np.searchsorted(edges, values, side="left") - 1, 0, bins - 1)
        np.testing.assert_array_equal(_assign(values, edges), expected)
        block = values[:20_000].reshape(200, 100)  # 2-D blocks too (classwise ECE)
        np.testing.assert_array_equal(_assign(block, edges), expected[:20_000].reshape(200, 100))
