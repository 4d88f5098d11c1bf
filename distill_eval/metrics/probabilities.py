"""From logits to probabilities, and the input checks every metric shares.

Everything is computed in float64, a block of rows at a time (:func:`map_rows`):
float32 logits of a million examples are never copied whole to float64, and every
temporary stays in cache. Validators raise :class:`ValueError` with
what was found ("logits contain 3 non-finite values", "labels has 99 rows but
probs has 100"); metrics call them before computing anything, so a malformed
array never turns into a number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "check_labels",
    "check_logits",
    "check_probs",
    "entropy",
    "log_softmax",
    "softmax",
    "top2_margin",
]


# ---------------------------------------------------------------------------
# validators
# ---------------------------------------------------------------------------


_CHUNK_VALUES = 1 << 17  # values per block of rows: 1 MiB of float64 per temporary


def row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Consecutive row slices holding about ``_CHUNK_VALUES`` values each."""
    step = max(1, _CHUNK_VALUES // max(1, n_cols))
    return (slice(start, start + step) for start in range(0, n_rows, step))


def map_rows(fn: Callable[..., np.ndarray], *matrices: np.ndarray, out_dtype: type = np.float64) -> np.ndarray:
    """``fn(rows, *blocks)`` over blocks of rows, as float64; the per-row results concatenated.

    ``rows`` is the block's slice (to index per-row arguments such as labels); each block
    is a float64 copy of the matrices' rows, which ``fn`` may overwrite.
    """
    n, k = matrices[0].shape
    out = np.empty(n, dtype=out_dtype)
    for rows in row_blocks(n, k):
        out[rows] = fn(rows, *(np.array(m[rows], dtype=np.float64) for m in matrices))
    return out


def _checked(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a finite float matrix of shape (n >= 1, k >= 1), float32 kept as is (no copy)."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D of shape (n_samples, n_classes), got an array of shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has 0 rows; at least one example is needed")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns; at least one class is needed")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    n_bad = sum(int(np.count_nonzero(~np.isfinite(array[rows]))) for rows in row_blocks(*array.shape))
    if n_bad:
        plural = "value" if n_bad == 1 else "values"
        raise ValueError(f"{name} contain {n_bad} non-finite {plural} (NaN or inf)")
    return array


def _check_matrix(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """Return ``values`` as a finite float64 matrix of shape (n >= 1, k >= 1)."""
    return _checked(values, name).astype(np.float64, copy=False)


def top_probability(logits: np.ndarray, *, temperature: float = 1.0) -> NDArray[np.float64]:
    """The largest class probability of each row of ``softmax(logits / temperature)``, in float64.

    Computed a block of rows at a time, without a probability matrix (internal: inputs are
    a model's validated outputs).
    """

    def top(rows: slice, z: NDArray[np.float64]) -> NDArray[np.float64]:
        z /= temperature
        z -= z.max(axis=1, keepdims=True)
        return 1.0 / np.exp(z).sum(axis=1)  # the top class's logit is now 0

    return map_rows(top, logits)


def _log_softmax_rows(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise log-softmax of a float64 block (modified in place)."""
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def check_logits(logits: ArrayLike, name: str = "logits") -> NDArray[np.float64]:
    """Validate a matrix of logits and return it as float64.

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes)
        Unnormalised scores, one row per example.
    name : str, default="logits"
        How the array is called in error messages.

    Returns
    -------
    logits : ndarray of shape (n_samples, n_classes)
        The same values as a float64 array (a view when already float64).

    Raises
    ------
    ValueError
        If the array is not numeric, not 2-D, empty, or holds NaN or inf.
    """
    return _check_matrix(logits, name)


def check_probs(probs: ArrayLike, name: str = "probs", *, atol: float = 1e-4) -> NDArray[np.float64]:
    """Validate a matrix of class probabilities and return it as float64.

    Rows must lie in [0, 1] and sum to 1 (both within ``atol``), so that logits
    passed by mistake are refused rather than scored.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities, one row per example.
    name : str, default="probs"
        How the array is called in error messages.
    atol : float, default=1e-4
        Tolerance on the range and on each row's sum (float32 softmax outputs
        over many classes are off by about 1e-6).

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        The same values: float32 kept as is (never copied whole), other dtypes as float64.

    Raises
    ------
    ValueError
        If the array fails :func:`check_logits`, has values outside [0, 1] or
        rows that do not sum to 1.
    """
    array = _checked(probs, name)
    n_out = sum(
        int(np.count_nonzero((array[rows] < -atol) | (array[rows] > 1.0 + atol))) for rows in row_blocks(*array.shape)
    )
    if n_out:
        raise ValueError(
            f"{name} must lie in [0, 1], but {n_out} values do not "
            f"(min {array.min():.6g}, max {array.max():.6g}); pass softmax(logits)"
        )
    deviation = np.abs(map_rows(lambda rows, p: p.sum(axis=1), array) - 1.0)
    n_rows = int(np.count_nonzero(deviation > atol))
    if n_rows:
        raise ValueError(
            f"{name} rows must sum to 1, but {n_rows} of {array.shape[0]} rows do not "
            f"(largest deviation {deviation.max():.6g}); pass softmax(logits)"
        )
    return array


def check_labels(labels: ArrayLike, n_classes: int | None, *, name: str = "labels") -> NDArray[np.intp]:
    """Validate a vector of class indices and return it as an integer array.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        Class indices. Integer arrays are accepted, and float arrays whose
        values are all whole numbers (as read from a CSV file).
    n_classes : int or None
        Labels must lie in ``[0, n_classes)``; with None they need only be
        non-negative.
    name : str, default="labels"
        How the array is called in error messages.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        The labels as an ``intp`` array.

    Raises
    ------
    ValueError
        If the array is not 1-D, empty, not integer-valued, or out of range.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n_samples,), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one example is needed")
    if array.dtype.kind == "f":
        not_whole = ~np.isfinite(array) | (array != np.round(array))
        n_bad = int(np.count_nonzero(not_whole))
        if n_bad:
            first = array[np.argmax(not_whole)]
            raise ValueError(
                f"{name} must be integer class indices, but {n_bad} values are not whole numbers (e.g. {first!r})"
            )
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class indices, got dtype {array.dtype}")
    low = array.min()
    if low < 0:
        n_neg = int(np.count_nonzero(array < 0))
        raise ValueError(f"{name} must be >= 0, but {n_neg} values are negative (min {low})")
    if n_classes is not None:
        _check_int_param("n_classes", n_classes, low=1)
        high = array.max()
        if high >= n_classes:
            n_high = int(np.count_nonzero(array >= n_classes))
            raise ValueError(
                f"{name} must lie in [0, {n_classes}) for {n_classes} classes, but {n_high} values do not (max {high})"
            )
    return array.astype(np.intp, copy=False)


def _check_same_length(first_name: str, first: np.ndarray, second_name: str, second: np.ndarray) -> None:
    """Raise if two arrays have a different number of rows."""
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"{first_name} has {first.shape[0]} rows but {second_name} has {second.shape[0]}")


def _check_same_shape(first_name: str, first: np.ndarray, second_name: str, second: np.ndarray) -> None:
    """Raise if two matrices differ in shape (teacher vs. student logits)."""
    if first.shape != second.shape:
        raise ValueError(f"{first_name} has shape {first.shape} but {second_name} has shape {second.shape}")


def _check_int_param(name: str, value: object, *, low: int) -> int:
    """Validate an integer option (bins, k, n_permutations, ...) and return it."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"The '{name}' parameter must be an int in the range [{low}, inf). Got {value!r} instead.")
    return int(value)


def _check_temperature(value: object, name: str = "temperature") -> float:
    """Validate a temperature: a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"The '{name}' parameter must be a finite number > 0. Got {value!r} instead.")
    return float(value)


# ---------------------------------------------------------------------------
# probabilities
# ---------------------------------------------------------------------------


def log_softmax(logits: ArrayLike, *, temperature: float = 1.0) -> NDArray[np.float64]:
    """Log-probabilities ``log softmax(logits / temperature)`` in float64.

    The row maximum is subtracted before exponentiating, so the result is finite
    for any finite logits, including log-probabilities far below float64's
    smallest positive number.

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes)
        Unnormalised scores.
    temperature : float, default=1.0
        Divides the logits; > 1 softens, < 1 sharpens.

    Returns
    -------
    log_probs : ndarray of shape (n_samples, n_classes)

    Examples
    --------
    >>> log_softmax([[0.0, -1000.0]])[0, 1]
    np.float64(-1000.0)
    """
    z, t = _checked(logits, "logits"), _check_temperature(temperature)
    out = np.empty(z.shape)
    for rows in row_blocks(*z.shape):
        out[rows] = _log_softmax_rows(z[rows] / t)
    return out


def softmax(logits: ArrayLike, *, temperature: float = 1.0) -> NDArray[np.float64]:
    """Probabilities ``softmax(logits / temperature)`` in float64.

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes)
        Unnormalised scores.
    temperature : float, default=1.0
        Divides the logits; > 1 softens, < 1 sharpens.

    Returns
    -------
    probs : ndarray of shape (n_samples, n_classes)
        Each row sums to 1.

    Examples
    --------
    >>> softmax([[0.0, 0.0]])
    array([[0.5, 0.5]])
    """
    z, t = _checked(logits, "logits"), _check_temperature(temperature)
    out = np.empty(z.shape)
    for rows in row_blocks(*z.shape):
        e = z[rows] / t
        np.exp(e - e.max(axis=1, keepdims=True), out=e)
        out[rows] = e / e.sum(axis=1, keepdims=True)
    return out


def entropy(probs: ArrayLike) -> NDArray[np.float64]:
    """Shannon entropy of each row, in nats (``0 log 0 = 0``).

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.

    Returns
    -------
    entropy : ndarray of shape (n_samples,)
        Values in [0, log(n_classes)].
    """

    def rows_entropy(rows: slice, p: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.maximum(-(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1), 0.0)

    return map_rows(rows_entropy, check_probs(probs))


def top2_margin(probs: ArrayLike) -> NDArray[np.float64]:
    """Top-1 minus top-2 probability of each row (0 for a single class).

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.

    Returns
    -------
    margin : ndarray of shape (n_samples,)
        Values in [0, 1]; 0 when the two largest probabilities tie.
    """
    p = check_probs(probs)
    if p.shape[1] == 1:
        return np.zeros(p.shape[0])

    def rows_margin(rows: slice, block: NDArray[np.float64]) -> NDArray[np.float64]:
        top = np.partition(block, -2, axis=1)
        return top[:, -1] - top[:, -2]

    return map_rows(rows_margin, p)
