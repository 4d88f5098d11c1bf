"""Confidence intervals for a check's metrics (SPEC section 5).

Single proportions (accuracy, agreement, copy rates) get a Wilson interval.
Every other metric is written as a *weighted statistic* of per-example values
(see :func:`distill_eval.metrics.stats.bootstrap_intervals`) and bootstrapped
over examples with one set of resampling weights per check, so that a metric
comparing two models on the same examples (a gap, a ratio) gets a *paired*
interval. Plug-in calibration errors are biased upward, so their intervals use
the basic (reflected) bootstrap, which subtracts the bias the resampling
reproduces, clipped at 0.

Intervals that need a model refit per resample (the fitted temperature) are
computed only when a bound uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from distill_eval.metrics.stats import Statistic, bootstrap_intervals, weighted_sum, wilson_interval

if TYPE_CHECKING:
    from distill_eval.checks.base import CheckContext

Interval = tuple[float, float]

__all__ = ["Intervals", "binned_calibration_error", "mean_of", "ratio_of"]


def mean_of(values: np.ndarray) -> Statistic:
    """The weighted mean of per-example ``values``."""
    values = np.asarray(values, dtype=np.float64)
    return lambda w: weighted_sum(w, values) / weighted_sum(w)


def ratio_of(numerator: np.ndarray, denominator: np.ndarray) -> Statistic:
    """``sum(w * numerator) / sum(w * denominator)``: NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)

    def statistic(w: np.ndarray) -> np.ndarray:
        top, bottom = weighted_sum(w, numerator), weighted_sum(w, denominator)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)

    return statistic


def binned_calibration_error(gap: np.ndarray, bins: np.ndarray, n_bins: int, *, reduce: str = "ece") -> Statistic:
    """ECE (``reduce="ece"``) or MCE (``"mce"``) from each example's bin and ``hit - confidence``.

    With fixed bins, ``ECE = sum_b |sum_{i in b} w_i (hit_i - conf_i)| / sum_i w_i``,
    which equals the count-weighted mean gap of the unweighted definition.
    """
    gap = np.asarray(gap, dtype=np.float64)

    def statistic(w: np.ndarray) -> np.ndarray:
        per_bin = np.abs(weighted_sum(w, gap, groups=bins, n_groups=n_bins))
        if reduce == "ece":
            return per_bin.sum(axis=1) / weighted_sum(w)
        count = weighted_sum(w, None, groups=bins, n_groups=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = np.where(count > 0, per_bin / np.where(count > 0, count, 1.0), -np.inf)
        return gaps.max(axis=1)

    return statistic


class Intervals:
    """Collects a check's statistics, then bootstraps them all in one paired pass.

    Parameters
    ----------
    ctx : CheckContext
        Gives the suite's ``confidence``, ``bootstrap`` count, and the check's
        seeded random stream.
    n : int
        Number of examples the statistics weight.
    """

    def __init__(self, ctx: CheckContext, n: int):
        self.ctx = ctx
        self.n = n
        self.confidence = ctx.suite.confidence
        self._statistics: dict[str, Statistic] = {}
        self._methods: dict[str, str] = {}
        self._support: dict[str, tuple[float, float]] = {}

    def proportion(self, successes: float, trials: float) -> Interval | None:
        """Wilson interval of ``successes / trials``; None when there are no trials."""
        if trials <= 0:
            return None
        return wilson_interval(successes, trials, confidence=self.confidence)

    def add(
        self,
        name: str,
        statistic: Statistic | Callable[[], Statistic],
        *,
        method: str = "bca",
        support: tuple[float, float] | None = None,
        costly: bool = False,
    ) -> None:
        """Bootstrap ``statistic`` for metric ``name``.

        ``costly`` statistics (a refit per resample) are bootstrapped only when a
        bound of the check uses ``name``; pass a zero-argument factory to defer
        building them too.
        """
        if costly and name not in self.ctx.bounded_metrics:
            return
        if costly:
            statistic = statistic()  # type: ignore[call-arg]
        self._statistics[name] = statistic  # type: ignore[assignment]
        self._methods[name] = method
        if support is not None:
            self._support[name] = support

    def compute(self) -> dict[str, Interval | None]:
        """Every added statistic's interval (None where the bootstrap could not give one)."""
        if not self._statistics:
            return {}
        results = bootstrap_intervals(
            self._statistics,
            self.n,
            n_resamples=self.ctx.suite.bootstrap,
            confidence=self.confidence,
            rng=self.ctx.rng_for("bootstrap"),
            method=self._methods,
            support=self._support,
        )
        return {
            name: (r.low, r.high) if r.low is not None and r.high is not None else None for name, r in results.items()
        }
