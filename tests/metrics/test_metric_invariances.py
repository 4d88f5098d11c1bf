"""Properties of every metric: row order and class names do not matter; ranges hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distill_eval.metrics as m

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, database=None)


def make_problem(seed, n, n_classes):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(0, 3, size=(n, n_classes))
    student = teacher + rng.normal(0, 2, size=(n, n_classes))
    labels = rng.integers(0, n_classes, size=n)
    return rng, teacher, student, labels


def all_metrics(teacher, student, labels):
    n_classes = teacher.shape[1]
    probs = m.softmax(student)
    t, s = teacher.argmax(axis=1), student.argmax(axis=1)
    return {
        "ece": m.expected_calibration_error(probs, labels, bins=10),
        "ece_quantile": m.expected_calibration_error(probs, labels, bins=4, binning="quantile"),
        "mce": m.maximum_calibration_error(probs, labels, bins=10),
        "classwise_ece": m.classwise_ece(probs, labels, bins=5),
        "brier": m.brier_score(probs, labels),
        "nll": m.negative_log_likelihood(student, labels),
        "top1": m.top1_agreement(teacher, student),
        "topk": m.topk_agreement(teacher, student, k=2),
        "kl": m.kl_divergence(teacher, student, temperature=2.0),
        "js": m.js_divergence(teacher, student),
        "tvd": m.total_variation(teacher, student),
        "kappa": m.cohen_kappa(t, s, n_classes=n_classes),
        "copy_rate": m.copy_rate(labels, t, s),
        "copied_share": m.copied_share(labels, t, s),
        "error_consistency": m.error_consistency(labels, t, s),
        "chance_copy_rate": m.chance_copy_rate(labels, t, s, n_classes=n_classes),
    }


def assert_same(left, right):
    for name in left:
        assert left[name] == pytest.approx(right[name], rel=1e-9, abs=1e-12, nan_ok=True), name


problems = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(1, 6))  # seed, n_samples, n_classes


@PROPERTY_SETTINGS
@given(problems)
def test_row_order_does_not_matter(problem):
    rng, teacher, student, labels = make_problem(*problem)
    order = rng.permutation(labels.shape[0])
    assert_same(
        all_metrics(teacher, student, labels),
        all_metrics(teacher[order], student[order], labels[order]),
    )


@PROPERTY_SETTINGS
@given(problems)
def test_class_names_do_not_matter(problem):
    # Renaming classes = permuting the logit columns and mapping the labels.
    rng, teacher, student, labels = make_problem(*problem)
    perm = rng.permutation(teacher.shape[1])  # new column j holds old column perm[j]
    new_label = np.argsort(perm)  # old class c is now called new_label[c]
    assert_same(
        all_metrics(teacher, student, labels),
        all_metrics(teacher[:, perm], student[:, perm], new_label[labels]),
    )


@PROPERTY_SETTINGS
@given(problems)
def test_metric_ranges(problem):
    _, teacher, student, labels = make_problem(*problem)
    values = all_metrics(teacher, student, labels)
    for name in ("ece", "ece_quantile", "mce", "classwise_ece", "top1", "topk", "tvd"):
        assert 0.0 <= values[name] <= 1.0, name
    assert 0.0 <= values["brier"] <= 2.0
    assert values["nll"] >= 0.0
    assert values["kl"] >= 0.0
    assert 0.0 <= values["js"] <= np.log(2)
    assert values["ece"] <= values["mce"] + 1e-12
    for name in ("kappa", "error_consistency"):
        assert np.isnan(values[name]) or -1.0 - 1e-12 <= values[name] <= 1.0 + 1e-12, name
    probs = m.softmax(teacher)
    entropy = m.entropy(probs)
    assert np.all((entropy >= 0) & (entropy <= np.log(teacher.shape[1]) + 1e-12))
    margin = m.top2_margin(probs)
    assert np.all((margin >= 0) & (margin <= 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_temperature_ignores_row_order(seed):
    rng, _, student, labels = make_problem(seed, 300, 4)
    order = rng.permutation(300)
    assert m.fit_temperature(student, labels) == pytest.approx(
        m.fit_temperature(student[order], labels[order]), rel=1e-4
    )
