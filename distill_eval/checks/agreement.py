"""Kind ``agreement``: how closely does the student imitate the teacher?"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.checks.intervals import Intervals
from distill_eval.checks.tokens import AGREEMENT_METRICS, token_agreement
from distill_eval.report.extras import agreement_extras

#: the metrics that compare with the labels (undefined without them)
LABEL_METRICS = ("student_accuracy", "teacher_accuracy", "accuracy_gap", "accuracy_retention")


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    return {
        "k": r.integer("k", 5, minimum=1),
        "temperature": r.number("temperature", 1.0, minimum=0.0, exclusive_minimum=True),
    }


def _kappa(intervals: Intervals, a: np.ndarray, b: np.ndarray, n_classes: int):
    """Cohen's kappa of two prediction vectors as a statistic of weighted sums."""
    same = intervals.sums.column((a == b).astype(np.float64))
    per_a = intervals.sums.grouped(a, n_classes)
    per_b = intervals.sums.grouped(b, n_classes)
    total = intervals.total

    def statistic(s) -> np.ndarray:
        t = s[total]
        observed, expected = s[same] / t, (s[per_a] * s[per_b]).sum(axis=1) / (t * t)
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)

    return statistic


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if ctx.is_tokens:
        return token_agreement(ctx, params)
    ctx.require_labels_for(LABEL_METRICS)
    teacher, student = ctx.pair()
    t_logits, s_logits = teacher.logits, student.logits
    temperature, n = params["temperature"], teacher.n
    intervals = Intervals(ctx, n)
    agree = teacher.preds == student.preds
    in_topk = M.topk_agreement(t_logits, s_logits, k=params["k"]) * n
    per_example = M.divergences_per_example(t_logits, s_logits, temperature=temperature)  # one pass, not three
    kl, js, tvd = per_example["kl"], per_example["js"], per_example["tvd"]
    for name, per_example in (("kl", kl), ("js", js), ("tvd", tvd)):
        intervals.add(name, intervals.mean(per_example))
    intervals.add("kappa", _kappa(intervals, teacher.preds, student.preds, teacher.n_classes))
    y = ctx.dataset.y
    if y is not None:
        s_hit, t_hit = student.preds == y, teacher.preds == y
        intervals.add("accuracy_gap", intervals.mean(t_hit.astype(float) - s_hit))  # paired: the same examples
        intervals.add("accuracy_retention", intervals.ratio(s_hit, t_hit))
    cis = intervals.compute()
    values: dict[str, Metric] = {
        "top1": Metric.of(float(agree.mean()), intervals.proportion(agree.sum(), n)),
        "topk": Metric.of(in_topk / n, intervals.proportion(round(in_topk), n)),
        "kl": Metric.of(float(kl.mean()), cis.get("kl")),
        "js": Metric.of(float(js.mean()), cis.get("js")),
        "tvd": Metric.of(float(tvd.mean()), cis.get("tvd")),
        "kappa": Metric.of(
            M.cohen_kappa(teacher.preds, student.preds, n_classes=teacher.n_classes),
            cis.get("kappa"),
            undefined="both models predict one and the same class everywhere",
        ),
    }
    if y is None:
        no_labels = f"dataset '{ctx.check.dataset}' has no labels"
        for name in LABEL_METRICS:
            values[name] = Metric(None, None, no_labels)
        return Measurement(values, extras=agreement_extras(ctx.dataset, teacher, student), n=n)
    s_acc, t_acc = float(s_hit.mean()), float(t_hit.mean())
    values["student_accuracy"] = Metric.of(s_acc, intervals.proportion(s_hit.sum(), n))
    values["teacher_accuracy"] = Metric.of(t_acc, intervals.proportion(t_hit.sum(), n))
    values["accuracy_gap"] = Metric.of(t_acc - s_acc, cis.get("accuracy_gap"))
    values["accuracy_retention"] = (
        Metric.of(s_acc / t_acc, cis.get("accuracy_retention"))
        if t_acc > 0
        else Metric(None, None, "the teacher's accuracy is 0")
    )
    return Measurement(values, extras=agreement_extras(ctx.dataset, teacher, student), n=n)


KIND = CheckKind(
    name="agreement",
    metrics=(
        "top1",
        "topk",
        "kl",
        "js",
        "tvd",
        "kappa",
        "student_accuracy",
        "teacher_accuracy",
        "accuracy_gap",
        "accuracy_retention",
    ),
    read_params=read_params,
    compute=compute,
    token_metrics=AGREEMENT_METRICS,
)
