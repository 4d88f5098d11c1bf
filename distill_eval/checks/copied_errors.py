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

from distill_eval import metrics as M
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.data import ids_file_mask


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


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    teacher, student = ctx.pair()
    y, t, s = ctx.labels, teacher.preds, student.preds
    n_errors = M.teacher_errors(y, t)
    no_errors = "the teacher makes no errors on this dataset"
    chance = M.chance_copy_rate(y, t, s, n_classes=teacher.n_classes)
    values = {
        "teacher_errors": Metric.of(float(n_errors)),
        "copy_rate": Metric.of(M.copy_rate(y, t, s), undefined=no_errors),
        "chance_copy_rate": Metric.of(chance, undefined=no_errors),
        "copy_lift": Metric.of(
            M.copy_lift(y, t, s, n_classes=teacher.n_classes),
            undefined=no_errors if n_errors == 0 else "chance copy rate is 0",
        ),
        "error_consistency": Metric.of(
            M.error_consistency(y, t, s),
            undefined="expected error agreement is 1 (a model is always right or always wrong)",
        ),
        "copy_p_value": Metric.of(
            M.copy_p_value(y, t, s, n_permutations=ctx.suite.bootstrap, rng=ctx.rng), undefined=no_errors
        ),
        "copied_share": Metric.of(M.copied_share(y, t, s), undefined="the student makes no errors"),
    }
    extras: dict[str, Any] = {}
    if params["known_failures"] is not None:
        mask = ids_file_mask(params["known_failures"], ctx.dataset, what="known_failures")
        values["known_copied"] = Metric.of(M.known_copied(y, t, s, mask), undefined="the known-failures file is empty")
        extras["known_failures"] = int(mask.sum())
    else:
        values["known_copied"] = Metric(None, None, "no 'known_failures' file was given")
    if params["control"]:
        control, _ = ctx.pair(params["control"])
        values["control_copy_rate"] = Metric.of(M.copy_rate(y, t, control.preds), undefined=no_errors)
    else:
        values["control_copy_rate"] = Metric(None, None, "no 'control' model was given")
    return Measurement(values, extras=extras)


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
)
