"""Copied teacher errors: does the student repeat the teacher's wrong answers?

Every function takes the labels ``y``, the teacher's predictions ``t`` and the
student's predictions ``s`` as integer arrays of shape (n_samples,). A metric
whose denominator is empty (no teacher errors, no student errors, no known
failures, ...) is undefined and returns ``nan`` instead of raising, so a check
can report it as such.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from distill_eval.metrics.probabilities import (
    _check_int_param,
    _check_same_length,
    check_labels,
)

__all__ = [
    "chance_copy_rate",
    "copied_share",
    "copy_lift",
    "copy_p_value",
    "copy_rate",
    "error_consistency",
    "known_copied",
    "teacher_errors",
]

_Triple = tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]


def _check_triple(y: ArrayLike, t: ArrayLike, s: ArrayLike, n_classes: int | None = None) -> _Triple:
    labels = check_labels(y, n_classes, name="y")
    teacher = check_labels(t, n_classes, name="t")
    student = check_labels(s, n_classes, name="s")
    _check_same_length("t", teacher, "y", labels)
    _check_same_length("s", student, "y", labels)
    return labels, teacher, student


def _fraction(hits: NDArray[np.bool_], among: NDArray[np.bool_]) -> float:
    """``mean(hits[among])``, or NaN when ``among`` selects nothing."""
    n = int(np.count_nonzero(among))
    return float(np.count_nonzero(hits & among) / n) if n else float("nan")


def teacher_errors(y: ArrayLike, t: ArrayLike) -> int:
    """Number of examples the teacher gets wrong.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.

    Returns
    -------
    int
    """
    labels = check_labels(y, None, name="y")
    teacher = check_labels(t, None, name="t")
    _check_same_length("t", teacher, "y", labels)
    return int(np.count_nonzero(teacher != labels))


def copy_rate(y: ArrayLike, t: ArrayLike, s: ArrayLike) -> float:
    """Of the teacher's errors, the fraction where the student predicts the same class.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.

    Returns
    -------
    float
        In [0, 1]; NaN when the teacher makes no errors.

    Examples
    --------
    >>> copy_rate([0, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 1])
    0.5
    """
    labels, teacher, student = _check_triple(y, t, s)
    return _fraction(student == teacher, teacher != labels)


def copied_share(y: ArrayLike, t: ArrayLike, s: ArrayLike) -> float:
    """Of the student's errors, the fraction that repeat the teacher's wrong answer.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.

    Returns
    -------
    float
        In [0, 1]; NaN when the student makes no errors.
    """
    labels, teacher, student = _check_triple(y, t, s)
    return _fraction((student == teacher) & (teacher != labels), student != labels)


def error_consistency(y: ArrayLike, t: ArrayLike, s: ArrayLike) -> float:
    """Error consistency (Geirhos et al. 2020): kappa of the correctness indicators.

    ``c_obs`` is the fraction of examples both models get right or both get
    wrong, ``c_exp = a_t a_s + (1 - a_t)(1 - a_s)`` what independent models
    with accuracies ``a_t`` and ``a_s`` would reach, and
    ``kappa = (c_obs - c_exp) / (1 - c_exp)``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.

    Returns
    -------
    float
        Kappa in [-1, 1]; NaN when ``c_exp == 1`` (both models are right on
        every example, or both wrong on every example).
    """
    labels, teacher, student = _check_triple(y, t, s)
    n = labels.shape[0]
    t_right = teacher == labels
    s_right = student == labels
    # Integer counts, so that c_exp == 1 is decided exactly.
    n_t, n_s = int(np.count_nonzero(t_right)), int(np.count_nonzero(s_right))
    observed = int(np.count_nonzero(t_right == s_right))
    expected = n_t * n_s + (n - n_t) * (n - n_s)  # c_exp * n**2
    if expected == n * n:
        return float("nan")
    return float((observed * n - expected) / (n * n - expected))


def known_copied(y: ArrayLike, t: ArrayLike, s: ArrayLike, known_mask: ArrayLike) -> float:
    """Of the known failures, the fraction where the student repeats the teacher error.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.
    known_mask : array-like of bool, shape (n_samples,)
        True for the examples listed as known failures.

    Returns
    -------
    float
        In [0, 1]; NaN when the mask selects no example.
    """
    labels, teacher, student = _check_triple(y, t, s)
    mask = np.asarray(known_mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"known_mask must be a boolean array, got dtype {mask.dtype}")
    if mask.ndim != 1:
        raise ValueError(f"known_mask must be 1-D of shape (n_samples,), got shape {mask.shape}")
    _check_same_length("known_mask", mask, "y", labels)
    return _fraction((teacher != labels) & (student == teacher), mask)


def _chance_matrix(labels: NDArray[np.intp], student: NDArray[np.intp], n_classes: int) -> NDArray[np.float64]:
    """The student's row-normalised confusion matrix ``P(s = j | y = i)``."""
    counts = np.bincount(labels * n_classes + student, minlength=n_classes * n_classes)
    counts = counts.reshape(n_classes, n_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / totals


def chance_copy_rate(y: ArrayLike, t: ArrayLike, s: ArrayLike, *, n_classes: int) -> float:
    """Copy rate expected if the student erred independently of the teacher.

    For each example the teacher gets wrong, the probability that the student
    predicts the teacher's class ``t_i`` given the true class ``y_i``, read from
    the student's row-normalised confusion matrix over all examples; averaged
    over those examples. It is also the expected copy rate under the null of
    :func:`copy_p_value`.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.
    n_classes : int
        Number of classes; all three arrays must lie in ``[0, n_classes)``.

    Returns
    -------
    float
        In [0, 1]; NaN when the teacher makes no errors.
    """
    n_classes = _check_int_param("n_classes", n_classes, low=1)
    labels, teacher, student = _check_triple(y, t, s, n_classes)
    wrong = teacher != labels
    if not wrong.any():
        return float("nan")
    chance = _chance_matrix(labels, student, n_classes)
    return float(np.mean(chance[labels[wrong], teacher[wrong]]))


def copy_lift(y: ArrayLike, t: ArrayLike, s: ArrayLike, *, n_classes: int) -> float:
    """``copy_rate / chance_copy_rate``: how many times chance the student copies.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.
    n_classes : int
        Number of classes.

    Returns
    -------
    float
        About 1 for a student whose errors are independent of the teacher's;
        NaN when the teacher makes no errors or the chance rate is 0 (then
        the copy rate is 0 as well: a copied class is always in the
        student's confusion matrix).
    """
    chance = chance_copy_rate(y, t, s, n_classes=n_classes)
    if not chance > 0:
        return float("nan")
    return copy_rate(y, t, s) / chance


def _permuted_within_class(
    labels: NDArray[np.intp],
    values: NDArray[np.intp],
    n_permutations: int,
    rng: np.random.Generator,
) -> NDArray[np.intp]:
    """``values`` shuffled among the examples of each class, ``n_permutations`` times.

    Returns an array of shape (n_permutations, n_samples). Sorting random keys
    offset by the class rank groups the examples by class in a random order;
    the stable sort of the labels gives the same groups in the original order.
    Pairing the two positions moves each value to a random slot of its class.
    """
    _, rank = np.unique(labels, return_inverse=True)
    home = np.argsort(rank, kind="stable")
    keys = rng.random((n_permutations, labels.shape[0])) + rank[None, :]
    source = np.argsort(keys, axis=1)
    permuted = np.empty((n_permutations, labels.shape[0]), dtype=values.dtype)
    permuted[:, home] = values[source]
    return permuted


def copy_p_value(
    y: ArrayLike,
    t: ArrayLike,
    s: ArrayLike,
    *,
    n_permutations: int = 1000,
    rng: np.random.Generator | int | None = None,
) -> float:
    """One-sided permutation test that the student copies teacher errors beyond chance.

    The statistic is the number of teacher errors the student repeats. The
    null keeps each true class's multiset of student predictions and shuffles
    it among that class's examples, which breaks any link to the teacher beyond
    the class. ``p = (1 + #{null >= observed}) / (1 + n_permutations)``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        True class indices.
    t : array-like of shape (n_samples,)
        Teacher predictions.
    s : array-like of shape (n_samples,)
        Student predictions.
    n_permutations : int, default=1000
        Number of shuffles (>= 1); the smallest possible p-value is
        ``1 / (1 + n_permutations)``.
    rng : numpy.random.Generator or int or None, default=None
        Source of randomness, or a seed for ``np.random.default_rng``.

    Returns
    -------
    float
        In (0, 1]; NaN when the teacher makes no errors.
    """
    n_permutations = _check_int_param("n_permutations", n_permutations, low=1)
    labels, teacher, student = _check_triple(y, t, s)
    generator = np.random.default_rng(rng)
    wrong = teacher != labels
    if not wrong.any():
        return float("nan")
    observed = int(np.count_nonzero(wrong & (student == teacher)))
    # Only classes with a teacher error can change the statistic; shuffle those alone.
    relevant = np.isin(labels, labels[wrong])
    sub_labels, sub_student = labels[relevant], student[relevant]
    sub_teacher, sub_wrong = teacher[relevant], wrong[relevant]
    # Chunk the permutations so memory stays near 4 million entries per chunk.
    chunk = max(1, 4_000_000 // sub_labels.shape[0])
    n_extreme = 0
    for start in range(0, n_permutations, chunk):
        size = min(chunk, n_permutations - start)
        null = _permuted_within_class(sub_labels, sub_student, size, generator)
        copies = np.count_nonzero((null == sub_teacher[None, :]) & sub_wrong[None, :], axis=1)
        n_extreme += int(np.count_nonzero(copies >= observed))
    return (1 + n_extreme) / (1 + n_permutations)
