"""Agreement between a teacher and a student on the same examples.

Predictions are ``np.argmax`` of the logits: on a tie the first (lowest) class
index wins. Divergences are computed from ``log_softmax(logits / temperature)``
in float64, in nats, without the ``T**2`` factor used in distillation losses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from distill_eval.metrics.probabilities import (
    _check_int_param,
    _check_same_length,
    _check_same_shape,
    _check_temperature,
    _checked,
    _log_softmax_rows,
    check_labels,
    map_rows,
    row_blocks,
)

__all__ = [
    "cohen_kappa",
    "divergences_per_example",
    "js_divergence",
    "js_per_example",
    "kl_divergence",
    "kl_per_example",
    "top1_agreement",
    "topk_agreement",
    "total_variation",
    "tvd_per_example",
]


def _pair(teacher_logits: ArrayLike, student_logits: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    teacher = _checked(teacher_logits, "teacher_logits")
    student = _checked(student_logits, "student_logits")
    _check_same_shape("teacher_logits", teacher, "student_logits", student)
    return teacher, student


def _per_example(
    fns: dict[str, Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]],
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    temperature: float,
) -> dict[str, NDArray[np.float64]]:
    """Each ``fn(log_p, log_q)`` over blocks of rows of both models' log-probabilities at ``temperature``."""
    teacher, student = _pair(teacher_logits, student_logits)
    t = _check_temperature(temperature)
    out = {name: np.empty(teacher.shape[0]) for name in fns}
    for rows in row_blocks(*teacher.shape):
        log_p = _log_softmax_rows(np.array(teacher[rows], dtype=np.float64) / t)
        log_q = _log_softmax_rows(np.array(student[rows], dtype=np.float64) / t)
        for name, fn in fns.items():
            out[name][rows] = fn(log_p, log_q)
    return out


def _kl(log_p: NDArray[np.float64], log_q: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.exp(log_p)
    return np.maximum(np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1), 0.0)


def _js(log_p: NDArray[np.float64], log_q: NDArray[np.float64]) -> NDArray[np.float64]:
    p, q = np.exp(log_p), np.exp(log_q)
    with np.errstate(divide="ignore", invalid="ignore"):  # -inf only where p = q = 0, masked below
        log_m = np.log(0.5 * (p + q))  # cheaper than logaddexp, and exact wherever p or q > 0
        terms = np.where(p > 0, p * (log_p - log_m), 0.0) + np.where(q > 0, q * (log_q - log_m), 0.0)
    return np.clip(0.5 * terms.sum(axis=1), 0.0, np.log(2.0))


def _tvd(log_p: NDArray[np.float64], log_q: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.clip(0.5 * np.abs(np.exp(log_p) - np.exp(log_q)).sum(axis=1), 0.0, 1.0)


def top1_agreement(teacher_logits: ArrayLike, student_logits: ArrayLike) -> float:
    """Fraction of examples where the teacher's and the student's argmax agree.

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.

    Returns
    -------
    float
        Agreement in [0, 1].
    """
    teacher, student = _pair(teacher_logits, student_logits)
    return float(np.mean(teacher.argmax(axis=1) == student.argmax(axis=1)))


def topk_agreement(teacher_logits: ArrayLike, student_logits: ArrayLike, *, k: int = 5) -> float:
    """Fraction of examples where the teacher's top-1 class is in the student's top-k.

    Ties are counted in the student's favour: the teacher's class is in the
    top-k when fewer than ``k`` classes have a strictly greater student score.
    With ``k >= n_classes`` the result is 1.0; with ``k = 1`` and no ties it
    equals :func:`top1_agreement`.

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores; the teacher's class is their argmax.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    k : int, default=5
        Size of the student's candidate set (>= 1).

    Returns
    -------
    float
        Agreement in [0, 1].
    """
    k = _check_int_param("k", k, low=1)
    teacher, student = _pair(teacher_logits, student_logits)

    def in_topk(rows: slice, t: NDArray[np.float64], s: NDArray[np.float64]) -> NDArray[np.float64]:
        score = s[np.arange(s.shape[0]), t.argmax(axis=1)]
        return np.count_nonzero(s > score[:, None], axis=1) < k

    return float(np.mean(map_rows(in_topk, teacher, student)))


def kl_per_example(
    teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0
) -> NDArray[np.float64]:
    """``KL(teacher || student)`` of each example, in nats.

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    temperature : float, default=1.0
        Both models' logits are divided by it before the softmax.

    Returns
    -------
    kl : ndarray of shape (n_samples,)
        Values in [0, inf).
    """

    return _per_example({"kl": _kl}, teacher_logits, student_logits, temperature)["kl"]


def divergences_per_example(
    teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0
) -> dict[str, NDArray[np.float64]]:
    """KL, Jensen-Shannon and total variation of each example, in one pass over both matrices.

    Equal to :func:`kl_per_example`, :func:`js_per_example` and :func:`tvd_per_example`; for
    callers that need all three (each alone computes both models' log-probabilities again).

    Returns
    -------
    dict with keys ``"kl"``, ``"js"``, ``"tvd"``, each an ndarray of shape (n_samples,)
    """
    return _per_example({"kl": _kl, "js": _js, "tvd": _tvd}, teacher_logits, student_logits, temperature)


def kl_divergence(teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0) -> float:
    """Mean ``KL(teacher || student)`` over examples, in nats (no ``T**2`` factor).

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    temperature : float, default=1.0
        Both models' logits are divided by it before the softmax.

    Returns
    -------
    float
    """
    return float(np.mean(kl_per_example(teacher_logits, student_logits, temperature=temperature)))


def js_per_example(
    teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0
) -> NDArray[np.float64]:
    """Jensen-Shannon divergence of each example, in nats.

    ``JS = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``; this is
    the square of ``scipy.spatial.distance.jensenshannon`` (natural log).

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    temperature : float, default=1.0
        Both models' logits are divided by it before the softmax.

    Returns
    -------
    js : ndarray of shape (n_samples,)
        Values in [0, ln 2].
    """

    return _per_example({"js": _js}, teacher_logits, student_logits, temperature)["js"]


def js_divergence(teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0) -> float:
    """Mean Jensen-Shannon divergence over examples, in nats (range [0, ln 2]).

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    temperature : float, default=1.0
        Both models' logits are divided by it before the softmax.

    Returns
    -------
    float
    """
    return float(np.mean(js_per_example(teacher_logits, student_logits, temperature=temperature)))


def tvd_per_example(
    teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0
) -> NDArray[np.float64]:
    """Total variation distance of each example: ``0.5 * sum_k |p_k - q_k|``.

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    temperature : float, default=1.0
        Both models' logits are divided by it before the softmax.

    Returns
    -------
    tvd : ndarray of shape (n_samples,)
        Values in [0, 1].
    """

    return _per_example({"tvd": _tvd}, teacher_logits, student_logits, temperature)["tvd"]


def total_variation(teacher_logits: ArrayLike, student_logits: ArrayLike, *, temperature: float = 1.0) -> float:
    """Mean total variation distance over examples (range [0, 1]).

    Parameters
    ----------
    teacher_logits : array-like of shape (n_samples, n_classes)
        Teacher scores.
    student_logits : array-like of shape (n_samples, n_classes)
        Student scores.
    temperature : float, default=1.0
        Both models' logits are divided by it before the softmax.

    Returns
    -------
    float
    """
    return float(np.mean(tvd_per_example(teacher_logits, student_logits, temperature=temperature)))


def cohen_kappa(pred_a: ArrayLike, pred_b: ArrayLike, *, n_classes: int | None = None) -> float:
    """Cohen's kappa between two vectors of class predictions.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and
    ``p_e`` the agreement expected from the two marginals.

    Parameters
    ----------
    pred_a, pred_b : array-like of shape (n_samples,)
        Class indices (e.g. ``logits.argmax(axis=1)``).
    n_classes : int, optional
        Number of classes; predictions must lie in ``[0, n_classes)``. By
        default, one more than the largest prediction.

    Returns
    -------
    float
        Kappa in [-1, 1]; NaN when ``p_e == 1`` (both vectors predict the
        same single class everywhere), where kappa is undefined.
    """
    a = check_labels(pred_a, n_classes, name="pred_a")
    b = check_labels(pred_b, n_classes, name="pred_b")
    _check_same_length("pred_a", a, "pred_b", b)
    k = n_classes if n_classes is not None else int(max(a.max(), b.max())) + 1
    n = a.shape[0]
    # Integer arithmetic so that "p_e == 1" is decided exactly.
    observed = int(np.count_nonzero(a == b))
    expected = int(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k)))
    if expected == n * n:
        return float("nan")
    return float((observed * n - expected) / (n * n - expected))
