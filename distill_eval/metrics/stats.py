"""Confidence intervals: exact intervals for proportions, bootstrap for the rest.

Every bounded metric is reported with an interval (``distill-eval docs statistics``). Single
proportions get a closed-form interval; everything else is bootstrapped over
examples, with one set of resampling weights shared by every statistic of a
check so that comparisons of two models on the same examples are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special as _special

__all__ = [
    "BootstrapInterval",
    "Statistic",
    "bootstrap_intervals",
    "clopper_pearson_interval",
    "weighted_sum",
    "wilson_interval",
]


def _check(successes: float, n: float, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def wilson_interval(successes: float, n: float, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Parameters
    ----------
    successes : int
        Number of successes.
    n : int
        Number of trials; ``n = 0`` gives the uninformative ``(0.0, 1.0)``.
    confidence : float, default=0.95
        Two-sided confidence level.

    Returns
    -------
    (low, high) : tuple of float
        Within [0, 1]; it contains ``successes / n``.

    Examples
    --------
    >>> lo, hi = wilson_interval(81, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.7222, 0.8749)
    """
    _check(successes, n, confidence)
    if n == 0:
        return 0.0, 1.0
    z = _special.ndtri(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the edges (as in scipy): rounding must not leave 0/n or n/n outside the interval
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def clopper_pearson_interval(successes: float, n: float, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion: conservative, never too short.

    Parameters and returns as :func:`wilson_interval`.
    """
    _check(successes, n, confidence)
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    lo = 0.0 if successes == 0 else float(_special.betaincinv(successes, n - successes + 1, alpha / 2))
    hi = 1.0 if successes == n else float(_special.betaincinv(successes + 1, n - successes, 1 - alpha / 2))
    return lo, hi


# --- the bootstrap engine ---------------------------------------------------------

Statistic = Callable[[np.ndarray], np.ndarray]
"""A statistic maps a weight matrix of shape (k, n) to k values (see :func:`bootstrap_intervals`)."""

_METHODS = ("bca", "percentile", "basic")
_JACKKNIFE_BLOCKS = 100
_DRAW_ROWS = 4  # resamples turned into counts by one bincount: small enough to stay in cache
_CACHE_CHUNK_BYTES = 4 * 2**20  # a chunk every statistic reads in turn should stay in cache


@dataclass(frozen=True)
class BootstrapInterval:
    """A point estimate and its bootstrap confidence interval.

    Attributes
    ----------
    estimate : float
        The statistic on the original examples (all weights 1).
    low, high : float or None
        Interval bounds; None when no interval could be computed (``method == "none"``).
    method : str
        ``"bca"``, ``"percentile"``, ``"basic"``, or ``"none"``. A requested BCa interval
        that degenerates (e.g. a constant statistic) is reported as ``"percentile"``.
    n_resamples : int
        Number of resamples on which the statistic had a finite value.
    """

    estimate: float
    low: float | None
    high: float | None
    method: str
    n_resamples: int


#: the fewest examples a bootstrap interval is computed from
MIN_BOOTSTRAP_EXAMPLES = 2


def weighted_sum(
    weights: ArrayLike,
    values: ArrayLike | None = None,
    *,
    groups: ArrayLike | None = None,
    n_groups: int | None = None,
) -> NDArray[np.float64]:
    """Weighted sums of per-example values, one per row of a weight matrix.

    The building block of :data:`Statistic` functions: ``weighted_sum(w, v) / weighted_sum(w)``
    is a weighted mean.

    Parameters
    ----------
    weights : array-like of shape (k, n)
        One row of example weights per resample.
    values : array-like of shape (n,), optional
        Per-example values; None sums the weights themselves (the total weight).
    groups : array-like of int of shape (n,), optional
        Each example's group, in ``[0, n_groups)``; gives one sum per group.
    n_groups : int, optional
        Number of groups; default ``groups.max() + 1``.

    Returns
    -------
    sums : ndarray of shape (k,), or (k, n_groups) with ``groups``
        ``sums[r] = sum_i weights[r, i] * values[i]``; with groups, the sum over the
        examples of each group (one :func:`numpy.bincount`, no dense one-hot matrix).

    Examples
    --------
    >>> w = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0]])
    >>> weighted_sum(w, [1.0, 2.0, 3.0])
    array([6., 5.])
    >>> weighted_sum(w, [1.0, 2.0, 3.0], groups=[0, 1, 0])
    array([[4., 2.],
           [5., 0.]])
    """
    w = np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be an array of shape (k, n), got shape {w.shape}")
    k, n = w.shape
    v = None
    if values is not None:
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"values must have shape ({n},) to match weights of shape {w.shape}, got {v.shape}")
    if groups is None:
        if n_groups is not None:
            raise ValueError("n_groups is given without groups")
        # einsum rather than BLAS: a threaded gemv on short chunks can be slower by 10x when
        # the cores are shared (pytest-xdist, CI), and this loop is memory-bound anyway
        w = np.asarray(w, dtype=np.float64)
        return np.einsum("kn->k", w) if v is None else np.einsum("kn,n->k", w, v)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},) to match weights of shape {w.shape}, got {g.shape}")
    if g.dtype.kind not in "iu":
        raise ValueError(f"groups must be integers, got dtype {g.dtype}")
    if n_groups is None:
        n_groups = int(g.max()) + 1 if n else 0
    if n_groups < 0 or (n and (g.min() < 0 or g.max() >= n_groups)):
        raise ValueError(f"groups must lie in [0, n_groups) = [0, {n_groups}), got values in [{g.min()}, {g.max()}]")
    contributions = w if v is None else w * v
    index = np.arange(k, dtype=np.intp)[:, None] * n_groups + g.astype(np.intp)
    sums = np.bincount(index.ravel(), weights=contributions.ravel(), minlength=k * n_groups)
    return sums.reshape(k, n_groups)


def bootstrap_intervals(
    statistics: Mapping[str, Statistic],
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator,
    method: Mapping[str, str] | str = "bca",
    support: Mapping[str, tuple[float, float]] | None = None,
    max_chunk_bytes: int = 64 * 2**20,
) -> dict[str, BootstrapInterval]:
    """Bootstrap confidence intervals for several statistics of the same examples, paired.

    One stream of resampling weights is drawn and every statistic is evaluated on the
    same resamples, so intervals of differences and ratios between two models scored on
    the same examples are paired, and the cost is one pass whatever the number of
    statistics.

    A statistic maps a weight matrix ``W`` of shape ``(k, n)`` (one row per resample,
    one column per example) to ``k`` values. It must be a weighted estimate that does
    not depend on the scale of the weights, such as ``sum(w * v) / sum(w)`` (see
    :func:`weighted_sum`): ``W = ones((1, n))`` gives the point estimate, bootstrap rows
    are multinomial counts (each row sums to ``n``) and the jackknife rows used by BCa
    are 1 with a block of zeros. ``W`` is only valid during the call.

    Parameters
    ----------
    statistics : mapping of str to callable
        Named statistics, ``W -> array of shape (k,)``.
    n : int
        Number of examples (columns of ``W``).
    n_resamples : int, default=1000
        Number of bootstrap resamples.
    confidence : float, default=0.95
        Two-sided confidence level.
    rng : numpy.random.Generator
        Source of the resamples; the same seed gives the same intervals.
    method : str or mapping of str to str, default="bca"
        ``"bca"`` (bias-corrected and accelerated, Efron 1987), ``"percentile"`` or
        ``"basic"`` (reflected: ``[2 θ - q_hi, 2 θ - q_lo]``, which removes the bias
        the resampling reproduces, e.g. for plug-in calibration errors). A mapping
        gives the method per statistic (default ``"bca"`` for the others).
    support : mapping of str to (float, float), optional
        Range of possible values per statistic; interval bounds are clipped to it.
    max_chunk_bytes : int, default=64 MiB
        Weights are generated and evaluated in chunks of ``k`` resamples with
        ``k * n * 8 <= max_chunk_bytes`` (at least one resample), and at most 4 MiB, so
        that a chunk stays in cache while every statistic reads it. The result does not
        depend on the chunk size.

    Returns
    -------
    intervals : dict of str to BootstrapInterval
        One entry per statistic, in the order given. Resamples on which a statistic is
        NaN or infinite are dropped; when fewer than half remain, the estimate itself
        is not finite, or ``n`` is 1 (too few for an interval), ``low`` and ``high`` are
        None and ``method`` is ``"none"``. BCa falls back to ``"percentile"`` when it
        degenerates (the estimate is outside the resampled values, the jackknife values are
        all equal or not finite).

    Notes
    -----
    Each resample draws ``n`` indices uniformly with replacement and counts them. The
    BCa acceleration comes from a grouped (delete-a-block) jackknife over
    ``min(n, 100)`` blocks of a random partition of the examples, drawn after the
    resamples; with ``n <= 100`` it is the ordinary delete-one jackknife.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> teacher = rng.random(500) < 0.9  # per-example correctness of two models
    >>> student = teacher & (rng.random(500) < 0.95)
    >>> def accuracy(correct):
    ...     return lambda w: weighted_sum(w, correct) / weighted_sum(w)
    >>> gap = lambda w: accuracy(teacher)(w) - accuracy(student)(w)
    >>> res = bootstrap_intervals({"student": accuracy(student), "gap": gap}, 500, rng=rng)
    >>> res["gap"].method, res["gap"].low <= res["gap"].estimate <= res["gap"].high
    ('bca', True)
    """
    methods, supports = _check_bootstrap_args(statistics, n, n_resamples, confidence, rng, method, support)
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be >= 1, got {max_chunk_bytes}")
    estimates = {name: float(_evaluate(name, stat, np.ones((1, n)))[0]) for name, stat in statistics.items()}

    rows = max(1, min(n_resamples, min(max_chunk_bytes, _CACHE_CHUNK_BYTES) // (8 * n)))
    resampled = {name: np.empty(n_resamples) for name in statistics}
    for start in range(0, n_resamples, rows):
        w = _resample_weights(rng, n, min(rows, n_resamples - start))
        for name, stat in statistics.items():
            resampled[name][start : start + w.shape[0]] = _evaluate(name, stat, w)
        del w

    return _intervals(
        estimates,
        resampled,
        lambda names: _jackknife({name: statistics[name] for name in names}, n, rng, rows),
        methods,
        supports,
        confidence,
        n_resamples,
        n,
    )


def _intervals(
    estimates: Mapping[str, float],
    resampled: Mapping[str, NDArray[np.float64]],
    jackknife: Callable[[list[str]], Mapping[str, NDArray[np.float64]]],
    methods: Mapping[str, str],
    supports: Mapping[str, tuple[float, float]],
    confidence: float,
    n_resamples: int,
    n: int,
) -> dict[str, BootstrapInterval]:
    """Intervals from each statistic's estimate and resampled values (shared by both bootstrap engines).

    ``jackknife(names)`` gives the jackknife values of the statistics whose BCa intervals need them.
    Fewer than :data:`MIN_BOOTSTRAP_EXAMPLES` examples give no interval: every resample of one
    example is that example, and the zero-width interval it yields would be no evidence at all.
    """
    finite = {name: values[np.isfinite(values)] for name, values in resampled.items()}
    enough = n >= MIN_BOOTSTRAP_EXAMPLES
    valid = {
        name: bool(enough and np.isfinite(estimates[name]) and 2 * finite[name].size >= n_resamples)
        for name in estimates
    }
    jackknifed = [name for name in estimates if methods[name] == "bca" and valid[name]]
    jack = jackknife(jackknifed) if jackknifed else {}

    alpha = 1 - confidence
    intervals = {}
    for name in estimates:
        estimate, values = estimates[name], finite[name]
        if not valid[name]:
            intervals[name] = BootstrapInterval(estimate, None, None, "none", int(values.size))
            continue
        used = methods[name]
        levels = (alpha / 2, 1 - alpha / 2)
        if used == "bca":
            adjusted = _bca_levels(estimate, values, jack[name], alpha)
            if adjusted is None:
                used = "percentile"
            else:
                levels = adjusted
        q_low, q_high = (float(q) for q in np.quantile(values, levels))
        low, high = (2 * estimate - q_high, 2 * estimate - q_low) if used == "basic" else (q_low, q_high)
        if name in supports:
            lo, hi = supports[name]
            low, high = min(max(low, lo), hi), min(max(high, lo), hi)
        intervals[name] = BootstrapInterval(estimate, low, high, used, int(values.size))
    return intervals


def _check_bootstrap_args(
    statistics: Mapping[str, Statistic],
    n: int,
    n_resamples: int,
    confidence: float,
    rng: np.random.Generator,
    method: Mapping[str, str] | str,
    support: Mapping[str, tuple[float, float]] | None,
) -> tuple[dict[str, str], dict[str, tuple[float, float]]]:
    """Validate :func:`bootstrap_intervals`' arguments; return the method and support per statistic."""
    for label, value in (("n", n), ("n_resamples", n_resamples)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for name, stat in statistics.items():
        if not callable(stat):
            raise TypeError(f"statistic {name!r} is not callable: {stat!r}")
    if isinstance(method, str):
        methods = dict.fromkeys(statistics, method)
    else:
        _check_names("method", method, statistics)
        methods = {name: method.get(name, "bca") for name in statistics}
    for name, chosen in methods.items():
        if chosen not in _METHODS:
            raise ValueError(f"unknown bootstrap method {chosen!r} for {name!r}; expected one of {_METHODS}")
    supports = {}
    if support is not None:
        _check_names("support", support, statistics)
        for name, bounds in support.items():
            lo, hi = (float(b) for b in bounds)
            if not lo <= hi:
                raise ValueError(f"support of {name!r} must be (low, high) with low <= high, got {bounds!r}")
            supports[name] = (lo, hi)
    return methods, supports


def _check_names(label: str, given: Mapping[str, object], statistics: Mapping[str, Statistic]) -> None:
    unknown = sorted(set(given) - set(statistics))
    if unknown:
        raise ValueError(f"{label} names statistics that were not given: {unknown}; statistics: {list(statistics)}")


def _evaluate(name: str, statistic: Statistic, weights: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic(weights), dtype=np.float64)
    if values.shape != (weights.shape[0],):
        raise ValueError(
            f"statistic {name!r} must return an array of shape ({weights.shape[0]},) for weights of shape "
            f"{weights.shape}, got shape {values.shape}"
        )
    return values


def _resample_weights(rng: np.random.Generator, n: int, k: int) -> NDArray[np.float64]:
    """``k`` bootstrap rows of multinomial counts, shape (k, n).

    Indices are drawn one resample at a time, so the stream of draws (and the result of
    :func:`bootstrap_intervals`) does not depend on how resamples are chunked.
    """
    weights = np.empty((k, n))
    for start in range(0, k, _DRAW_ROWS):
        stop = min(k, start + _DRAW_ROWS)
        index = np.empty((stop - start, n), dtype=np.intp)
        for row in range(stop - start):
            index[row] = rng.integers(0, n, size=n)
        index += np.arange(stop - start, dtype=np.intp)[:, None] * n
        weights[start:stop] = np.bincount(index.ravel(), minlength=(stop - start) * n).reshape(stop - start, n)
    return weights


def _jackknife(
    statistics: Mapping[str, Statistic], n: int, rng: np.random.Generator, rows: int
) -> dict[str, NDArray[np.float64]]:
    """Delete-a-block jackknife values over ``min(n, 100)`` blocks of a random partition."""
    blocks = min(n, _JACKKNIFE_BLOCKS)
    block = np.empty(n, dtype=np.intp)
    block[rng.permutation(n)] = np.arange(n) % blocks
    values = {name: np.empty(blocks) for name in statistics}
    for start in range(0, blocks, rows):
        left_out = np.arange(start, min(blocks, start + rows))
        weights = (block[None, :] != left_out[:, None]).astype(np.float64)
        for name, stat in statistics.items():
            values[name][start : start + left_out.size] = _evaluate(name, stat, weights)
    return values


def _bca_levels(
    estimate: float, resampled: NDArray[np.float64], jackknife: NDArray[np.float64], alpha: float
) -> tuple[float, float] | None:
    """BCa-adjusted quantile levels (Efron 1987), or None where BCa degenerates."""
    below = np.count_nonzero(resampled < estimate) + 0.5 * np.count_nonzero(resampled == estimate)
    z0 = _special.ndtri(below / resampled.size)
    if not np.isfinite(z0) or not np.all(np.isfinite(jackknife)):
        return None
    spread = np.ptp(jackknife)
    if spread <= 16 * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(jackknife)))):
        return None
    deviation = jackknife.mean() - jackknife
    acceleration = np.sum(deviation**3) / (6 * np.sum(deviation**2) ** 1.5)
    z = z0 + _special.ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    denominator = 1 - acceleration * z
    if np.any(denominator <= 0):
        return None
    levels = _special.ndtr(z0 + z / denominator)
    if not np.all(np.isfinite(levels)):
        return None
    return float(levels[0]), float(levels[1])
