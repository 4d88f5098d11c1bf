"""Teacher-student agreement against scipy / scikit-learn and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import cohen_kappa_score, top_k_accuracy_score

from distill_eval.metrics import (
    cohen_kappa,
    js_divergence,
    js_per_example,
    kl_divergence,
    kl_per_example,
    top1_agreement,
    topk_agreement,
    total_variation,
    tvd_per_example,
)


def pair(seed, n=300, n_classes=6):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(0, 3, size=(n, n_classes))
    student = teacher + rng.normal(0, 2, size=(n, n_classes))
    return teacher, student


# --- top-1 / top-k ------------------------------------------------------------


def test_top1_agreement_by_hand_with_first_max_on_ties():
    teacher = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0]])
    student = np.array([[0.0, 2.0, 0.0], [0.0, 3.0, 3.0], [1.0, 1.0, 1.0]])
    # argmaxes: teacher 0, 1, 2 (the tie in row 0 goes to class 0);
    #           student 1, 1, 0 (ties in rows 1 and 2 go to the first class)
    assert top1_agreement(teacher, student) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("student_row", "k", "expected"),
    [
        (
            [3.0, 3.0, 3.0, 0.0],
            1,
            1.0,
        ),  # all tied with the teacher's class: in the top-1
        ([5.0, 3.0, 3.0, 0.0], 1, 0.0),  # one class strictly above
        ([5.0, 3.0, 3.0, 0.0], 2, 1.0),
        ([5.0, 4.0, 3.0, 3.0], 2, 0.0),  # two strictly above
        ([5.0, 4.0, 3.0, 3.0], 3, 1.0),
        ([5.0, 4.0, 3.0, 9.0], 4, 1.0),  # k = n_classes
        ([5.0, 4.0, 3.0, 9.0], 50, 1.0),  # k > n_classes
    ],
)
def test_topk_tie_rule(student_row, k, expected):
    teacher = np.array([[0.0, 0.0, 1.0, 0.0]])  # teacher's class: 2
    assert topk_agreement(teacher, np.array([student_row]), k=k) == expected


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_topk_matches_sklearn_without_ties(k):
    teacher, student = pair(0)
    expected = top_k_accuracy_score(teacher.argmax(axis=1), student, k=k, labels=np.arange(6))
    assert topk_agreement(teacher, student, k=k) == pytest.approx(expected)
    if k == 1:
        assert topk_agreement(teacher, student, k=1) == top1_agreement(teacher, student)


def test_topk_validates_k():
    teacher, student = pair(0, n=5)
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="'k' parameter"):
            topk_agreement(teacher, student, k=k)


def test_shape_mismatch_names_both_models():
    with pytest.raises(
        ValueError,
        match=r"teacher_logits has shape \(4, 3\) "
        r"but student_logits has shape \(4, 2\)",
    ):
        top1_agreement(np.zeros((4, 3)), np.zeros((4, 2)))


# --- divergences --------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_matches_scipy_rel_entr(temperature):
    teacher, student = pair(1)
    p = scipy.special.softmax(teacher / temperature, axis=1)
    q = scipy.special.softmax(student / temperature, axis=1)
    expected = scipy.special.rel_entr(p, q).sum(axis=1)
    np.testing.assert_allclose(
        kl_per_example(teacher, student, temperature=temperature),
        expected,
        rtol=1e-9,
        atol=1e-14,
    )
    assert kl_divergence(teacher, student, temperature=temperature) == pytest.approx(expected.mean(), rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_js_is_the_square_of_scipy_jensenshannon(temperature):
    teacher, student = pair(2)
    p = scipy.special.softmax(teacher / temperature, axis=1)
    q = scipy.special.softmax(student / temperature, axis=1)
    expected = jensenshannon(p, q, axis=1) ** 2  # natural log by default
    np.testing.assert_allclose(
        js_per_example(teacher, student, temperature=temperature),
        expected,
        rtol=1e-7,
        atol=1e-14,
    )
    assert js_divergence(teacher, student, temperature=temperature) == pytest.approx(expected.mean(), rel=1e-7)


def test_js_reaches_ln2_for_disjoint_predictions_and_kl_stays_finite():
    teacher = np.array([[800.0, -800.0], [-800.0, 800.0]])
    student = teacher[::-1].copy()
    assert js_divergence(teacher, student) == pytest.approx(np.log(2))
    assert total_variation(teacher, student) == pytest.approx(1.0)
    kl = kl_per_example(teacher, student)
    np.testing.assert_allclose(kl, [1600.0, 1600.0])


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_tvd_by_definition(temperature):
    teacher, student = pair(3)
    p = scipy.special.softmax(teacher / temperature, axis=1)
    q = scipy.special.softmax(student / temperature, axis=1)
    expected = 0.5 * np.abs(p - q).sum(axis=1)
    np.testing.assert_allclose(tvd_per_example(teacher, student, temperature=temperature), expected)
    assert total_variation(teacher, student, temperature=temperature) == pytest.approx(expected.mean())


def test_identical_models_have_zero_divergence():
    teacher, _ = pair(4)
    assert kl_divergence(teacher, teacher) == 0.0
    assert js_divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-15)
    assert total_variation(teacher, teacher) == 0.0
    # adding a constant to a row changes no probability
    shifted = teacher + np.arange(teacher.shape[0])[:, None]
    assert kl_divergence(teacher, shifted) == pytest.approx(0.0, abs=1e-12)


def test_single_class_input():
    one = np.random.default_rng(0).normal(size=(5, 1))
    other = np.random.default_rng(1).normal(size=(5, 1))
    assert top1_agreement(one, other) == 1.0
    assert topk_agreement(one, other, k=1) == 1.0
    assert kl_divergence(one, other) == 0.0
    assert js_divergence(one, other) == 0.0
    assert total_variation(one, other) == 0.0


# --- Cohen's kappa ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, size=250)
    b = np.where(rng.random(250) < 0.6, a, rng.integers(0, 4, size=250))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), rel=1e-12)
    assert cohen_kappa(a, b, n_classes=10) == pytest.approx(cohen_kappa_score(a, b), rel=1e-12)


def test_kappa_extremes():
    a = np.array([0, 1, 2, 0, 1, 2])
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    # expected agreement 1: kappa is undefined
    assert np.isnan(cohen_kappa([2, 2, 2], [2, 2, 2]))
    # one model constant, the other not: expected agreement < 1, kappa 0
    assert cohen_kappa([0, 0, 0, 0], [0, 1, 0, 1]) == 0.0


def test_kappa_validates_inputs():
    with pytest.raises(ValueError, match="pred_a has 4 rows but pred_b has 3"):
        cohen_kappa([0, 1, 0, 1], [0, 1, 0])
    with pytest.raises(ValueError, match=r"pred_a must lie in \[0, 2\)"):
        cohen_kappa([0, 2], [0, 1], n_classes=2)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_divergences_in_one_pass_equal_the_single_metrics(temperature: float) -> None:
    from distill_eval.metrics import divergences_per_example, js_per_example, kl_per_example, tvd_per_example

    rng = np.random.default_rng(9)
    teacher = rng.normal(0, 3, size=(300, 8)).astype(np.float32)
    student = teacher + rng.normal(0, 1, size=(300, 8)).astype(np.float32)
    both = divergences_per_example(teacher, student, temperature=temperature)
    for name, single in (("kl", kl_per_example), ("js", js_per_example), ("tvd", tvd_per_example)):
        np.testing.assert_array_equal(both[name], single(teacher, student, temperature=temperature))
