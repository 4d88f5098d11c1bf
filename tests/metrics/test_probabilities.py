"""softmax / log_softmax / entropy / margin, and the input validators."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats

from distill_eval import metrics
from distill_eval.metrics import (
    brier_score,
    check_labels,
    check_logits,
    check_probs,
    entropy,
    expected_calibration_error,
    kl_divergence,
    log_softmax,
    negative_log_likelihood,
    softmax,
    top2_margin,
)

PUBLIC = {
    "bin_index",
    "consistency_resampling",
    "BootstrapInterval",
    "Duplicates",
    "ReliabilityBins",
    "Statistic",
    "bootstrap_intervals",
    "brier_per_example",
    "brier_score",
    "calibration_bins",
    "chance_copy_rate",
    "check_labels",
    "check_logits",
    "check_probs",
    "classwise_ece",
    "cohen_kappa",
    "divergences_per_example",
    "copied_share",
    "copy_lift",
    "copy_p_value",
    "copy_rate",
    "default_near_distance",
    "entropy",
    "error_consistency",
    "exact_matches",
    "expected_calibration_error",
    "find_duplicates",
    "fit_temperature",
    "js_divergence",
    "js_per_example",
    "kl_divergence",
    "kl_per_example",
    "known_copied",
    "log_softmax",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "nll_per_example",
    "reliability_bins",
    "softmax",
    "teacher_errors",
    "top1_agreement",
    "top2_margin",
    "topk_agreement",
    "total_variation",
    "tvd_per_example",
    "weighted_sum",
}


def test_public_api_is_exactly_the_documented_one():
    assert set(metrics.__all__) == PUBLIC
    assert len(metrics.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert getattr(metrics, name) is not None


# --- softmax family -----------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_softmax_and_log_softmax_match_scipy(temperature):
    logits = np.random.default_rng(0).normal(0, 5, size=(50, 7))
    np.testing.assert_allclose(
        softmax(logits, temperature=temperature),
        scipy.special.softmax(logits / temperature, axis=1),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        log_softmax(logits, temperature=temperature),
        scipy.special.log_softmax(logits / temperature, axis=1),
        rtol=1e-12,
        atol=1e-12,
    )


def test_softmax_is_float64_and_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [800.0, 800.0, 0.0]], dtype=np.float32)
    probs = softmax(logits)
    assert probs.dtype == np.float64
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[1], [0.5, 0.5, 0.0], atol=1e-300)
    log_probs = log_softmax(logits)
    assert np.all(np.isfinite(log_probs))
    np.testing.assert_allclose(log_probs[0], [0.0, -1e4, -2e4])


def test_entropy_matches_scipy_with_zeros():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(entropy(probs), scipy.stats.entropy(probs, axis=1), atol=1e-15)
    assert entropy(np.full((1, 4), 0.25))[0] == pytest.approx(np.log(4))


def test_top2_margin_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(top2_margin(probs), [0.5, 0.0, 0.3])
    np.testing.assert_array_equal(top2_margin(np.ones((3, 1))), [0.0, 0.0, 0.0])


# --- validators ---------------------------------------------------------------


def test_check_logits_returns_float64():
    out = check_logits(np.arange(6, dtype=np.int32).reshape(3, 2))
    assert out.dtype == np.float64


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (
            [[0.0, np.nan], [np.inf, 1.0], [-np.inf, 0.0]],
            "logits contain 3 non-finite values",
        ),
        ([[0.0, np.nan]], "logits contain 1 non-finite value"),
        ([0.0, 1.0], r"must be 2-D .* got an array of shape \(2,\)"),
        (np.zeros((2, 2, 2)), r"shape \(2, 2, 2\)"),
        (np.zeros((0, 3)), "0 rows"),
        (np.zeros((3, 0)), "0 columns"),
        ([["a", "b"]], "must be a numeric array"),
    ],
)
def test_check_logits_rejects(logits, message):
    with pytest.raises(ValueError, match=message):
        check_logits(logits)


def test_metrics_reject_nan_logits_with_the_argument_name():
    good = np.zeros((3, 2))
    bad = good.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="student_logits contain 1 non-finite value"):
        kl_divergence(good, bad)
    with pytest.raises(ValueError, match="logits contain 1 non-finite value"):
        negative_log_likelihood(bad, [0, 1, 0])
    with pytest.raises(ValueError, match="non-finite"):
        softmax(bad)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            [0, 1, 3],
            r"must lie in \[0, 3\) for 3 classes, but 1 values do not \(max 3\)",
        ),
        ([0, -1, 2], "must be >= 0, but 1 values are negative"),
        ([0.0, 1.5, 2.0], "1 values are not whole numbers"),
        ([0.0, np.nan, 2.0], "not whole numbers"),
        (["a", "b"], "must be integer class indices"),
        ([[0], [1]], r"must be 1-D .* got shape \(2, 1\)"),
        ([], "empty"),
    ],
)
def test_check_labels_rejects(labels, message):
    with pytest.raises(ValueError, match=message):
        check_labels(labels, 3)


def test_check_labels_accepts_whole_floats():
    out = check_labels(np.array([0.0, 2.0, 1.0]), 3)
    assert out.dtype == np.intp
    np.testing.assert_array_equal(out, [0, 2, 1])


def test_length_mismatch_is_reported_with_both_lengths():
    probs = np.full((100, 2), 0.5)
    with pytest.raises(ValueError, match="labels has 99 rows but probs has 100"):
        brier_score(probs, np.zeros(99, dtype=int))
    with pytest.raises(ValueError, match="labels has 99 rows but logits has 100"):
        negative_log_likelihood(np.zeros((100, 2)), np.zeros(99, dtype=int))


def test_logits_passed_as_probabilities_are_refused():
    logits = np.random.default_rng(1).normal(size=(10, 3))
    with pytest.raises(ValueError, match="pass softmax"):
        expected_calibration_error(logits, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="rows must sum to 1, but 1 of 2 rows do not"):
        check_probs([[0.5, 0.5], [0.2, 0.2]])


@pytest.mark.parametrize("temperature", [0, -1.0, np.nan, np.inf, True, "2"])
def test_bad_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="'temperature' parameter"):
        softmax(np.zeros((2, 2)), temperature=temperature)
