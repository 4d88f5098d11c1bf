"""Confidence intervals for a check's metrics (``distill-eval docs statistics``).

Single proportions (accuracy, agreement, copy rates) get a Wilson interval.
Every other metric is written as a statistic of *weighted sums* over examples
(:mod:`distill_eval.metrics.sums`) and bootstrapped with one set of resampling
weights per check, in one streaming pass, so that a metric comparing two models
on the same examples (a gap, a ratio) gets a *paired* interval. Plug-in
calibration errors are biased upward, so their intervals use the basic
(reflected) bootstrap, which subtracts the bias the resampling reproduces,
clipped at 0.

A few metrics cannot be written as sums: the fitted temperature (a refit per
resample), the classwise ECE (a pass over every class's probabilities per
resample). Those are bootstrapped by :func:`~distill_eval.metrics.stats.bootstrap_intervals`
on explicit weight rows, only when their cost is small or a bound uses them
(:meth:`Intervals.add_refit`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from distill_eval.metrics.stats import Statistic, bootstrap_intervals, wilson_interval
from distill_eval.metrics.sums import SumStatistic, WeightedSums, bootstrap_sums

if TYPE_CHECKING:
    from distill_eval.checks.base import CheckContext

Interval = tuple[float, float]

__all__ = ["AFFORDABLE", "Intervals"]

#: element operations (examples x resamples x work per example) a metric that is not
#: bounded may cost; a quarter of a second or so on one core
AFFORDABLE = 5 * 10**7


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
        self.sums = WeightedSums(n)
        self._statistics: dict[str, SumStatistic] = {}
        self._refits: dict[str, Statistic] = {}
        self._methods: dict[str, str] = {}
        self._support: dict[str, tuple[float, float]] = {}

    # -- building blocks ----------------------------------------------------------

    @cached_property
    def total(self):
        """The total weight (every mean's denominator)."""
        return self.sums.column()

    def mean(self, values: np.ndarray) -> SumStatistic:
        """The weighted mean of per-example ``values``."""
        column = self.sums.column(np.asarray(values, dtype=np.float64))
        total = self.total
        return lambda s: s[column] / s[total]

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> SumStatistic:
        """``sum(w * numerator) / sum(w * denominator)``: NaN where the denominator is 0."""
        top = self.sums.column(np.asarray(numerator, dtype=np.float64))
        bottom = self.sums.column(np.asarray(denominator, dtype=np.float64))

        def statistic(s) -> np.ndarray:
            b = s[bottom]
            return np.where(b > 0, s[top] / np.where(b > 0, b, 1.0), np.nan)

        return statistic

    def binned_error(self, gap: np.ndarray, bins: np.ndarray, n_bins: int, *, reduce: str = "ece") -> SumStatistic:
        """ECE (``reduce="ece"``) or MCE (``"mce"``) from each example's bin and ``hit - confidence``.

        With fixed bins, ``ECE = sum_b |sum_{i in b} w_i (hit_i - conf_i)| / sum_i w_i``,
        which equals the count-weighted mean gap of the unweighted definition.
        """
        per_bin = self.sums.grouped(bins, n_bins, np.asarray(gap, dtype=np.float64))
        if reduce == "ece":
            total = self.total
            return lambda s: np.abs(s[per_bin]).sum(axis=1) / s[total]
        count = self.sums.grouped(bins, n_bins)

        def mce(s) -> np.ndarray:
            c = s[count]
            gaps = np.where(c > 0, np.abs(s[per_bin]) / np.where(c > 0, c, 1.0), -np.inf)
            return gaps.max(axis=1)

        return mce

    # -- what gets bootstrapped ---------------------------------------------------

    def proportion(self, successes: float, trials: float) -> Interval | None:
        """Wilson interval of ``successes / trials``; None when there are no trials."""
        if trials <= 0:
            return None
        return wilson_interval(successes, trials, confidence=self.confidence)

    def add(
        self,
        name: str,
        statistic: SumStatistic,
        *,
        method: str = "bca",
        support: tuple[float, float] | None = None,
    ) -> None:
        """Bootstrap ``statistic`` (of this check's :attr:`sums`) for metric ``name``."""
        self._statistics[name] = statistic
        self._options_of(name, method, support)

    def affordable(self, name: str, cost: float) -> bool:
        """Whether metric ``name`` gets an interval that costs ``cost`` element operations.

        Always when a bound of the check uses it; otherwise only when cheap (:data:`AFFORDABLE`).
        """
        return name in self.ctx.bounded_metrics or cost <= AFFORDABLE

    def add_refit(
        self,
        name: str,
        factory: Callable[[], Statistic],
        *,
        cost: float,
        method: str = "bca",
        support: tuple[float, float] | None = None,
    ) -> None:
        """Bootstrap a statistic of explicit weight rows (a refit per resample), if :meth:`affordable`.

        ``factory`` builds the statistic only when it will run.
        """
        if not self.affordable(name, cost):
            return
        self._refits[name] = factory()
        self._options_of(name, method, support)

    def _options_of(self, name: str, method: str, support: tuple[float, float] | None) -> None:
        self._methods[name] = method
        if support is not None:
            self._support[name] = support

    def compute(self) -> dict[str, Interval | None]:
        """Every added statistic's interval (None where the bootstrap could not give one)."""
        results = {}
        for statistics, engine, purpose in (
            (self._statistics, self._sums_engine, "bootstrap"),
            (self._refits, self._refit_engine, "bootstrap:refit"),
        ):
            if statistics:
                results |= engine(statistics, self.ctx.rng_for(purpose))
        return {
            name: (r.low, r.high) if r.low is not None and r.high is not None else None for name, r in results.items()
        }

    def _options(self, statistics):
        return {
            "n_resamples": self.ctx.suite.bootstrap,
            "confidence": self.confidence,
            "method": {name: self._methods[name] for name in statistics},
            "support": {name: b for name, b in self._support.items() if name in statistics},
        }

    def _sums_engine(self, statistics, rng):
        return bootstrap_sums(statistics, self.sums, rng=rng, **self._options(statistics))

    def _refit_engine(self, statistics, rng):
        return bootstrap_intervals(statistics, self.n, rng=rng, **self._options(statistics))
