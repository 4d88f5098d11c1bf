"""Check kinds: one module per kind, registered in :data:`KINDS`.

Each module declares a :class:`~distill_eval.checks.base.CheckKind`: how to
read its parameters and how to compute its metrics. Judging bounds is shared
(:mod:`distill_eval.checks.judge`).
"""

from __future__ import annotations

from distill_eval.checks import (
    agreement,
    calibration,
    copied_errors,
    generation,
    latency,
    leakage,
    regression,
    slices,
)
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric, SliceMeasurement

__all__ = ["KINDS", "CheckContext", "CheckKind", "Measurement", "Metric", "SliceMeasurement"]

#: every kind a suite may use, by name
KINDS: dict[str, CheckKind] = {
    kind.name: kind
    for kind in (
        calibration.KIND,
        agreement.KIND,
        slices.KIND,
        copied_errors.KIND,
        latency.KIND,
        leakage.KIND,
        regression.KIND,
        generation.KIND,
    )
}
