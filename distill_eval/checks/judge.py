"""Bounds and gate modes: turn a measurement into a verdict (``distill-eval docs statistics``).

- ``estimate``: the point estimate must satisfy the bound;
- ``strict``: the whole interval must satisfy it (passing needs evidence);
- ``lenient``: fails only when the whole interval breaks it (failing needs evidence).

Under ``strict`` a metric without an interval cannot pass: an interval is
missing when there were too few examples (or timed calls) for one, and passing
needs evidence. Under ``estimate`` and ``lenient`` such a metric is judged on its
estimate, and the message says so. Exact values (counts, parameter counts,
file sizes) carry the value itself as their interval and are judged in every mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from distill_eval.checks.base import Measurement, Metric
from distill_eval.errors import CheckError
from distill_eval.suite import Bound

__all__ = ["BoundResult", "format_number", "judge"]


def format_number(x: float | None) -> str:
    """Three significant digits, as in failure messages: ``0.071``, ``12.3``, ``1.2e+03``."""
    if x is None:
        return "n/a"
    return f"{x:.3g}"


@dataclass(frozen=True)
class BoundResult:
    """One bound applied to one metric (of the check, or of one slice)."""

    metric: str
    op: str
    bound: float
    ok: bool
    value: float | None
    ci: tuple[float, float] | None
    gate: str
    slice: str | None = None
    note: str | None = None

    def describe(self) -> str:
        """``student_ece = 0.071 [0.058, 0.084] > max 0.05 (gate: estimate)``."""
        name = f"{self.metric} of slice '{self.slice}'" if self.slice is not None else self.metric
        if self.value is None:
            return f"{name}: {self.note} ({self.op} {format_number(self.bound)})"
        ci = f" [{format_number(self.ci[0])}, {format_number(self.ci[1])}]" if self.ci else ""
        if self.op == "min":
            rel = ">=" if self.ok else "<"
        else:
            rel = "<=" if self.ok else ">"
        if not self.ok and self.value is not None:
            # under strict/lenient the estimate may sit on the right side while the interval decides
            estimate_ok = self.value >= self.bound if self.op == "min" else self.value <= self.bound
            if estimate_ok:
                rel = "not entirely >=" if self.op == "min" else "not entirely <="
        if self.ci or self.gate == "estimate":
            gate = self.gate
        elif self.gate == "strict":
            gate = "strict; no interval, so no evidence to pass"
        else:
            gate = f"{self.gate}; no interval, estimate used"
        note = f"; {self.note}" if self.note else ""
        return (
            f"{name} = {format_number(self.value)}{ci} {rel} {self.op} {format_number(self.bound)} (gate: {gate}){note}"
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "op": self.op,
            "bound": self.bound,
            "ok": self.ok,
            "value": self.value,
            "ci": list(self.ci) if self.ci else None,
        }
        if self.slice is not None:
            out["slice"] = self.slice
        if self.note:
            out["note"] = self.note
        return out


def _satisfies(metric: Metric, bound: Bound, gate: str) -> bool:
    assert metric.value is not None
    if metric.ci is None or gate == "estimate":
        x_min = x_max = metric.value
    elif gate == "strict":
        x_min, x_max = metric.ci[0], metric.ci[1]  # the worst end must satisfy the bound
    elif gate == "lenient":
        x_min, x_max = metric.ci[1], metric.ci[0]  # the best end must satisfy the bound
    else:  # validated when the suite is read
        raise ValueError(f"unknown gate {gate!r}")
    return x_min >= bound.value if bound.op == "min" else x_max <= bound.value


def judge(
    measurement: Measurement,
    bounds: Iterable[Bound],
    *,
    gate: str,
    slice_metrics: Iterable[str] = (),
    min_support: int | None = None,
) -> list[BoundResult]:
    """Apply every bound to the measurement under ``gate``.

    Bounds on ``slice_metrics`` apply to every slice. When the check has any
    bound, each under-supported slice adds a failing ``support >= min_support``
    result (never a silent pass).

    Raises
    ------
    CheckError
        When a bounded metric is undefined on this data (e.g. ``copy_rate``
        when the teacher makes no errors): the check cannot be decided.
    """
    bounds = list(bounds)
    slice_metrics = set(slice_metrics)
    results: list[BoundResult] = []
    if bounds and min_support is not None:
        # Too few examples to judge a slice is a failure of a bounded check, never a silent pass.
        for sl in measurement.slices or []:
            if sl.under_supported:
                results.append(
                    BoundResult(
                        "support",
                        "min",
                        float(min_support),
                        False,
                        float(sl.support),
                        None,
                        gate,
                        sl.name,
                        note="under-supported slice",
                    )
                )
    for bound in bounds:
        if bound.metric in slice_metrics:
            for sl in measurement.slices or []:
                if not sl.under_supported:
                    results.append(_one(bound, sl.metrics[bound.metric], gate, sl.name, sl.support))
            continue
        results.append(_one(bound, measurement.metrics[bound.metric], gate, None, measurement.n))
    return results


def _inconclusive(bound: Bound, metric: Metric, n: int | None) -> str | None:
    """When the interval straddles the bound: roughly how many examples would settle it.

    Interval widths shrink like 1/sqrt(n), so the interval clears the bound at
    about ``n * (half_width / |estimate - bound|)**2`` examples.
    """
    if metric.ci is None or metric.value is None or not metric.ci[0] < bound.value < metric.ci[1]:
        return None
    distance = abs(metric.value - bound.value)
    if n is None or distance == 0:
        return "inconclusive: the interval straddles the bound"
    half_width = (metric.ci[1] - metric.ci[0]) / 2
    needed = math.ceil(n * (half_width / distance) ** 2)
    return f"inconclusive: the interval straddles the bound; about {needed:,} examples (now {n:,}) would settle it"


def _examples(n: int) -> str:
    return f"{n:,} example{'' if n == 1 else 's'} {'is' if n == 1 else 'are'} too few"


def _one(bound: Bound, metric: Metric, gate: str, slice_name: str | None, n: int | None = None) -> BoundResult:
    if metric.value is None:
        where = f" of slice '{slice_name}'" if slice_name else ""
        raise CheckError(
            f"cannot apply '{bound.op}' bound to {bound.metric}{where}: it is undefined on this data ({metric.note})"
        )
    if gate == "strict" and metric.ci is None:
        # passing needs evidence, and a metric without an interval has none
        reason = metric.note or f"{'too few examples' if n is None else _examples(n)} for an interval"
        if "too few" not in reason:
            reason = f"too few examples for an interval ({reason})"
        return BoundResult(bound.metric, bound.op, bound.value, False, metric.value, None, gate, slice_name, reason)
    ok = _satisfies(metric, bound, gate)
    # a verdict the interval does not support (strict fail, lenient pass) says what would settle it
    note = _inconclusive(bound, metric, n) if (not ok or gate == "lenient") else None
    return BoundResult(bound.metric, bound.op, bound.value, ok, metric.value, metric.ci, gate, slice_name, note=note)
