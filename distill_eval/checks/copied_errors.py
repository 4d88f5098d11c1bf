"""Kind ``copied_errors``: does the student inherit the teacher's mistakes?

Copying is judged against chance: a student that errs independently of the
teacher still lands on the teacher's wrong class now and then, at a rate read
from its own confusion matrix (``chance_copy_rate``). A ``control`` student
trained on labels alone shows how much copying the teacher itself causes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.checks.intervals import AFFORDABLE, Intervals
from distill_eval.data import ids_file_mask
from distill_eval.errors import CheckError
from distill_eval.metrics.stats import clopper_pearson_interval
from distill_eval.report.extras import copied_errors_extras


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    known = r.string("known_failures", None)
    control = r.string("control", None)
    bounded = set(r.table.get("min", {}) or {}) | set(r.table.get("max", {}) or {})
    if "known_copied" in bounded and known is None:
        raise r.error("a bound on 'known_copied' needs 'known_failures' (a file of ids, one a line)")
    if "control_copy_rate" in bounded and control is None:
        raise r.error("a bound on 'control_copy_rate' needs 'control' (the name of a label-only student)")
    return {"known_failures": (suite_dir / known).resolve() if known else None, "control": control}


def extra_models(params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    return [("control", params["control"])] if params["control"] else []


def _chance_copy_rate(intervals: Intervals, y: np.ndarray, t: np.ndarray, s: np.ndarray, n_classes: int):
    """The chance copy rate as a statistic of weighted sums: the student's confusion is re-estimated per resample.

    ``chance = sum_{i: t_i != y_i} w_i P_w(s = t_i | y_i) / sum_{i: t_i != y_i} w_i``, where
    ``P_w(s = j | y = c)`` is the weighted share of class ``c`` the student calls ``j``; summing
    the teacher's errors per (class, teacher answer) cell makes it a function of three sets of sums.
    """
    wrong = (t != y).astype(np.float64)
    # Sums over the (class, answer) cells that occur, not all n_classes**2 of them: with 1000
    # classes the full grid would hold 10**6 sums per resample and family (16 GB at 1000 resamples).
    confusion_cells, confusion_of = np.unique(y * n_classes + s, return_inverse=True)  # (class, student)
    error_cells, error_of = np.unique(y * n_classes + t, return_inverse=True)  # (class, teacher)
    confusion = intervals.sums.grouped(confusion_of, len(confusion_cells))
    per_class = intervals.sums.grouped(y, n_classes)
    errors = intervals.sums.grouped(error_of, len(error_cells), wrong)  # the teacher's errors per cell
    # where the student's confusion holds each teacher-error cell (a cell it never visits: share 0)
    at = np.minimum(np.searchsorted(confusion_cells, error_cells), len(confusion_cells) - 1)
    visited = confusion_cells[at] == error_cells
    row = error_cells // n_classes

    def statistic(sums) -> np.ndarray:
        e = sums[errors]
        with np.errstate(invalid="ignore", divide="ignore"):
            # a class a resample leaves out has no confusion row: its cells count 0, as e does there
            p_same = np.where(visited, sums[confusion][:, at], 0.0) / sums[per_class][:, row]
            return (e * np.nan_to_num(p_same)).sum(axis=1) / e.sum(axis=1)

    return statistic


def _error_consistency(intervals: Intervals, t_hit: np.ndarray, s_hit: np.ndarray):
    """Geirhos et al.'s error consistency (kappa of the two error indicators) as a statistic of weighted sums."""
    total = intervals.total
    both = [intervals.sums.column(v.astype(np.float64)) for v in (t_hit, s_hit, t_hit == s_hit)]

    def statistic(sums) -> np.ndarray:
        a_t, a_s, observed = (sums[h] / sums[total] for h in both)
        expected = a_t * a_s + (1 - a_t) * (1 - a_s)
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)

    return statistic


#: what kind ``copied_errors`` computes on token data
TOKEN_METRICS = ("teacher_errors", "copy_rate", "chance_copy_rate", "copy_lift", "error_consistency", "copied_share")


def _token_chance(y: np.ndarray, t: np.ndarray, s: np.ndarray) -> float:
    """The chance copy rate on tokens: ``mean over the teacher's errors of P(student says t_i | label y_i)``.

    ``P`` is the student's empirical confusion (label -> student argmax) over every scored token,
    kept as the cells that occur (a vocabulary's full grid would not fit).
    """
    wrong = t != y
    if not wrong.any():
        return float("nan")
    width = int(max(y.max(), t.max(), s.max())) + 1
    cells, counts = np.unique(y.astype(np.int64) * width + s, return_counts=True)
    per_label = np.bincount(y, minlength=width)
    wanted = y[wrong].astype(np.int64) * width + t[wrong]
    at = np.minimum(np.searchsorted(cells, wanted), len(cells) - 1)
    same = np.where(cells[at] == wanted, counts[at], 0)
    return float((same / per_label[y[wrong]]).mean())


def _token_compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Copied errors on token data: the student repeating the teacher's wrong next token, against chance."""
    from distill_eval.checks.tokens import TokenIntervals

    unsupported = [key for key in ("known_failures", "control") if params[key] is not None]
    if unsupported:
        raise CheckError(
            f"check '{ctx.check.id}': '{unsupported[0]}' applies only to classification data; dataset "
            f"'{ctx.check.dataset}' holds token sequences"
        )
    st = ctx.token_stats(divergences=False)  # per-model columns only: cached summaries serve
    y, t, s = st.label, st.teacher_argmax, st.student_argmax
    t_wrong, s_wrong = t != y, s != y
    copied = t_wrong & (s == t)
    iv = TokenIntervals(ctx, st)
    sums = iv.sums
    n_copied, n_t_wrong, n_s_wrong = (sums.token_sum(v.astype(np.float64)) for v in (copied, t_wrong, s_wrong))
    iv.add("copy_rate", lambda w: w[n_copied] / w[n_t_wrong])
    iv.add("copied_share", lambda w: w[n_copied] / w[n_s_wrong])
    t_hit, s_hit, same = (sums.token_sum(v.astype(np.float64)) for v in (~t_wrong, ~s_wrong, t_wrong == s_wrong))
    tokens = sums.tokens

    def consistency(w) -> np.ndarray:
        a_t, a_s, observed = w[t_hit] / w[tokens], w[s_hit] / w[tokens], w[same] / w[tokens]
        expected = a_t * a_s + (1 - a_t) * (1 - a_s)
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)

    iv.add("error_consistency", consistency)
    no_errors = "the teacher predicts every next token correctly"
    metrics = iv.measure(
        {
            "copy_rate": no_errors,
            "copied_share": "the student predicts every next token correctly",
            "error_consistency": "expected error agreement is 1 (a model is always right or always wrong)",
        }
    )
    chance = _token_chance(y, t, s)
    rate = metrics["copy_rate"]
    metrics["teacher_errors"] = Metric.exact(float(t_wrong.sum()))
    # The chance rate is a plug-in estimate from the student's confusion; the lift's interval holds it fixed.
    metrics["chance_copy_rate"] = Metric.of(chance, undefined=no_errors)
    if rate.value is None or not chance > 0:
        metrics["copy_lift"] = Metric(None, None, no_errors if rate.value is None else "chance copy rate is 0")
    else:
        ci = (rate.ci[0] / chance, rate.ci[1] / chance) if rate.ci else None
        metrics["copy_lift"] = Metric.of(rate.value / chance, ci)
    return Measurement(
        {name: metrics[name] for name in TOKEN_METRICS},
        extras={"tokens": st.n, "sequences": len(sums.units)},
        n=len(sums.units),
    )


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if ctx.is_tokens:
        return _token_compute(ctx, params)
    y = ctx.labels  # before the models: no labels, no work
    teacher, student = ctx.pair()
    t, s = teacher.preds, student.preds
    n, k = len(y), teacher.n_classes
    t_wrong, s_wrong = t != y, s != y
    copied = t_wrong & (s == t)
    n_errors = int(t_wrong.sum())
    no_errors = "the teacher makes no errors on this dataset"

    intervals = Intervals(ctx, n)
    # The chance rate's sums run over (class, student answer, teacher answer) cells: the
    # bootstrap pays a small product per cell and block, so a great many cells cost seconds.
    cells = np.unique((y * k + s) * k + t).size
    if any(
        intervals.affordable(m, cells * (2 * ctx.suite.bootstrap + 2000)) for m in ("chance_copy_rate", "copy_lift")
    ):
        chance = _chance_copy_rate(intervals, y, t, s, k)
        copy_rate = intervals.ratio(copied, t_wrong)
        # The chance rate reads the student's confusion over every example, the teacher's errors
        # included, so resampling those examples biases it upward; BCa then collapses to one end.
        intervals.add("chance_copy_rate", chance, method="percentile")
        intervals.add("copy_lift", lambda sums: copy_rate(sums) / chance(sums), method="percentile")
    intervals.add("error_consistency", _error_consistency(intervals, ~t_wrong, ~s_wrong))
    cis = intervals.compute() if n_errors else {}

    n_permutations = ctx.suite.bootstrap
    # a shuffle of the student's answers within each class per permutation (a sort of n keys)
    p_undefined = no_errors
    if n_errors == 0 or intervals.affordable("copy_p_value", n * n_permutations * max(1.0, np.log2(n))):
        p_value = M.copy_p_value(y, t, s, n_permutations=n_permutations, rng=ctx.rng_for("copy_p_value"))
    else:
        p_value = float("nan")
        p_undefined = (
            f"not computed: {n_permutations} permutations of {n} examples cost more than the "
            f"{AFFORDABLE:.0e} operations spent on a metric no bound uses; bound copy_p_value to compute it"
        )
    p_ci = None
    if not np.isnan(p_value):
        # The permutation p-value is a Monte Carlo estimate: its interval is that of a binomial proportion.
        at_least = round(p_value * (n_permutations + 1)) - 1
        p_ci = clopper_pearson_interval(at_least, n_permutations, confidence=ctx.suite.confidence)

    values = {
        # a count over the given examples: a census, not an estimate
        "teacher_errors": Metric.of(float(n_errors), (float(n_errors), float(n_errors))),
        "copy_rate": Metric.of(M.copy_rate(y, t, s), intervals.proportion(copied.sum(), n_errors), undefined=no_errors),
        "chance_copy_rate": Metric.of(
            M.chance_copy_rate(y, t, s, n_classes=k), cis.get("chance_copy_rate"), undefined=no_errors
        ),
        "copy_lift": Metric.of(
            M.copy_lift(y, t, s, n_classes=k),
            cis.get("copy_lift"),
            undefined=no_errors if n_errors == 0 else "chance copy rate is 0",
        ),
        "error_consistency": Metric.of(
            M.error_consistency(y, t, s),
            cis.get("error_consistency"),
            undefined="expected error agreement is 1 (a model is always right or always wrong)",
        ),
        "copy_p_value": Metric.of(p_value, p_ci, undefined=p_undefined),
        "copied_share": Metric.of(
            M.copied_share(y, t, s),
            intervals.proportion(copied.sum(), s_wrong.sum()),
            undefined="the student makes no errors",
        ),
    }
    extras: dict[str, Any] = copied_errors_extras(ctx.dataset, teacher, student, y)  # the report's charts
    if params["known_failures"] is not None:
        mask = ids_file_mask(params["known_failures"], ctx.dataset, what="known_failures")
        values["known_copied"] = Metric.of(
            M.known_copied(y, t, s, mask),
            intervals.proportion((copied & mask).sum(), mask.sum()),
            undefined="the known-failures file is empty",
        )
        extras["known_failures"] = int(mask.sum())
    else:
        values["known_copied"] = Metric(None, None, "no 'known_failures' file was given")
    if params["control"]:
        control, _ = ctx.pair(params["control"])
        control_copied = t_wrong & (control.preds == t)
        values["control_copy_rate"] = Metric.of(
            M.copy_rate(y, t, control.preds), intervals.proportion(control_copied.sum(), n_errors), undefined=no_errors
        )
    else:
        values["control_copy_rate"] = Metric(None, None, "no 'control' model was given")
    return Measurement(values, extras=extras, n=n)


KIND = CheckKind(
    name="copied_errors",
    metrics=(
        "teacher_errors",
        "copy_rate",
        "chance_copy_rate",
        "copy_lift",
        "error_consistency",
        "copy_p_value",
        "copied_share",
        "known_copied",
        "control_copy_rate",
    ),
    read_params=read_params,
    compute=compute,
    extra_models=extra_models,
    token_metrics=TOKEN_METRICS,
)
