"""Calibration metrics: binned calibration error, Brier score, NLL, temperature.

Binning rule (the documented one, as in Guo et al. 2017): with edges
``e_0 < e_1 < ... < e_B``, bin ``i`` holds the confidences in ``(e_i, e_{i+1}]``
and the first bin also holds ``e_0``. So with 5 uniform bins a confidence of
exactly 0.6 falls in ``(0.4, 0.6]``, 1.0 falls in the last bin and 0.0 in the
first. Uniform edges are ``i / bins`` computed exactly (not accumulated), so a
confidence written as a decimal literal lands on the edge it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from distill_eval.metrics.probabilities import (
    _check_int_param,
    _check_same_length,
    _checked,
    _log_softmax_rows,
    check_labels,
    check_probs,
    map_rows,
    row_blocks,
)

__all__ = [
    "ReliabilityBins",
    "bin_index",
    "brier_per_example",
    "brier_score",
    "calibration_bins",
    "classwise_ece",
    "consistency_resampling",
    "expected_calibration_error",
    "fit_temperature",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "nll_per_example",
    "reliability_bins",
]

Binning = Literal["uniform", "quantile"]
_BINNINGS = ("uniform", "quantile")

#: Temperatures searched by :func:`fit_temperature` (the search runs over log T).
TEMPERATURE_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram.

    Attributes
    ----------
    edges : ndarray of shape (n_bins + 1,)
        Increasing bin edges; bin ``i`` is ``(edges[i], edges[i + 1]]`` and the
        first bin also holds ``edges[0]``.
    count : ndarray of shape (n_bins,)
        Number of examples in each bin.
    confidence : ndarray of shape (n_bins,)
        Mean confidence in each bin (NaN for an empty bin).
    accuracy : ndarray of shape (n_bins,)
        Fraction of correct predictions (or positives) in each bin (NaN for an
        empty bin).
    """

    edges: NDArray[np.float64]
    count: NDArray[np.int64]
    confidence: NDArray[np.float64]
    accuracy: NDArray[np.float64]

    @property
    def gap(self) -> NDArray[np.float64]:
        """``|accuracy - confidence|`` per bin (NaN for an empty bin)."""
        return np.abs(self.accuracy - self.confidence)

    @property
    def ece(self) -> float:
        """Count-weighted mean gap over the non-empty bins."""
        filled = self.count > 0
        weights = self.count[filled] / self.count.sum()
        return float(np.sum(weights * self.gap[filled]))

    @property
    def mce(self) -> float:
        """Largest gap over the non-empty bins."""
        return float(np.max(self.gap[self.count > 0]))


def _bin_edges(confidence: NDArray[np.float64], bins: int, binning: str) -> NDArray[np.float64]:
    if binning == "uniform":
        return np.arange(bins + 1) / bins
    # Quantile edges give (nearly) equal counts; the outer edges become 0 and 1
    # so every confidence in [0, 1] has a bin, and ties in the data (duplicate
    # edges) are merged, which can leave fewer than `bins` bins.
    edges = np.quantile(confidence, np.arange(bins + 1) / bins)
    edges[0], edges[-1] = 0.0, 1.0
    return np.unique(np.clip(edges, 0.0, 1.0))


def bin_index(
    confidence: ArrayLike, *, bins: int = 15, binning: Binning = "uniform"
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """The bin of each confidence, under the binning rule of :func:`calibration_bins`.

    Parameters
    ----------
    confidence : array-like of shape (n_samples,)
        Values in [0, 1].
    bins : int, default=15
        Number of bins (>= 1).
    binning : {"uniform", "quantile"}, default="uniform"
        See :func:`calibration_bins`.

    Returns
    -------
    index : ndarray of shape (n_samples,)
        Bin of each value, in ``[0, len(edges) - 1)``.
    edges : ndarray of shape (n_bins + 1,)
        The bin edges.
    """
    bins, binning = _check_binning(bins, binning)
    confidence = np.asarray(confidence, dtype=np.float64)
    edges = _bin_edges(confidence, bins, binning)
    return _assign(confidence, edges), edges


def _assign(confidence: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.intp]:
    # searchsorted(side="left") gives the first edge >= c, so c == edges[i]
    # lands in bin i - 1, i.e. (lo, hi]; 0 maps to -1 and is clipped into bin 0.
    bins = edges.size - 1
    if confidence.size < 4096 or not np.array_equal(edges, np.arange(bins + 1) / bins):
        return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    # Equal-width bins (the common case, on millions of values): the bin is ceil(c * bins) - 1,
    # moved by one where rounding put c on the wrong side of an edge; same result, 3x faster.
    index = np.clip(np.ceil(confidence * bins).astype(np.intp) - 1, 0, bins - 1)
    index -= (confidence <= edges[index]) & (index > 0)
    index += (confidence > edges[index + 1]) & (index < bins - 1)
    return index


def _reliability(
    confidence: NDArray[np.float64],
    hit: NDArray[np.float64],
    edges: NDArray[np.float64],
) -> ReliabilityBins:
    n_bins = edges.size - 1
    index = _assign(confidence, edges)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(index, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf_mean = np.where(count > 0, conf_sum / count, np.nan)
        hit_mean = np.where(count > 0, hit_sum / count, np.nan)
    arrays = (edges.astype(np.float64), count.astype(np.int64), conf_mean, hit_mean)
    for array in arrays:
        array.setflags(write=False)
    return ReliabilityBins(*arrays)


def _check_binning(bins: object, binning: object) -> tuple[int, str]:
    bins = _check_int_param("bins", bins, low=1)
    if binning not in _BINNINGS:
        raise ValueError(f"The 'binning' parameter must be 'uniform' or 'quantile'. Got {binning!r} instead.")
    return bins, binning


def _probs_and_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    p = check_probs(probs)
    y = check_labels(labels, p.shape[1])
    _check_same_length("labels", y, "probs", p)
    return p, y


def calibration_bins(
    probs: ArrayLike, labels: ArrayLike, *, bins: int = 15, binning: Binning = "uniform"
) -> ReliabilityBins:
    """Top-label reliability bins: confidence = max probability, prediction = argmax.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.
    labels : array-like of shape (n_samples,)
        True class indices.
    bins : int, default=15
        Number of bins (>= 1).
    binning : {"uniform", "quantile"}, default="uniform"
        ``"uniform"``: equal-width bins over [0, 1]. ``"quantile"``: edges at
        the quantiles of the confidences (numpy's linear interpolation), first
        edge 0 and last edge 1, duplicate edges merged, so bins hold nearly
        equal counts and there may be fewer than ``bins`` of them.

    Returns
    -------
    ReliabilityBins
        Edges, count, mean confidence and accuracy per bin.
    """
    bins, binning = _check_binning(bins, binning)
    p, y = _probs_and_labels(probs, labels)
    confidence = p.max(axis=1).astype(np.float64)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    return _reliability(confidence, hit, _bin_edges(confidence, bins, binning))


def reliability_bins(
    confidence: ArrayLike, correct: ArrayLike, *, bins: int = 15, binning: Binning = "uniform"
) -> ReliabilityBins:
    """:func:`calibration_bins` from each example's confidence and correctness.

    For callers that already hold them (a model's outputs), so the probability matrix is
    neither validated nor reduced again.

    Parameters
    ----------
    confidence : array-like of shape (n_samples,)
        Top-label confidences in [0, 1].
    correct : array-like of shape (n_samples,)
        Whether each top-label prediction is right (bool or 0/1).
    bins, binning
        As in :func:`calibration_bins`.

    Returns
    -------
    ReliabilityBins
    """
    bins, binning = _check_binning(bins, binning)
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.size == 0 or np.any((conf < 0) | (conf > 1)) or hit.shape != conf.shape:
        raise ValueError(
            f"confidence must be a non-empty 1-D array in [0, 1] and correct of the same shape, got shapes "
            f"{conf.shape} and {hit.shape}"
        )
    return _reliability(conf, hit, _bin_edges(conf, bins, binning))


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, bins: int = 15, binning: Binning = "uniform"
) -> float:
    """Top-label expected calibration error (L1, Guo et al. 2017).

    ``ECE = sum_b (n_b / n) * |acc_b - conf_b|`` over the bins of
    :func:`calibration_bins`.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.
    labels : array-like of shape (n_samples,)
        True class indices.
    bins : int, default=15
        Number of bins (>= 1).
    binning : {"uniform", "quantile"}, default="uniform"
        See :func:`calibration_bins`.

    Returns
    -------
    float
        ECE in [0, 1].

    Examples
    --------
    >>> expected_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1], bins=5)
    0.35
    """
    return calibration_bins(probs, labels, bins=bins, binning=binning).ece


def maximum_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, bins: int = 15, binning: Binning = "uniform"
) -> float:
    """Top-label maximum calibration error: the largest gap over non-empty bins.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.
    labels : array-like of shape (n_samples,)
        True class indices.
    bins : int, default=15
        Number of bins (>= 1).
    binning : {"uniform", "quantile"}, default="uniform"
        See :func:`calibration_bins`.

    Returns
    -------
    float
        MCE in [0, 1].
    """
    return calibration_bins(probs, labels, bins=bins, binning=binning).mce


def classwise_ece(probs: ArrayLike, labels: ArrayLike, *, bins: int = 15, binning: Binning = "uniform") -> float:
    """Classwise ECE (Kull et al. 2019): mean over classes of a one-vs-rest ECE.

    For each class ``k`` the probabilities ``P[:, k]`` are binned with the same
    rule as :func:`calibration_bins` (quantile edges computed per class) and
    compared with the indicator ``labels == k``. The mean runs over all
    ``n_classes`` columns, including classes absent from ``labels``.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.
    labels : array-like of shape (n_samples,)
        True class indices.
    bins : int, default=15
        Number of bins (>= 1).
    binning : {"uniform", "quantile"}, default="uniform"
        See :func:`calibration_bins`.

    Returns
    -------
    float
        Classwise ECE in [0, 1].
    """
    bins, binning = _check_binning(bins, binning)
    p, y = _probs_and_labels(probs, labels)
    if binning == "uniform":  # shared edges: every class's bins from one pass over the matrix
        n_classes, edges = p.shape[1], _bin_edges(np.zeros(1), bins, "uniform")
        gap = np.zeros(n_classes * bins)
        for rows in row_blocks(*p.shape):
            block = np.asarray(p[rows], dtype=np.float64)
            index = _assign(block, edges) + np.arange(n_classes) * bins  # (rows, classes) -> (class, bin)
            hit = y[rows, None] == np.arange(n_classes)
            gap += np.bincount(index.ravel(), weights=(hit - block).ravel(), minlength=n_classes * bins)
        return float(np.abs(gap).sum() / p.shape[0] / n_classes)
    errors = []
    for k in range(p.shape[1]):
        column = p[:, k]
        positive = (y == k).astype(np.float64)
        errors.append(_reliability(column, positive, _bin_edges(column, bins, binning)).ece)
    return float(np.mean(errors))


def brier_per_example(probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """Multiclass Brier score of each example: ``sum_k (p_k - 1[y = k])**2``.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.
    labels : array-like of shape (n_samples,)
        True class indices.

    Returns
    -------
    brier : ndarray of shape (n_samples,)
        Values in [0, 2].
    """
    p, y = _probs_and_labels(probs, labels)

    def brier(rows: slice, block: NDArray[np.float64]) -> NDArray[np.float64]:
        # sum_k p_k^2 - 2 p_y + 1, written out so no one-hot matrix is built.
        return np.maximum(np.square(block).sum(axis=1) - 2.0 * block[np.arange(block.shape[0]), y[rows]] + 1.0, 0.0)

    return map_rows(brier, p)


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean multiclass Brier score (range 0..2; not halved).

    For two classes this is twice scikit-learn's binary ``brier_score_loss``.

    Parameters
    ----------
    probs : array-like of shape (n_samples, n_classes)
        Class probabilities.
    labels : array-like of shape (n_samples,)
        True class indices.

    Returns
    -------
    float
    """
    return float(np.mean(brier_per_example(probs, labels)))


def nll_per_example(logits: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """Negative log-probability of the label, from log-softmax (never infinite).

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes)
        Unnormalised scores (not probabilities: computing from logits keeps the
        result finite when the label's probability underflows to 0).
    labels : array-like of shape (n_samples,)
        True class indices.

    Returns
    -------
    nll : ndarray of shape (n_samples,)
        Values in [0, inf), in nats.
    """
    z = _checked(logits, "logits")
    y = check_labels(labels, z.shape[1])
    _check_same_length("labels", y, "logits", z)
    return map_rows(lambda rows, block: -_log_softmax_rows(block)[np.arange(block.shape[0]), y[rows]], z)


def negative_log_likelihood(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits), in nats.

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes)
        Unnormalised scores.
    labels : array-like of shape (n_samples,)
        True class indices.

    Returns
    -------
    float

    Examples
    --------
    >>> negative_log_likelihood([[0.0, -1000.0]], [1])
    1000.0
    """
    return float(np.mean(nll_per_example(logits, labels)))


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)``.

    Newton's method on ``beta = 1 / T`` within ``[1 / bounds[1], 1 / bounds[0]]``,
    by default T in [0.05, 20], safeguarded by bisection. The NLL is convex in
    ``beta`` (its second derivative is the variance of the logits under the
    tempered softmax), so the search finds the minimum inside the bounds. A result at or near a bound means the
    optimum lies beyond it: e.g. for a model that is right on every example
    with a margin the NLL keeps falling as T shrinks, and near the lower bound
    it is flat to machine precision, so the result is some small T close to
    ``bounds[0]``.

    Parameters
    ----------
    logits : array-like of shape (n_samples, n_classes)
        Unnormalised scores.
    labels : array-like of shape (n_samples,)
        True class indices.
    bounds : tuple of float, default=(0.05, 20.0)
        Lowest and highest temperature searched, ``0 < low < high``.
    sample_weight : array-like of shape (n_samples,), optional
        Non-negative weight of each example in the NLL (bootstrap resamples use it).

    Returns
    -------
    float
        The fitted temperature (> 1: the model was over-confident).
    """
    z = _checked(logits, "logits")
    y = check_labels(labels, z.shape[1])
    _check_same_length("labels", y, "logits", z)
    low, high = bounds
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
        raise ValueError(f"The 'bounds' parameter must be (low, high) with 0 < low < high. Got {bounds!r} instead.")
    if sample_weight is None:
        w = np.full(z.shape[0], 1.0 / z.shape[0])
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (z.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"sample_weight must be {z.shape[0]} finite non-negative weights with a positive sum")
        w = w / w.sum()
    top = map_rows(lambda rows, block: block.max(axis=1), z)
    label_logit = map_rows(lambda rows, block: block[np.arange(block.shape[0]), y[rows]], z) - top

    def slope_and_curvature(beta: float) -> tuple[float, float]:
        # d/dbeta of the mean NLL at 1/T = beta: E_p[z] - z_y; second derivative Var_p[z] >= 0
        slope = curvature = 0.0
        for rows in row_blocks(*z.shape):
            block = np.array(z[rows], dtype=np.float64)
            block -= top[rows, None]  # <= 0, so exp never overflows
            e = np.exp(block * beta)
            total = e.sum(axis=1)
            mean = (e * block).sum(axis=1) / total
            var = np.maximum((e * block * block).sum(axis=1) / total - mean * mean, 0.0)
            slope += float(w[rows] @ (mean - label_logit[rows]))
            curvature += float(w[rows] @ var)
        return slope, curvature

    # Newton's method on beta = 1/T, where the NLL is convex, kept inside a shrinking bracket
    # (bisection when a step would leave it): a few passes over the logits, not dozens.
    lo, hi = 1.0 / high, 1.0 / low
    beta = min(max(1.0, lo), hi)
    for _ in range(100):
        slope, curvature = slope_and_curvature(beta)
        if slope > 0:
            hi = beta
        elif slope < 0:
            lo = beta
        else:
            break
        step = beta - slope / curvature if curvature > 0 else np.nan
        new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(new - beta) <= 1e-9 * beta or hi - lo <= 1e-9 * hi:
            beta = new
            break
        beta = new
    return float(1.0 / beta)


#: a bin whose outcomes vary by at least this much is drawn from the normal law (skewness <= 0.1)
_CLT_VARIANCE = 100.0


def consistency_resampling(
    confidence: ArrayLike,
    *,
    bins: int = 15,
    binning: Binning = "uniform",
    n_draws: int = 1000,
    rng: np.random.Generator,
    reduce: Literal["ece", "mce"] = "ece",
) -> NDArray[np.float64]:
    """Plug-in ECE (or MCE) of a *perfectly calibrated* model with these confidences.

    Consistency resampling (Bröcker & Smith 2007): keep the forecasts, draw
    each example's correctness from its own confidence (``hit ~ Bernoulli(conf)``),
    and recompute the binned error. The draws show how large the plug-in error
    is from noise alone, so an observed error inside their range is consistent
    with perfect calibration. A bin whose outcome count has variance
    ``sum conf (1 - conf) >= 100`` gets its sum of ``hit - conf`` from the normal law
    with that variance (a sum of independent Bernoullis; skewness at most 0.1), the
    other bins example by example, so the cost does not grow with ``n``.

    Parameters
    ----------
    confidence : array-like of shape (n_samples,)
        Top-label confidences in [0, 1].
    bins, binning
        As in :func:`calibration_bins` (edges from these confidences).
    n_draws : int, default=1000
        Number of simulated outcome vectors.
    rng : numpy.random.Generator
        Source of the draws.
    reduce : {"ece", "mce"}, default="ece"
        Which binned error to compute.

    Returns
    -------
    ndarray of shape (n_draws,)
        The error of each simulated calibrated dataset.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.ndim != 1 or conf.size == 0 or np.any((conf < 0) | (conf > 1)):
        raise ValueError(f"confidence must be a non-empty 1-D array of values in [0, 1], got shape {conf.shape}")
    n_draws = _check_int_param("n_draws", n_draws, low=1)
    index, edges = bin_index(conf, bins=bins, binning=binning)
    n, n_bins = conf.size, edges.size - 1
    count = np.bincount(index, minlength=n_bins)
    variance = np.bincount(index, weights=conf * (1 - conf), minlength=n_bins)
    # A bin's sum of outcomes minus its confidences is a sum of independent centred Bernoullis:
    # where its variance is large the normal law is exact to within skewness 1/sqrt(variance),
    # and one normal draw replaces thousands of Bernoulli draws. Small bins are drawn exactly.
    normal = variance >= _CLT_VARIANCE
    exact = ~normal[index]
    e_conf, e_index = conf[exact], index[exact]
    sd = np.sqrt(variance[normal])
    out = np.empty(n_draws)
    rows = max(1, (4 << 20) // (8 * max(1, e_conf.size)))  # ~4 MiB of Bernoulli draws at a time
    for start in range(0, n_draws, rows):
        k = min(rows, n_draws - start)
        sums = np.zeros((k, n_bins))
        if e_conf.size:
            gap = (rng.random((k, e_conf.size)) < e_conf) - e_conf
            flat = (np.arange(k)[:, None] * n_bins + e_index).ravel()
            sums += np.bincount(flat, weights=gap.ravel(), minlength=k * n_bins).reshape(k, n_bins)
        sums[:, normal] = rng.standard_normal((k, sd.size)) * sd
        sums = np.abs(sums)
        if reduce == "ece":
            out[start : start + k] = sums.sum(axis=1) / n
        else:
            out[start : start + k] = (sums[:, count > 0] / count[count > 0]).max(axis=1)
    return out
