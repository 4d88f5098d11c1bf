"""Kind ``agreement``: how closely does the student imitate the teacher?"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    return {
        "k": r.integer("k", 5, minimum=1),
        "temperature": r.number("temperature", 1.0, minimum=0.0, exclusive_minimum=True),
    }


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    teacher, student = ctx.pair()
    t_logits, s_logits = teacher.logits, student.logits
    temperature = params["temperature"]
    values: dict[str, Metric] = {
        "top1": Metric.of(M.top1_agreement(t_logits, s_logits)),
        "topk": Metric.of(M.topk_agreement(t_logits, s_logits, k=params["k"])),
        "kl": Metric.of(M.kl_divergence(t_logits, s_logits, temperature=temperature)),
        "js": Metric.of(M.js_divergence(t_logits, s_logits, temperature=temperature)),
        "tvd": Metric.of(M.total_variation(t_logits, s_logits, temperature=temperature)),
        "kappa": Metric.of(
            M.cohen_kappa(teacher.preds, student.preds, n_classes=teacher.n_classes),
            undefined="both models predict one and the same class everywhere",
        ),
    }
    y = ctx.dataset.y
    if y is None:
        no_labels = f"dataset '{ctx.check.dataset}' has no labels"
        for name in ("student_accuracy", "teacher_accuracy", "accuracy_gap", "accuracy_retention"):
            values[name] = Metric(None, None, no_labels)
    else:
        s_acc = float(np.mean(student.preds == y))
        t_acc = float(np.mean(teacher.preds == y))
        values["student_accuracy"] = Metric.of(s_acc)
        values["teacher_accuracy"] = Metric.of(t_acc)
        values["accuracy_gap"] = Metric.of(t_acc - s_acc)
        values["accuracy_retention"] = (
            Metric.of(s_acc / t_acc) if t_acc > 0 else Metric(None, None, "the teacher's accuracy is 0")
        )
    return Measurement(values)


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
)
