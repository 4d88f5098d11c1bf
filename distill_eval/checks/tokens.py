"""What kinds ``agreement`` and ``calibration`` compute on token-level (language-model) data.

A check whose dataset holds token sequences reads the teacher's and student's paired
per-token statistics (:class:`~distill_eval.lm.pairstats.TokenStats`, computed once per run
and cached) instead of a classification dataset's logits. Every metric is a token-weighted
mean (or a function of some), and every interval comes from the cluster bootstrap
(:func:`~distill_eval.lm.cluster.cluster_bootstrap`): whole sequences are resampled, since
the tokens of one sequence are not independent draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from distill_eval.checks.base import CheckContext, Measurement, Metric
from distill_eval.errors import CheckError
from distill_eval.lm.cluster import SequenceSums, cluster_bootstrap
from distill_eval.lm.pairstats import TokenStats
from distill_eval.lm.session import SummaryPair
from distill_eval.metrics.calibration import bin_index
from distill_eval.metrics.sums import SumStatistic

__all__ = [
    "AGREEMENT_METRICS",
    "CALIBRATION_METRICS",
    "DIVERGENCE_METRICS",
    "TokenIntervals",
    "ece_of_bins",
    "token_agreement",
    "token_calibration",
    "token_ece",
]

#: kind ``agreement`` on token data, in report order
AGREEMENT_METRICS = (
    "top1",
    "topk",
    "top_k_overlap",
    "kl",
    "reverse_kl",
    "js",
    "tvd",
    "kl_p90",
    "kl_p99",
    "nll",
    "perplexity",
    "perplexity_ratio",
    "accuracy",
    "retention",
)

#: the agreement metrics that need both full distributions at once (the exact teacher-student pass);
#: the others are exact from each model's cached per-token summary
DIVERGENCE_METRICS = ("kl", "reverse_kl", "js", "tvd", "kl_p90", "kl_p99")

#: kind ``calibration`` on token data
CALIBRATION_METRICS = ("student_ece", "teacher_ece", "ece_gap", "student_nll", "teacher_nll")

_NONNEGATIVE = (0.0, np.inf)

#: why an unbound divergence is undefined when the run served the check from per-model summaries
NO_DIVERGENCES = (
    "not computed: no bound of this check reads a divergence, and the teacher's cached per-token summary "
    "served it without running the teacher and the student together (bound it to compute it)"
)


class TokenIntervals:
    """A check's token statistics, bootstrapped together by resampling sequences (paired).

    ``units`` is per-token statistics (:class:`TokenStats` or :class:`SummaryPair`: one value per
    scored token, resampled by sequence) or the unit of each value directly (kind ``generation``:
    one value per prompt, ``arange(n)``).
    """

    def __init__(self, ctx: CheckContext, units: TokenStats | SummaryPair | np.ndarray):
        self.ctx = ctx
        self.sums = SequenceSums(units if isinstance(units, np.ndarray) else units.sequence)
        self._statistics: dict[str, SumStatistic] = {}
        self._methods: dict[str, str] = {}
        self._support: dict[str, tuple[float, float]] = {}

    def add(
        self, name: str, statistic: SumStatistic, *, method: str = "bca", support: tuple[float, float] | None = None
    ) -> SumStatistic:
        self._statistics[name] = statistic
        self._methods[name] = method
        if support is not None:
            self._support[name] = support
        return statistic

    def measure(self, notes: Mapping[str, str] | None = None) -> dict[str, Metric]:
        """Every statistic's value on the data and its interval."""
        totals = self.sums.totals()
        with np.errstate(divide="ignore", invalid="ignore"):
            values = {name: float(stat(totals)[0]) for name, stat in self._statistics.items()}
        defined = {name: stat for name, stat in self._statistics.items() if np.isfinite(values[name])}
        cis: dict[str, Any] = {}
        if defined and len(self.sums.units) > 1:
            cis = cluster_bootstrap(
                defined,
                self.sums,
                n_resamples=self.ctx.suite.bootstrap,
                confidence=self.ctx.suite.confidence,
                rng=self.ctx.rng_for("bootstrap"),
                method={name: self._methods[name] for name in defined},
                support={name: b for name, b in self._support.items() if name in defined},
            )
        out = {}
        for name, value in values.items():
            r = cis.get(name)
            ci = (r.low, r.high) if r is not None and r.low is not None and r.high is not None else None
            out[name] = Metric.of(value, ci, undefined=(notes or {}).get(name, ""))
        return out


def _stats(ctx: CheckContext, top_k: int | None = None, *, divergences: bool = False) -> TokenStats | SummaryPair:
    stats = ctx.token_stats(top_k=top_k, divergences=divergences)
    if stats.n == 0:
        raise CheckError(
            f"check '{ctx.check.id}': dataset '{ctx.check.dataset}' has no scored tokens (every label is -100 or "
            "every sequence is a single token)"
        )
    return stats


def _extras(stats: TokenStats | SummaryPair) -> dict[str, Any]:
    return {"tokens": stats.n, "sequences": int(np.unique(stats.sequence).size)}


def token_agreement(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Kind ``agreement`` on token data: how closely the student's next-token distribution follows the teacher's."""
    if params["temperature"] != 1.0:
        raise CheckError(
            f"check '{ctx.check.id}': 'temperature' applies only to classification data; token statistics "
            f"are exact at temperature 1 (dataset '{ctx.check.dataset}' holds token sequences)"
        )
    k = params["k"]
    bound = {b.metric for b in ctx.check.bounds}
    st = _stats(ctx, k, divergences=bool(bound & set(DIVERGENCE_METRICS)))
    iv = TokenIntervals(ctx, st)
    sums = iv.sums
    s_hit = (st.student_argmax == st.label).astype(np.float64)
    t_hit = (st.teacher_argmax == st.label).astype(np.float64)
    iv.add("top1", sums.token_mean((st.teacher_argmax == st.student_argmax).astype(np.float64)))
    iv.add("topk", sums.token_mean(st.student_top_k_hit(k).astype(np.float64)))
    iv.add("top_k_overlap", sums.token_mean(st.top_k_overlap))
    if st.has_divergences:
        for name in ("kl", "reverse_kl", "js", "tvd"):
            iv.add(name, sums.token_mean(getattr(st, name)))
        quantiles = sums.token_quantiles(st.kl, (0.9, 0.99))
        iv.add("kl_p90", quantiles[0.9])
        iv.add("kl_p99", quantiles[0.99])
    nll = iv.add("nll", sums.token_mean(st.student_nll))
    iv.add("perplexity", lambda s: np.exp(nll(s)))
    log_ratio = sums.token_mean(st.student_nll.astype(np.float64) - st.teacher_nll)  # paired: the same tokens
    iv.add("perplexity_ratio", lambda s: np.exp(log_ratio(s)))
    iv.add("accuracy", sums.token_mean(s_hit))
    s_total, t_total = sums.token_sum(s_hit), sums.token_sum(t_hit)
    iv.add("retention", lambda s: s[s_total] / s[t_total])
    metrics = iv.measure({"retention": "the teacher predicts no next token correctly"})
    if not st.has_divergences:
        skipped = Metric(None, None, NO_DIVERGENCES)
        metrics = {name: metrics.get(name, skipped) for name in AGREEMENT_METRICS}
    return Measurement(metrics, extras=_extras(st) | {"k": k}, n=len(sums.units))


def token_ece(sums: SequenceSums, confidence: np.ndarray, hit: np.ndarray, bins: int, binning: str) -> SumStatistic:
    """Token ECE, ``sum_b |sum_{t in b} (hit_t - conf_t)| / tokens``, as a statistic of per-sequence sums."""
    index, edges = bin_index(confidence, bins=bins, binning=binning)
    gap = hit.astype(np.float64) - confidence
    return ece_of_bins([sums.token_sum(gap, where=index == b) for b in range(len(edges) - 1)], sums.tokens)


def ece_of_bins(per_bin: list[Any], tokens: Any) -> SumStatistic:
    """ECE from handles of each bin's sum of ``hit - confidence`` and of the token count: ``sum_b |S_b| / N``."""
    return lambda s: np.abs(np.stack([s[b] for b in per_bin], axis=1)).sum(axis=1) / s[tokens]


def token_calibration(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Kind ``calibration`` on token data: the student's next-token confidence against its accuracy."""
    st = _stats(ctx)
    iv = TokenIntervals(ctx, st)
    sums = iv.sums
    bins, binning = params["bins"], params["binning"]
    s_conf, t_conf = st.student_max_prob.astype(np.float64), st.teacher_max_prob.astype(np.float64)
    student = token_ece(sums, s_conf, st.student_argmax == st.label, bins, binning)
    teacher = token_ece(sums, t_conf, st.teacher_argmax == st.label, bins, binning)
    # Absolute calibration errors are biased upward: the basic bootstrap removes what resampling reproduces.
    iv.add("student_ece", student, method="basic", support=_NONNEGATIVE)
    iv.add("teacher_ece", teacher, method="basic", support=_NONNEGATIVE)
    iv.add("ece_gap", lambda s: student(s) - teacher(s))  # paired: both on the same resampled sequences
    iv.add("student_nll", sums.token_mean(st.student_nll))
    iv.add("teacher_nll", sums.token_mean(st.teacher_nll))
    return Measurement(iv.measure(), extras=_extras(st) | {"bins": bins, "binning": binning}, n=len(sums.units))
