"""Copied teacher errors: hand counts, brute-force references and simulated students."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from distill_eval.metrics import (
    chance_copy_rate,
    copied_share,
    copy_lift,
    copy_p_value,
    copy_rate,
    error_consistency,
    known_copied,
    teacher_errors,
)
from distill_eval.metrics.copying import _permuted_within_class

# index:           0  1  2  3  4  5  6  7
Y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
T = np.array([0, 1, 1, 2, 0, 2, 2, 1])  # wrong at 1, 3, 4, 6
S = np.array([0, 1, 0, 2, 1, 2, 2, 0])  # copies at 1, 3, 6; own errors at 2, 4, 7
KNOWN = np.array([False, True, False, False, True, False, False, True])


def test_hand_counts():
    assert teacher_errors(Y, T) == 4
    assert copy_rate(Y, T, S) == pytest.approx(3 / 4)
    # student errors 1, 2, 3, 4, 6, 7; of those, 1, 3, 6 repeat the teacher
    assert copied_share(Y, T, S) == pytest.approx(3 / 6)
    # known failures 1 (copied), 4 (different wrong class), 7 (teacher right)
    assert known_copied(Y, T, S, KNOWN) == pytest.approx(1 / 3)


def test_error_consistency_by_hand_and_against_sklearn_kappa():
    # a_t = 4/8, a_s = 2/8, c_obs = 6/8, c_exp = .5*.25 + .5*.75 = .5 -> kappa .5
    assert error_consistency(Y, T, S) == pytest.approx(0.5)
    assert error_consistency(Y, T, S) == pytest.approx(cohen_kappa_score(T == Y, S == Y))


def test_chance_copy_rate_and_lift_by_hand():
    # student's rows P(s | y): y=0 -> [1/3, 1/3, 1/3], y=1 -> [2/3, 0, 1/3],
    #                          y=2 -> [0, 1/2, 1/2]
    # teacher errors (y, t): (0, 1) 1/3, (1, 2) 1/3, (2, 0) 0, (0, 2) 1/3 -> mean 1/4
    assert chance_copy_rate(Y, T, S, n_classes=3) == pytest.approx(1 / 4)
    assert copy_lift(Y, T, S, n_classes=3) == pytest.approx(3.0)


def brute_force_chance(y, t, s):
    total, count = 0.0, 0
    for i in range(len(y)):
        if t[i] != y[i]:
            same_class = [j for j in range(len(y)) if y[j] == y[i]]
            total += sum(1 for j in same_class if s[j] == t[i]) / len(same_class)
            count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chance_copy_rate_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, size=150)
    t = np.where(rng.random(150) < 0.6, y, rng.integers(0, 5, size=150))
    s = np.where(rng.random(150) < 0.6, y, rng.integers(0, 5, size=150))
    expected = brute_force_chance(y, t, s)
    # n_classes larger than needed changes nothing
    for n_classes in (5, 8):
        assert chance_copy_rate(y, t, s, n_classes=n_classes) == pytest.approx(expected)


def test_undefined_metrics_are_nan():
    y = np.array([0, 1, 2, 1])
    perfect = y.copy()
    wrong = (y + 1) % 3
    assert teacher_errors(y, perfect) == 0
    assert np.isnan(copy_rate(y, perfect, wrong))
    assert np.isnan(chance_copy_rate(y, perfect, wrong, n_classes=3))
    assert np.isnan(copy_lift(y, perfect, wrong, n_classes=3))
    assert np.isnan(copy_p_value(y, perfect, wrong, n_permutations=10, rng=0))
    assert np.isnan(copied_share(y, wrong, perfect))  # the student makes no error
    assert np.isnan(error_consistency(y, perfect, perfect))  # c_exp = 1
    assert np.isnan(error_consistency(y, wrong, wrong))
    assert np.isnan(known_copied(y, wrong, wrong, np.zeros(4, dtype=bool)))
    # a student that never predicts the teacher's wrong class: chance 0, lift undefined
    t = np.array([1, 1, 2, 1])  # one error: (0 -> 1)
    s = np.array([0, 1, 2, 1])
    assert chance_copy_rate(y, t, s, n_classes=3) == 0.0
    assert copy_rate(y, t, s) == 0.0
    assert np.isnan(copy_lift(y, t, s, n_classes=3))


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="s has 7 rows but y has 8"):
        copy_rate(Y, T, S[:-1])
    with pytest.raises(ValueError, match="known_mask must be a boolean array"):
        known_copied(Y, T, S, KNOWN.astype(int))
    with pytest.raises(ValueError, match="known_mask has 3 rows but y has 8"):
        known_copied(Y, T, S, KNOWN[:3])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 2\) for 2 classes, but 1 values"):
        chance_copy_rate([0, 1, 1], [0, 2, 1], [0, 1, 1], n_classes=2)
    with pytest.raises(ValueError, match="'n_permutations' parameter"):
        copy_p_value(Y, T, S, n_permutations=0)


# --- simulated students -------------------------------------------------------


def simulate(seed, n=20000, n_classes=5, copy_prob=0.0):
    """Labels, a 70%-accurate teacher, and a student whose errors are its own
    except that, with probability `copy_prob`, it repeats a teacher error."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)

    def noisy():
        off = rng.integers(1, n_classes, size=n)
        return np.where(rng.random(n) < 0.7, y, (y + off) % n_classes)

    t, s = noisy(), noisy()
    s = np.where((t != y) & (rng.random(n) < copy_prob), t, s)
    return y, t, s


def test_copy_lift_is_one_for_independent_errors_and_large_for_copying():
    y, t, s = simulate(0)
    assert copy_lift(y, t, s, n_classes=5) == pytest.approx(1.0, abs=0.15)
    y, t, s = simulate(1, copy_prob=0.8)
    assert copy_lift(y, t, s, n_classes=5) > 5.0
    assert copy_rate(y, t, s) > 0.8


def test_copy_p_value_detects_copying():
    y, t, s = simulate(2, n=2000, copy_prob=0.3)
    p = copy_p_value(y, t, s, n_permutations=199, rng=0)
    assert p == pytest.approx(1 / 200)


def test_copy_p_value_is_not_small_for_an_independent_student():
    y, t, s = simulate(3, n=2000)
    assert copy_p_value(y, t, s, n_permutations=199, rng=0) > 0.05


def test_copy_p_value_is_valid_under_the_null():
    # A valid permutation p-value satisfies P(p <= alpha) <= alpha when the
    # student is independent of the teacher given the class.
    rng = np.random.default_rng(4)
    p_values = []
    for _ in range(200):
        y = rng.integers(0, 3, size=90)
        t = np.where(rng.random(90) < 0.6, y, rng.integers(0, 3, size=90))
        s = np.where(rng.random(90) < 0.6, y, rng.integers(0, 3, size=90))
        p_values.append(copy_p_value(y, t, s, n_permutations=99, rng=rng))
    p_values = np.array(p_values)
    assert np.mean(p_values <= 0.1) < 0.2
    assert 0.35 < np.mean(p_values) < 0.65


def test_copy_p_value_is_reproducible_and_bounded():
    y, t, s = simulate(5, n=500)
    first = copy_p_value(y, t, s, n_permutations=50, rng=7)
    assert first == copy_p_value(y, t, s, n_permutations=50, rng=np.random.default_rng(7))
    assert 1 / 51 <= first <= 1.0


def test_within_class_permutation_keeps_each_class_and_averages_to_chance():
    y, t, s = simulate(6, n=120, n_classes=3)
    null = _permuted_within_class(y, s, 3000, np.random.default_rng(0))
    assert null.shape == (3000, 120)
    for k in range(3):
        in_class = y == k
        expected = np.sort(s[in_class])
        np.testing.assert_array_equal(np.sort(null[:, in_class], axis=1), np.tile(expected, (3000, 1)))
    # the permutation moves values: not every row is the identity
    assert (null != s).any(axis=1).mean() > 0.99
    # E[null copy rate] = chance copy rate (its definition as an expectation)
    wrong = t != y
    null_rate = ((null == t) & wrong).sum(axis=1).mean() / wrong.sum()
    assert null_rate == pytest.approx(chance_copy_rate(y, t, s, n_classes=3), abs=0.01)
