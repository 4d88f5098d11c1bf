"""Kind ``calibration``: does the student state its uncertainty as well as the teacher?"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    return {
        "bins": r.integer("bins", 15, minimum=1),
        "binning": r.string("binning", "uniform", choices=("uniform", "quantile")),
    }


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    teacher, student = ctx.pair()
    y = ctx.labels
    bins, binning = params["bins"], params["binning"]
    s_ece = M.expected_calibration_error(student.probs, y, bins=bins, binning=binning)
    t_ece = M.expected_calibration_error(teacher.probs, y, bins=bins, binning=binning)
    temperature = M.fit_temperature(student.logits, y)
    values = {
        "student_ece": s_ece,
        "teacher_ece": t_ece,
        "ece_gap": s_ece - t_ece,
        "student_mce": M.maximum_calibration_error(student.probs, y, bins=bins, binning=binning),
        "student_classwise_ece": M.classwise_ece(student.probs, y, bins=bins, binning=binning),
        "student_brier": M.brier_score(student.probs, y),
        "teacher_brier": M.brier_score(teacher.probs, y),
        "student_nll": M.negative_log_likelihood(student.logits, y),
        "teacher_nll": M.negative_log_likelihood(teacher.logits, y),
        "student_temperature": temperature,
        "student_ece_after_temperature": M.expected_calibration_error(
            M.softmax(student.logits, temperature=temperature), y, bins=bins, binning=binning
        ),
    }
    return Measurement({name: Metric.of(v) for name, v in values.items()})


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
)
