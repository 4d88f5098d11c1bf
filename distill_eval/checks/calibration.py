"""Kind ``calibration``: does the student state its uncertainty as well as the teacher?"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.checks.intervals import Intervals
from distill_eval.checks.tokens import CALIBRATION_METRICS, token_calibration
from distill_eval.metrics.calibration import bin_index
from distill_eval.metrics.probabilities import top_probability
from distill_eval.metrics.stats import weighted_sum
from distill_eval.outputs import ModelOutputs
from distill_eval.report.extras import calibration_extras

_NONNEGATIVE = (0.0, np.inf)


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    return {
        "bins": r.integer("bins", 15, minimum=1),
        "binning": r.string("binning", "uniform", choices=("uniform", "quantile")),
    }


def _top_label(out: ModelOutputs, y: np.ndarray, bins: int, binning: str):
    """Each example's bin, and ``hit - confidence`` (the ECE statistic's inputs)."""
    index, edges = bin_index(out.confidence, bins=bins, binning=binning)
    return index, len(edges) - 1, (out.preds == y) - out.confidence


def _classwise(out: ModelOutputs, y: np.ndarray, bins: int, binning: str):
    """Classwise ECE as a weighted statistic: one (class, bin) group per example and class."""
    n, k = out.probs.shape
    groups = np.empty((n, k), dtype=np.intp)
    offset = 0
    for c in range(k):
        index, edges = bin_index(out.probs[:, c], bins=bins, binning=binning)
        groups[:, c] = index + offset
        offset += len(edges) - 1
    gaps = (y[:, None] == np.arange(k)) - out.probs

    def statistic(w: np.ndarray) -> np.ndarray:
        sums = np.zeros((w.shape[0], offset))
        for c in range(k):  # one bincount per class: O(k * n) per resample, no dense one-hot
            sums += weighted_sum(w, gaps[:, c], groups=groups[:, c], n_groups=offset)
        return np.abs(sums).sum(axis=1) / weighted_sum(w) / k

    return statistic


def _temperature(logits: np.ndarray, y: np.ndarray, *, then_ece: tuple[int, str] | None = None):
    """Refit the temperature on each resample (costly: only when bounded)."""

    def statistic(w: np.ndarray) -> np.ndarray:
        out = np.empty(w.shape[0])
        for r, row in enumerate(w):
            keep = row > 0
            t = M.fit_temperature(logits[keep], y[keep], sample_weight=row[keep])
            if then_ece is None:
                out[r] = t
                continue
            probs = M.softmax(logits, temperature=t)
            index, edges = bin_index(probs.max(axis=1), bins=then_ece[0], binning=then_ece[1])
            gap = (probs.argmax(axis=1) == y) - probs.max(axis=1)
            out[r] = np.abs(np.bincount(index, weights=row * gap, minlength=len(edges) - 1)).sum() / row.sum()
        return out

    return statistic


def _ece_at(logits: np.ndarray, y: np.ndarray, temperature: float, bins: int, binning: str) -> float:
    """Top-label ECE of ``softmax(logits / temperature)``, without a probability matrix."""
    confidence = top_probability(logits, temperature=temperature)
    hit = np.argmax(logits, axis=1) == y
    return M.reliability_bins(confidence, hit, bins=bins, binning=binning).ece


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if ctx.is_tokens:
        return token_calibration(ctx, params)
    y = ctx.labels  # before the models: no labels, no work
    teacher, student = ctx.pair()
    bins, binning = params["bins"], params["binning"]
    intervals = Intervals(ctx, len(y))
    s_bins, s_n, s_gap = _top_label(student, y, bins, binning)
    t_bins, t_n, t_gap = _top_label(teacher, y, bins, binning)
    student_ece = intervals.binned_error(s_gap, s_bins, s_n)
    teacher_ece = intervals.binned_error(t_gap, t_bins, t_n)
    student_mce = intervals.binned_error(s_gap, s_bins, s_n, reduce="mce")
    s_brier, t_brier = M.brier_per_example(student.probs, y), M.brier_per_example(teacher.probs, y)
    s_nll, t_nll = M.nll_per_example(student.logits, y), M.nll_per_example(teacher.logits, y)
    totals = intervals.sums.totals()  # the binned errors on the data itself (all weights 1)
    temperature = M.fit_temperature(student.logits, y)
    values = {
        "student_ece": float(student_ece(totals)[0]),
        "teacher_ece": float(teacher_ece(totals)[0]),
        "ece_gap": float(student_ece(totals)[0] - teacher_ece(totals)[0]),
        "student_mce": float(student_mce(totals)[0]),
        "student_classwise_ece": M.classwise_ece(student.probs, y, bins=bins, binning=binning),
        "student_brier": float(s_brier.mean()),
        "teacher_brier": float(t_brier.mean()),
        "student_nll": float(s_nll.mean()),
        "teacher_nll": float(t_nll.mean()),
        "student_temperature": temperature,
        "student_ece_after_temperature": _ece_at(student.logits, y, temperature, bins, binning),
    }
    # Absolute calibration errors are biased upward: the basic bootstrap removes the bias the
    # resampling reproduces, and consistency resampling (below) decides whether the interval reaches 0.
    intervals.add("student_ece", student_ece, method="basic", support=_NONNEGATIVE)
    intervals.add("teacher_ece", teacher_ece, method="basic", support=_NONNEGATIVE)
    # The gap is paired: both models' errors on the same resampled examples, so the biases largely cancel.
    intervals.add("ece_gap", lambda s: student_ece(s) - teacher_ece(s))
    intervals.add("student_mce", student_mce, method="basic", support=(0.0, 1.0))
    intervals.add("student_brier", intervals.mean(s_brier))
    intervals.add("teacher_brier", intervals.mean(t_brier))
    intervals.add("student_nll", intervals.mean(s_nll))
    intervals.add("teacher_nll", intervals.mean(t_nll))
    n, k, resamples = len(y), student.n_classes, ctx.suite.bootstrap
    # a pass over every class's probabilities per resample
    intervals.add_refit(
        "student_classwise_ece",
        lambda: _classwise(student, y, bins, binning),
        cost=n * k * resamples,
        method="basic",
        support=_NONNEGATIVE,
    )
    # a temperature refit (tens of passes over the logits) per resample
    logits = student.logits
    intervals.add_refit("student_temperature", lambda: _temperature(logits, y), cost=50 * n * k * resamples)
    intervals.add_refit(
        "student_ece_after_temperature",
        lambda: _temperature(logits, y, then_ece=(bins, binning)),
        cost=50 * n * k * resamples,
        method="basic",
        support=_NONNEGATIVE,
    )
    cis = intervals.compute()
    level = 1 - (1 - ctx.suite.confidence) / 2
    for name, out, reduce in (
        ("student_ece", student, "ece"),
        ("teacher_ece", teacher, "ece"),
        ("student_mce", student, "mce"),
    ):
        null = M.consistency_resampling(
            out.confidence,
            bins=bins,
            binning=binning,
            n_draws=ctx.suite.bootstrap,
            rng=ctx.rng_for(f"consistency:{name}"),
            reduce=reduce,
        )
        ci = cis.get(name)
        if ci is not None and values[name] <= np.quantile(null, level):
            # Consistent with perfect calibration (Bröcker & Smith 2007): the interval reaches 0.
            cis[name] = (0.0, max(ci[1], values[name]))
    return Measurement(
        {name: Metric.of(v, cis.get(name)) for name, v in values.items()},
        extras=calibration_extras(teacher, student, y, bins=bins, binning=binning),  # the report's charts
        n=len(y),
    )


KIND = CheckKind(
    name="calibration",
    metrics=(
        "student_ece",
        "teacher_ece",
        "ece_gap",
        "student_mce",
        "student_classwise_ece",
        "student_brier",
        "teacher_brier",
        "student_nll",
        "teacher_nll",
        "student_temperature",
        "student_ece_after_temperature",
    ),
    read_params=read_params,
    compute=compute,
    token_metrics=CALIBRATION_METRICS,
)
