"""Kind ``regression``: is the candidate student worse than the accepted one?

Two modes:

- **paired** (``baseline = "<model>"``): the accepted student is a model of the
  project and both students are scored on the same examples of this check's
  dataset, so every comparison is paired;
- **stored** (``baseline_results = "<results.json>"``, relative to the suite
  file, or neither key: the project's ``baseline``, which ``--distill-accept``
  writes): the accepted student's metrics are read from the suite of the same
  name in the stored results (its ``agreement``, ``calibration`` and ``latency``
  checks) and compared with the candidate's, computed here on this check's
  dataset. A metric the stored results lack is undefined, with a note saying
  what is missing. The stored checks should use their defaults (``temperature``
  1, 15 uniform ``bins``): results.json does not record parameters, so this is
  not checked. Values measured on another dataset (another sha256) are refused.

On token data both modes pair the two students token by token and resample sequences; the
stored mode reads the accepted student's per-sequence record that ``--distill-accept`` keeps
beside the baseline (:func:`~distill_eval.baseline.read_token_record`): per sequence its
agreeing tokens, summed KL and ECE bin gaps, and one right/wrong bit per token, so the stored
comparison equals the paired one.

Every metric is oriented so that larger is worse: ``accuracy_drop`` (baseline
accuracy − candidate's), ``agreement_drop`` (baseline top-1 agreement with the
teacher − candidate's), ``ece_increase`` (candidate top-label ECE, 15 equal-width
bins, − baseline's), ``kl_increase`` (candidate mean KL(teacher ‖ ·) − baseline's),
``negative_flip_rate`` (paired mode only) and ``p50_ms_increase_ratio``
(candidate p50 / baseline p50, from latency checks; this kind times nothing).

Intervals
---------
Paired mode:

- ``accuracy_drop = (b - c) / n``, with ``b`` the examples the baseline gets right
  and the candidate wrong and ``c`` the reverse: the exact interval that goes with
  McNemar's test. Conditional on the ``m = b + c`` discordant examples,
  ``b ~ Binomial(m, π)`` and the drop is ``m (2π - 1) / n``; the Clopper–Pearson
  interval of π is mapped through that line. With no discordant example the
  interval is ``[0, 0]`` (the conditional method can say no more; the
  ``negative_flip_rate`` interval still bounds how often the candidate could lose);
- ``negative_flip_rate = b / n``: Wilson;
- ``agreement_drop``, ``ece_increase``, ``kl_increase``: one paired bootstrap
  (:class:`~distill_eval.checks.intervals.Intervals`) in which both students'
  per-example values share the resampling weights.

Stored mode: each metric is a difference ``θ1 − θ2`` of two independently
estimated values, each with its own interval (the stored one from the accepted
run, the current one computed here the way the ``agreement`` and ``calibration``
kinds compute theirs). The interval is MOVER's (Zou & Donner 2008)::

    L = d − sqrt((θ1 − l1)² + (u2 − θ2)²),   U = d + sqrt((u1 − θ1)² + (θ2 − l2)²)

which recovers each side's asymmetry. The two students are scored on the same
examples, so their estimates are positively correlated and the interval is
conservative (too wide, never too narrow). Without an interval on either side,
the difference has none. The p50 ratio compares timings of two runs, and the
machine drifts between runs by more than either run's interval shows: its
interval is the hull of MOVER's on the log scale and of the teacher-corrected
ratio (baseline speedup / candidate speedup, the teacher being timed in both
runs), widened by a 5% drift floor (:func:`drift_tolerant_ratio`).

``p50_ms_increase_ratio`` in paired mode: when one latency check timed both
students (interleaved, as teacher and student), its ``speedup`` interval (a
bootstrap over the same timed pairs) is used, inverted where the candidate is its
student; when two checks timed them, MOVER on the log scale of the two p50
intervals. On token data (paired mode only) the p50s are those of whole generation
episodes (``student_e2e_p50_ms`` / ``teacher_e2e_p50_ms`` of latency checks on token data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.checks.intervals import Interval, Intervals
from distill_eval.errors import CheckError
from distill_eval.lm.cluster import SequenceSums
from distill_eval.metrics.calibration import bin_index
from distill_eval.metrics.stats import clopper_pearson_interval
from distill_eval.outputs import ModelOutputs

if TYPE_CHECKING:
    from distill_eval.results import CheckResult

__all__ = [
    "DRIFT_FLOOR",
    "KIND",
    "drift_tolerant_ratio",
    "mcnemar_difference_interval",
    "mover_difference",
    "mover_ratio",
]

METRICS = (
    "accuracy_drop",
    "agreement_drop",
    "ece_increase",
    "kl_increase",
    "negative_flip_rate",
    "p50_ms_increase_ratio",
)
BINS = 15  # top-label ECE with 15 equal-width bins, as the calibration kind's default
_NONNEGATIVE = (0.0, np.inf)


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    if r.has("baseline") and r.has("baseline_results"):
        raise r.error(
            "set either 'baseline' (a model: paired comparison on the same examples) or 'baseline_results' "
            "(a results.json: stored comparison), not both"
        )
    baseline = r.string("baseline", None)
    results = r.string("baseline_results", None)
    for key, value in (("baseline", baseline), ("baseline_results", results)):
        if value is not None and not value.strip():
            raise r.error(f"'{key}' must be a non-empty string")
    return {
        "baseline": baseline,
        "baseline_results": (suite_dir / Path(results).expanduser()).resolve() if results else None,
    }


def _extra_models(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [("baseline", params["baseline"])] if params.get("baseline") else []


# -- interval formulas ---------------------------------------------------------------


def mcnemar_difference_interval(b: int, c: int, n: int, *, confidence: float = 0.95) -> Interval:
    """Exact conditional interval of a paired accuracy difference ``(b - c) / n``.

    Parameters
    ----------
    b : int
        Examples the first model gets right and the second wrong.
    c : int
        Examples the second model gets right and the first wrong.
    n : int
        All examples (``n >= b + c``).
    confidence : float, default=0.95
        Two-sided confidence level.

    Returns
    -------
    (low, high) : tuple of float
        ``m (2 π_lo − 1) / n`` and ``m (2 π_hi − 1) / n`` with ``m = b + c`` and
        ``(π_lo, π_hi)`` the Clopper–Pearson interval of ``b`` successes in ``m`` trials
        (McNemar's test conditions on the discordant pairs); ``(0, 0)`` when ``m = 0``.

    Examples
    --------
    >>> lo, hi = mcnemar_difference_interval(30, 10, 1000)
    >>> round(lo, 4), round(hi, 4)
    (0.007, 0.0298)
    """
    if min(b, c) < 0 or n < b + c or n < 1:
        raise ValueError(f"need b >= 0, c >= 0, n >= 1 and b + c <= n, got b={b}, c={c}, n={n}")
    m = b + c
    if m == 0:
        return 0.0, 0.0
    lo, hi = clopper_pearson_interval(b, m, confidence=confidence)
    return m * (2 * lo - 1) / n, m * (2 * hi - 1) / n


def mover_difference(first: Metric, second: Metric) -> Interval | None:
    """MOVER interval (Zou & Donner 2008) of ``first − second`` from each one's interval.

    None when either has no interval.
    """
    if first.value is None or second.value is None or first.ci is None or second.ci is None:
        return None
    (a, (l1, u1)), (b, (l2, u2)) = (first.value, first.ci), (second.value, second.ci)
    d = a - b
    low = d - math.sqrt(max(a - l1, 0.0) ** 2 + max(u2 - b, 0.0) ** 2)
    high = d + math.sqrt(max(u1 - a, 0.0) ** 2 + max(b - l2, 0.0) ** 2)
    return low, high


#: run-to-run drift of a p50 that no interval of one run sees: the stored-mode latency ratio's
#: interval is widened by this factor either way (x / 1.05 .. x * 1.05)
DRIFT_FLOOR = 0.05


def drift_tolerant_ratio(
    candidate_p50: Metric,
    baseline_p50: Metric,
    candidate_speedup: Metric | None,
    baseline_speedup: Metric | None,
) -> Interval | None:
    """Interval of ``candidate p50 / baseline p50`` when the two were timed in different runs.

    Each run's p50 interval only covers the noise *within* that run; between runs the machine
    itself changes (load, frequency, another runner), so the plain MOVER interval of the two p50s
    can exclude 1 for the very same model. The teacher, timed interleaved with the student in
    both runs, measures that change: ``(c_s / c_t) / (b_s / b_t) = baseline speedup / candidate
    speedup`` is the ratio with the machine's drift divided out, with its own MOVER interval
    (log scale) from the two paired ``speedup`` intervals. Which of the two ratios is right
    depends on whether the teacher's timings moved with the machine or not, so the interval is
    the hull of both, widened by :data:`DRIFT_FLOOR` either way.

    Parameters
    ----------
    candidate_p50, baseline_p50 : Metric
        The student's p50 (ms) in this run and in the stored one, with their intervals.
    candidate_speedup, baseline_speedup : Metric or None
        Teacher p50 / student p50 of the same latency checks, with their paired intervals.

    Returns
    -------
    (low, high) or None
        None when either p50 has no interval.
    """
    measured = mover_ratio(candidate_p50, baseline_p50)
    if measured is None:
        return None
    low, high = measured
    if candidate_speedup is not None and baseline_speedup is not None:
        corrected = mover_ratio(baseline_speedup, candidate_speedup)
        if corrected is not None:
            low, high = min(low, corrected[0]), max(high, corrected[1])
    return low / (1 + DRIFT_FLOOR), high * (1 + DRIFT_FLOOR)


def mover_ratio(numerator: Metric, denominator: Metric) -> Interval | None:
    """MOVER interval of ``numerator / denominator`` on the log scale (positive values only)."""
    logged = []
    for m in (numerator, denominator):
        if m.value is None or m.ci is None or min(m.value, *m.ci) <= 0:
            return None
        logged.append(Metric(math.log(m.value), (math.log(m.ci[0]), math.log(m.ci[1]))))
    low, high = mover_difference(*logged)  # type: ignore[misc]
    return math.exp(low), math.exp(high)


# -- shared pieces -------------------------------------------------------------------


def _top_label_ece(out: ModelOutputs, y: np.ndarray, intervals: Intervals):
    """A model's top-label ECE (15 equal-width bins) and its statistic of weighted sums, for the bootstrap."""
    index, edges = bin_index(out.confidence, bins=BINS, binning="uniform")
    statistic = intervals.binned_error((out.preds == y) - out.confidence, index, len(edges) - 1)
    return float(statistic(intervals.sums.totals())[0]), statistic


def _p50(metrics: Mapping[str, Metric], models: Mapping[str, str], model: str, p50: str = "p50_ms") -> Metric | None:
    """The p50 a latency result measured for ``model`` (as its student or its teacher).

    ``p50`` names the metric after the role: ``"p50_ms"`` per call on classification data,
    ``"e2e_p50_ms"`` per generation episode on token data.
    """
    for role in ("student", "teacher"):
        if models.get(role) != model:
            continue
        m = metrics.get(f"{role}_{p50}")
        if m is not None and m.value is not None:
            return m
    return None


def _ratio_metric(candidate: Metric, baseline: Metric, note: str | None = None, ci: Interval | None = None) -> Metric:
    if not baseline.value:
        return Metric(None, None, "the baseline's p50 is 0")
    ratio = candidate.value / baseline.value  # type: ignore[operator]
    return Metric(ratio, ci or mover_ratio(candidate, baseline), note)


def _speedup_interval(result: CheckResult, candidate: str, baseline: str) -> Interval | None:
    """candidate / baseline p50 from one latency check's paired ``speedup`` (teacher p50 / student p50) interval."""
    speedup = result.metrics.get("speedup")
    if speedup is None or speedup.ci is None or min(speedup.ci) <= 0:
        return None
    lo, hi = speedup.ci
    roles = (result.models.get("student"), result.models.get("teacher"))
    if roles == (candidate, baseline):
        return 1 / hi, 1 / lo
    if roles == (baseline, candidate):
        return lo, hi
    return None


# -- paired mode ---------------------------------------------------------------------


def _paired_latency(ctx: CheckContext, baseline: str, p50: str = "p50_ms") -> Metric:
    """p50 ratio from latency checks that ran earlier in this session (same suite first).

    On token data (``p50 = "e2e_p50_ms"``) the p50s are of whole generation episodes, whose
    ratio the token latency check's ``speedup`` bootstraps, as on classification data.
    """
    candidate = ctx.check.student
    latency = [r for r in ctx.previous_results if r.kind == "latency" and r.outcome != "error"]
    latency.sort(key=lambda r: r.suite != ctx.suite.name or r.file != str(ctx.suite.file))  # stable: same suite first
    for r in latency:  # both timed interleaved in one check: the fairest comparison
        c, b = _p50(r.metrics, r.models, candidate, p50), _p50(r.metrics, r.models, baseline, p50)
        if c is not None and b is not None:
            return _ratio_metric(c, b, ci=_speedup_interval(r, candidate, baseline))
    c = next((m for r in latency if (m := _p50(r.metrics, r.models, candidate, p50)) is not None), None)
    b = next((m for r in latency if (m := _p50(r.metrics, r.models, baseline, p50)) is not None), None)
    if c is not None and b is not None:
        return _ratio_metric(c, b, "the two students were timed by different latency checks")
    missing = " and ".join(f"'{name}'" for name, m in ((candidate, c), (baseline, b)) if m is None)
    return Metric(
        None,
        None,
        f"latency unknown: no latency check that ran before this one timed {missing}; add a latency check "
        f'with student = "{candidate}" and teacher = "{baseline}" before this check in the suite',
    )


def _paired(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    name = params["baseline"]
    base, cand = ctx.pair(name)
    teacher, _ = ctx.pair()
    n = cand.n
    intervals = Intervals(ctx, n)
    agree_b = (base.preds == teacher.preds).astype(np.float64)
    agree_c = (cand.preds == teacher.preds).astype(np.float64)
    kl_b = M.kl_per_example(teacher.logits, base.logits)
    kl_c = M.kl_per_example(teacher.logits, cand.logits)
    intervals.add("agreement_drop", intervals.mean(agree_b - agree_c))
    intervals.add("kl_increase", intervals.mean(kl_c - kl_b))
    y = ctx.dataset.y
    if y is not None:
        ece_b, stat_b = _top_label_ece(base, y, intervals)
        ece_c, stat_c = _top_label_ece(cand, y, intervals)
        # paired: both students' calibration errors on the same resampled examples
        intervals.add("ece_increase", lambda sums: stat_c(sums) - stat_b(sums))
    cis = intervals.compute()
    values = {
        "agreement_drop": Metric.of(float(agree_b.mean() - agree_c.mean()), cis.get("agreement_drop")),
        "kl_increase": Metric.of(float(kl_c.mean() - kl_b.mean()), cis.get("kl_increase")),
    }
    candidate: dict[str, float | None] = {"top1": float(agree_c.mean()), "kl": float(kl_c.mean())}
    baseline: dict[str, Any] = {
        "mode": "paired",
        "model": name,
        "top1": float(agree_b.mean()),
        "kl": float(kl_b.mean()),
    }
    if y is None:
        no_labels = f"dataset '{ctx.check.dataset}' has no labels"
        for key in ("accuracy_drop", "ece_increase", "negative_flip_rate"):
            values[key] = Metric(None, None, no_labels)
    else:
        right_b, right_c = base.preds == y, cand.preds == y
        b = int(np.sum(right_b & ~right_c))  # negative flips: the candidate loses an example
        c = int(np.sum(~right_b & right_c))
        conf = ctx.suite.confidence
        values["accuracy_drop"] = Metric(float((b - c) / n), mcnemar_difference_interval(b, c, n, confidence=conf))
        values["ece_increase"] = Metric.of(ece_c - ece_b, cis.get("ece_increase"))
        values["negative_flip_rate"] = Metric(b / n, intervals.proportion(b, n))
        candidate |= {"accuracy": float(right_c.mean()), "ece": ece_c}
        baseline |= {"accuracy": float(right_b.mean()), "ece": ece_b}
        baseline["discordant"] = {"baseline_only_right": b, "candidate_only_right": c}
    values["p50_ms_increase_ratio"] = _paired_latency(ctx, name)
    return Measurement(
        {key: values[key] for key in METRICS}, n=n, extras={"baseline": baseline, "candidate": candidate}
    )


# -- stored mode ---------------------------------------------------------------------


def _stored_metric(check: Mapping[str, Any] | None, metric: str, missing: str) -> Metric:
    if check is None:
        return Metric(None, None, missing)
    m = check["metrics"][metric]
    ci = m.get("ci")
    return Metric(float(m["value"]), (float(ci[0]), float(ci[1])) if ci else None)


def _difference(first: Metric, second: Metric) -> Metric:
    """``first − second`` with its MOVER interval; undefined, with the reason, if either is."""
    for m in (first, second):
        if m.value is None:
            return Metric(None, None, m.note)
    return Metric(first.value - second.value, mover_difference(first, second))  # type: ignore[operator]


def _candidate_ece(ctx: CheckContext, cand: ModelOutputs, y: np.ndarray, intervals: Intervals) -> float:
    """The candidate's ECE; its interval is added to ``intervals`` as the calibration kind does."""
    value, statistic = _top_label_ece(cand, y, intervals)
    intervals.add("ece", statistic, method="basic", support=_NONNEGATIVE)
    return value


def _consistent_with_zero(ctx: CheckContext, cand: ModelOutputs, value: float) -> bool:
    """Consistency resampling (Bröcker & Smith 2007), as the calibration kind uses for student_ece."""
    null = M.consistency_resampling(
        cand.confidence, bins=BINS, binning="uniform", n_draws=ctx.suite.bootstrap, rng=ctx.rng_for("consistency:ece")
    )
    return value <= float(np.quantile(null, 1 - (1 - ctx.suite.confidence) / 2))


def _environment_note(doc: Mapping[str, Any]) -> str | None:
    from distill_eval.results import environment

    stored, now = doc.get("environment") or {}, environment()
    changed = [
        f"{key} {stored.get(key)!r} -> {now.get(key)!r}"
        for key in ("platform", "machine", "processor", "cpu_count", "torch", "torch_threads", "cuda")
        if key in stored and stored.get(key) != now.get(key)
    ]
    return f"the baseline was timed on another machine or software ({'; '.join(changed)})" if changed else None


def _stored(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    from distill_eval.baseline import find_check, read_baseline, shown  # it reads results.json: imported late

    explicit = params["baseline_results"]
    path = Path(explicit) if explicit is not None else Path(ctx.project.baseline)
    doc = read_baseline(path, accepted=explicit is None)
    suite, dataset, student = ctx.suite.name, ctx.check.dataset, ctx.check.student
    where = f"in suite '{suite}' of {shown(path)}"
    if not any(s.get("name") == suite for s in doc["suites"]):
        names = ", ".join(f"'{s.get('name')}'" for s in doc["suites"]) or "none"
        where = f"in {shown(path)}: it has no suite '{suite}' (suites: {names})"

    def stored(kind: str, metric: str) -> tuple[Metric, str | None]:
        check = find_check(doc, suite, kind, metric=metric, dataset=dataset, student=student)
        missing = f"the baseline has no {kind} check with {metric} on dataset '{dataset}' {where}"
        return _stored_metric(check, metric, missing), (check or {}).get("id")

    s_acc, acc_from = stored("agreement", "student_accuracy")
    s_top1, top1_from = stored("agreement", "top1")
    s_kl, kl_from = stored("agreement", "kl")
    s_ece, ece_from = stored("calibration", "student_ece")
    s_p50, p50_from = stored("latency", "student_p50_ms")
    s_speedup, _ = stored("latency", "speedup")
    _check_same_data(ctx, doc, path, [c for c in (acc_from, top1_from, kl_from, ece_from) if c])

    teacher, cand = ctx.pair()
    n = cand.n
    intervals = Intervals(ctx, n)
    kl = M.kl_per_example(teacher.logits, cand.logits)
    intervals.add("kl", intervals.mean(kl))
    agree = cand.preds == teacher.preds
    y = ctx.dataset.y
    ece = _candidate_ece(ctx, cand, y, intervals) if y is not None else None
    cis = intervals.compute()
    c_top1 = Metric(float(agree.mean()), intervals.proportion(int(agree.sum()), n))
    c_kl = Metric.of(float(kl.mean()), cis.get("kl"))
    values = {
        "agreement_drop": _difference(s_top1, c_top1),
        "kl_increase": _difference(c_kl, s_kl),
        "negative_flip_rate": Metric(
            None,
            None,
            "needs the baseline's per-example predictions: paired mode only (set 'baseline' to the accepted "
            "student's model name)",
        ),
    }
    candidate: dict[str, float | None] = {"top1": c_top1.value, "kl": c_kl.value}
    if y is None:
        no_labels = f"dataset '{dataset}' has no labels"
        values["accuracy_drop"] = values["ece_increase"] = Metric(None, None, no_labels)
    else:
        hit = cand.preds == y
        c_acc = Metric(float(hit.mean()), intervals.proportion(int(hit.sum()), n))
        ci = cis.get("ece")
        if ci is not None and _consistent_with_zero(ctx, cand, ece):  # type: ignore[arg-type]
            ci = (0.0, max(ci[1], ece))  # type: ignore[type-var]
        c_ece = Metric.of(ece, ci)
        values["accuracy_drop"] = _difference(s_acc, c_acc)
        values["ece_increase"] = _difference(c_ece, s_ece)
        candidate |= {"accuracy": c_acc.value, "ece": c_ece.value}
    values["p50_ms_increase_ratio"], c_p50 = _stored_latency(ctx, doc, s_p50, s_speedup)
    candidate["p50_ms"] = c_p50
    baseline = {
        "mode": "stored",
        "file": str(path),
        "created": doc.get("created"),
        "suite": suite,
        "checks": {"agreement": acc_from or top1_from or kl_from, "calibration": ece_from, "latency": p50_from},
        "accuracy": s_acc.value,
        "top1": s_top1.value,
        "kl": s_kl.value,
        "ece": s_ece.value,
        "p50_ms": s_p50.value,
    }
    return Measurement(
        {key: values[key] for key in METRICS}, n=n, extras={"baseline": baseline, "candidate": candidate}
    )


def _stored_latency(
    ctx: CheckContext, doc: Mapping[str, Any], stored: Metric, stored_speedup: Metric, p50: str = "student_p50_ms"
) -> tuple[Metric, float | None]:
    """p50 ratio: this suite's latency check of this run over the stored one (drift-tolerant interval).

    ``p50`` names the student's median in both: ``student_e2e_p50_ms`` (a whole generation
    episode) on token data.
    """
    student, current, current_speedup = ctx.check.student, None, None
    for r in ctx.previous_results:
        same_suite = r.suite == ctx.suite.name and r.file == str(ctx.suite.file)
        if r.kind == "latency" and r.outcome != "error" and same_suite and r.models.get("student") == student:
            m = r.metrics.get(p50)
            if m is not None and m.value is not None:
                current, current_speedup = m, r.metrics.get("speedup")
                break
    if stored.value is None:
        return Metric(None, None, f"latency unknown on the baseline's side: {stored.note}"), None
    if current is None:
        return (
            Metric(
                None,
                None,
                f"latency unknown on the candidate's side: no latency check of suite '{ctx.suite.name}' timed "
                f"student '{student}' before this check in this run",
            ),
            None,
        )
    speedups = (current_speedup, stored_speedup if stored_speedup.value is not None else None)
    ci = drift_tolerant_ratio(current, stored, *speedups)
    return _ratio_metric(current, stored, _environment_note(doc), ci=ci), current.value


def _check_same_data(ctx: CheckContext, doc: Mapping[str, Any], path: Path, ids: list[str]) -> None:
    """Refuse to compare with values measured on other data: the difference would measure the data."""
    from distill_eval.baseline import ACCEPT_COMMAND, shown

    stored = ((doc.get("datasets") or {}).get(ctx.check.dataset) or {}).get("sha256")
    current = ctx.dataset.sha256
    if ids and stored and current and stored != current:
        raise CheckError(
            f"the baseline {shown(path)} was measured on dataset '{ctx.check.dataset}' with sha256 {stored[:12]}…, "
            f"but it now has sha256 {current[:12]}…: a difference would measure the change of data, not of "
            f"student; accept a baseline on this data (`{ACCEPT_COMMAND}`) or point "
            "'baseline_results' at one"
        )


#: what kind ``regression`` computes on token data (both modes): the same metrics, token-weighted
TOKEN_METRICS = METRICS

#: why kl_increase is undefined when per-model summaries served the check
_NO_KL = (
    "not computed: no bound of this check reads kl_increase, and cached per-token summaries served it "
    "without running the teacher and a student together (bound it to compute it)"
)


def _token_columns(st: Any) -> dict[str, np.ndarray]:
    """A student's per-token values that a token regression compares: right, agrees with the teacher, kl, ECE gap."""
    return {
        "right": st.student_argmax == st.label,
        "agree": st.student_argmax == st.teacher_argmax,
        "kl": st.kl.astype(np.float64) if st.has_divergences else None,
        "confidence": st.student_max_prob.astype(np.float64),
    }


def _token_regression(
    ctx: CheckContext,
    cand: Any,
    base: Mapping[str, Any],
    extras: dict[str, Any],
    latency: Metric,
    no_base_kl: str = _NO_KL,
) -> Measurement:
    """Both students' values on the same tokens, bootstrapped by resampling sequences; ``latency`` is the p50 ratio.

    ``base`` holds the baseline's per-token ``right`` and per-sequence sums (``agree``, ``kl``
    or None, ``ece_bins`` of shape (sequences, 15)), aligned with the candidate's sequences.
    """
    from distill_eval.checks.tokens import TokenIntervals, ece_of_bins

    iv = TokenIntervals(ctx, cand)
    sums = iv.sums
    c = _token_columns(cand)
    right_b, right_c = base["right"], c["right"]
    iv.add("accuracy_drop", sums.token_mean(right_b.astype(np.float64) - right_c))
    agree_b, agree_c = sums.sums.column(base["agree"]), sums.token_sum(c["agree"].astype(np.float64))
    tokens = sums.tokens
    iv.add("agreement_drop", lambda s: (s[agree_b] - s[agree_c]) / s[tokens])
    missing_kl = _NO_KL
    if base["kl"] is not None and c["kl"] is not None:
        kl_b, kl_c = sums.sums.column(base["kl"]), sums.token_sum(c["kl"])
        iv.add("kl_increase", lambda s: (s[kl_c] - s[kl_b]) / s[tokens])
    elif base["kl"] is None and c["kl"] is not None:
        missing_kl = no_base_kl
    iv.add("negative_flip_rate", sums.token_mean((right_b & ~right_c).astype(np.float64)))
    ece_b = ece_of_bins([sums.sums.column(column) for column in np.asarray(base["ece_bins"]).T], tokens)
    ece_c = ece_of_bins([sums.sums.column(column) for column in _sequence_sums(sums, c)["ece_bins"].T], tokens)
    iv.add("ece_increase", lambda s: ece_c(s) - ece_b(s))  # paired: both on the same resampled sequences
    metrics = iv.measure()
    metrics.setdefault("kl_increase", Metric(None, None, missing_kl))
    metrics["p50_ms_increase_ratio"] = latency
    extras["candidate"] = {"accuracy": float(right_c.mean()), "top1": float(c["agree"].mean())}
    extras["tokens"] = cand.n
    return Measurement({key: metrics[key] for key in TOKEN_METRICS}, extras=extras, n=len(sums.units))


def _needs_kl(ctx: CheckContext) -> bool:
    return any(b.metric == "kl_increase" for b in ctx.check.bounds)


def _token_paired(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Paired regression on token data: both students' per-token values on the same tokens, resampling sequences."""
    name = params["baseline"]
    divergences = _needs_kl(ctx)
    cand, base = ctx.token_stats(divergences=divergences), ctx.token_stats(student=name, divergences=divergences)
    if not (np.array_equal(cand.sequence, base.sequence) and np.array_equal(cand.position, base.position)):
        raise CheckError(f"check '{ctx.check.id}': the two students were scored on different tokens")  # a cache bug
    b = _token_columns(base)
    sums = SequenceSums(cand.sequence)
    per_sequence = _sequence_sums(sums, b)
    extras = {
        "baseline": {
            "mode": "paired",
            "model": name,
            "accuracy": float(b["right"].mean()),
            "top1": float(b["agree"].mean()),
        }
    }
    latency = _paired_latency(ctx, name, "e2e_p50_ms")
    return _token_regression(ctx, cand, {"right": b["right"], **per_sequence}, extras, latency)


def _sequence_sums(sums: SequenceSums, columns: Mapping[str, Any]) -> dict[str, Any]:
    """A student's per-sequence sums (aligned with ``sums.units``): agreeing tokens, kl, ECE bin gaps."""
    index, edges = bin_index(columns["confidence"], bins=BINS, binning="uniform")
    gap = columns["right"].astype(np.float64) - columns["confidence"]
    return {
        "agree": sums.per_sequence(columns["agree"].astype(np.float64)),
        "kl": sums.per_sequence(columns["kl"]) if columns["kl"] is not None else None,
        "ece_bins": np.stack([sums.per_sequence(gap, where=index == b) for b in range(len(edges) - 1)], axis=1),
    }


def _token_stored(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Stored regression on token data: the candidate against the accepted student's per-sequence record."""
    from distill_eval.baseline import read_baseline, read_token_record, shown, token_records_path

    check, dataset = ctx.check, ctx.check.dataset
    cand = ctx.token_stats(divergences=_needs_kl(ctx))
    if cand.n == 0:
        raise CheckError(f"check '{check.id}': dataset '{dataset}' has no scored tokens")
    data = ctx.token_dataset
    columns = _token_columns(cand)
    sums = SequenceSums(cand.sequence)
    per_sequence = _sequence_sums(sums, columns)
    teacher_fp = ctx.token_fingerprint(check.teacher)
    arrays = {
        "sequence": sums.units.astype(np.int64),
        "right": np.packbits(columns["right"]),
        "agree": per_sequence["agree"],
        "ece_bins": per_sequence["ece_bins"],
    }
    if per_sequence["kl"] is not None:
        arrays["kl"] = per_sequence["kl"]
    meta = {
        "dataset": dataset,
        "dataset_sha256": data.sha256,
        "tokens": cand.n,
        "teacher": check.teacher,
        "teacher_fingerprint": teacher_fp,
        "student": check.student,
        "bins": BINS,
    }
    ctx.keep_token_record({"meta": meta, "arrays": arrays})  # what --distill-accept stores, before any error

    explicit = params["baseline_results"]
    path = Path(explicit) if explicit is not None else Path(ctx.project.baseline)
    doc = read_baseline(path, accepted=explicit is None)  # a missing baseline: the same error as classification
    stored = read_token_record(path, ctx.suite.name, check.id)
    sm, sa = stored["meta"], stored["arrays"]
    where = f"the baseline's record {shown(token_records_path(path))} of check '{check.id}'"
    if sm.get("dataset_sha256") != data.sha256:
        raise CheckError(
            f"check '{check.id}': {where} was measured on dataset '{sm.get('dataset')}' with sha256 "
            f"{str(sm.get('dataset_sha256'))[:12]}…, but dataset '{dataset}' now has sha256 {data.sha256[:12]}…: a "
            "difference would measure the change of data, not of student; accept a baseline on this data "
            f"(`pytest --distill --distill-accept`)"
        )
    if teacher_fp is not None and sm.get("teacher_fingerprint") not in (None, teacher_fp):
        raise CheckError(
            f"check '{check.id}': {where} was measured against teacher '{sm.get('teacher')}' with fingerprint "
            f"{str(sm.get('teacher_fingerprint'))[:12]}…, but teacher '{check.teacher}' now has "
            f"{teacher_fp[:12]}…: agreement and kl would measure the change of teacher; accept a baseline with it"
        )
    right = np.unpackbits(np.asarray(sa.get("right", np.zeros(0, np.uint8))), count=cand.n).astype(bool)
    if (
        not np.array_equal(np.asarray(sa.get("sequence")), sums.units)
        or np.asarray(sa.get("ece_bins")).shape != (len(sums.units), BINS)
        or int(sm.get("tokens", -1)) != cand.n
    ):
        raise CheckError(
            f"check '{check.id}': {where} does not cover the {cand.n} scored tokens of the {len(sums.units)} "
            f"sequences of dataset '{dataset}'; re-accept the baseline (`pytest --distill --distill-accept`)"
        )
    base = {"right": right, "agree": sa["agree"], "kl": sa.get("kl"), "ece_bins": sa["ece_bins"]}
    extras = {
        "baseline": {
            "mode": "stored",
            "file": str(path),
            "record": str(token_records_path(path)),
            "created": doc.get("created"),
            "student": sm.get("student"),
            "accuracy": float(right.mean()),
            "top1": float(np.sum(sa["agree"]) / cand.n),
        }
    }
    no_kl = "the baseline's record has no kl: accept it from a run whose check binds kl_increase"
    return _token_regression(ctx, cand, base, extras, _stored_token_latency(ctx, doc), no_kl)


def _stored_token_latency(ctx: CheckContext, doc: Mapping[str, Any]) -> Metric:
    """p50 ratio of whole generation episodes: this run's token latency check over the stored one."""
    from distill_eval.baseline import find_check

    suite, dataset, student = ctx.suite.name, ctx.check.dataset, ctx.check.student

    def stored(metric: str) -> Metric:
        check = find_check(doc, suite, "latency", metric=metric, dataset=dataset, student=student)
        missing = f"the baseline has no latency check with {metric} on dataset '{dataset}' in suite '{suite}'"
        return _stored_metric(check, metric, missing)

    ratio, _ = _stored_latency(ctx, doc, stored("student_e2e_p50_ms"), stored("speedup"), "student_e2e_p50_ms")
    return ratio


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if ctx.is_tokens:
        return _token_paired(ctx, params) if params.get("baseline") else _token_stored(ctx, params)
    ctx.require_labels_for(("accuracy_drop", "ece_increase", "negative_flip_rate"))
    return _paired(ctx, params) if params.get("baseline") else _stored(ctx, params)


KIND = CheckKind(
    name="regression",
    metrics=METRICS,
    read_params=read_params,
    compute=compute,
    extra_models=_extra_models,
    token_metrics=TOKEN_METRICS,
)
