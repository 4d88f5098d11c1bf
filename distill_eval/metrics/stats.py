"""Confidence intervals: exact intervals for proportions, bootstrap for the rest.

Every bounded metric is reported with an interval (SPEC section 5). Single
proportions get a closed-form interval; everything else is bootstrapped over
examples, with one set of resampling weights shared by every statistic of a
check so that comparisons of two models on the same examples are paired.
"""

from __future__ import annotations

import math

from scipy import stats as _stats

__all__ = ["clopper_pearson_interval", "wilson_interval"]


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
    z = _stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def clopper_pearson_interval(successes: float, n: float, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion: conservative, never too short.

    Parameters and returns as :func:`wilson_interval`.
    """
    _check(successes, n, confidence)
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    lo = 0.0 if successes == 0 else float(_stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(_stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return lo, hi
