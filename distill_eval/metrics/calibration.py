"""Calibration metrics: binned calibration error, Brier score, NLL, temperature.

Binning rule (the contract's, as in Guo et al. 2017): with edges
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
from scipy.optimize import minimize_scalar

from distill_eval.metrics.probabilities import (
    _check_int_param,
    _check_same_length,
    check_labels,
    check_logits,
    check_probs,
    log_softmax,
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
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, edges.size - 2)


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
    confidence = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    return _reliability(confidence, hit, _bin_edges(confidence, bins, binning))


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
    rows = np.arange(p.shape[0])
    # sum_k p_k^2 - 2 p_y + 1, written out so no one-hot matrix is built.
    return np.maximum(np.square(p).sum(axis=1) - 2.0 * p[rows, y] + 1.0, 0.0)


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
    z = check_logits(logits)
    y = check_labels(labels, z.shape[1])
    _check_same_length("labels", y, "logits", z)
    return -log_softmax(z)[np.arange(z.shape[0]), y]


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

    A bounded Brent search (``scipy.optimize.minimize_scalar``) over ``log T``
    in ``[log bounds[0], log bounds[1]]``, by default T in [0.05, 20]. The NLL
    is convex in ``1 / T``, hence unimodal in ``log T``, so the search finds
    the minimum inside the bounds. A result at or near a bound means the
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
    z = check_logits(logits)
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
    rows = np.arange(z.shape[0])
    z = z - z.max(axis=1, keepdims=True)
    label_logit = z[rows, y]

    def mean_nll(log_t: float) -> float:
        scaled = z * np.exp(-log_t)
        # The row max of `scaled` is 0 (z's max is 0 and T > 0): stable as is.
        return float(w @ (np.log(np.exp(scaled).sum(axis=1)) - label_logit * np.exp(-log_t)))

    result = minimize_scalar(
        mean_nll,
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


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
    with perfect calibration.

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
    out = np.empty(n_draws)
    rows = max(1, (4 << 20) // (8 * n))  # ~4 MiB of draws at a time
    for start in range(0, n_draws, rows):
        k = min(rows, n_draws - start)
        gap = (rng.random((k, n)) < conf) - conf
        flat = (np.arange(k)[:, None] * n_bins + index).ravel()
        sums = np.abs(np.bincount(flat, weights=gap.ravel(), minlength=k * n_bins).reshape(k, n_bins))
        if reduce == "ece":
            out[start : start + k] = sums.sum(axis=1) / n
        else:
            out[start : start + k] = (sums[:, count > 0] / count[count > 0]).max(axis=1)
    return out
