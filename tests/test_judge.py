"""Bounds under the three gate modes (distill-eval docs statistics), and the failure sentence."""

from __future__ import annotations

import pytest

from distill_eval.checks.base import Measurement, Metric, SliceMeasurement
from distill_eval.checks.judge import judge
from distill_eval.errors import CheckError
from distill_eval.suite import Bound

# (value, ci, op, bound) -> verdict under estimate / strict / lenient
CASES = [
    # interval entirely inside the bound: passes under every gate
    (0.03, (0.02, 0.04), "max", 0.05, (True, True, True)),
    # estimate inside, interval straddles the bound: only strict fails
    (0.045, (0.04, 0.06), "max", 0.05, (True, False, True)),
    # estimate outside, interval straddles: only lenient passes
    (0.055, (0.04, 0.06), "max", 0.05, (False, False, True)),
    # interval entirely outside: fails under every gate
    (0.07, (0.06, 0.08), "max", 0.05, (False, False, False)),
    # the same for a minimum
    (0.97, (0.96, 0.98), "min", 0.95, (True, True, True)),
    (0.955, (0.94, 0.97), "min", 0.95, (True, False, True)),
    (0.945, (0.93, 0.96), "min", 0.95, (False, False, True)),
    (0.90, (0.88, 0.92), "min", 0.95, (False, False, False)),
    # exactly on the bound satisfies it
    (0.05, (0.05, 0.05), "max", 0.05, (True, True, True)),
]


@pytest.mark.parametrize(("value", "ci", "op", "bound", "expected"), CASES)
def test_gate_modes(value, ci, op, bound, expected) -> None:
    measurement = Measurement({"m": Metric(value, ci)})
    verdicts = tuple(
        judge(measurement, [Bound("m", op, bound)], gate=gate)[0].ok for gate in ("estimate", "strict", "lenient")
    )
    assert verdicts == expected


@pytest.mark.parametrize("gate", ["estimate", "strict", "lenient"])
def test_without_an_interval_every_gate_uses_the_estimate(gate: str) -> None:
    measurement = Measurement({"m": Metric(0.06)})
    (result,) = judge(measurement, [Bound("m", "max", 0.05)], gate=gate)
    assert not result.ok


def test_failure_message_names_metric_value_interval_bound_and_gate() -> None:
    (result,) = judge(
        Measurement({"student_ece": Metric(0.0712, (0.0581, 0.0843))}),
        [Bound("student_ece", "max", 0.05)],
        gate="estimate",
    )
    assert result.describe() == "student_ece = 0.0712 [0.0581, 0.0843] > max 0.05 (gate: estimate)"
    (result,) = judge(Measurement({"top1": Metric(0.96, (0.94, 0.98))}), [Bound("top1", "min", 0.95)], gate="strict")
    assert result.describe() == (
        "top1 = 0.96 [0.94, 0.98] not entirely >= min 0.95 (gate: strict); "
        "inconclusive: the interval straddles the bound"
    )
    (result,) = judge(Measurement({"top1": Metric(0.9)}), [Bound("top1", "min", 0.95)], gate="lenient")
    assert result.describe() == "top1 = 0.9 < min 0.95 (gate: lenient; no interval, estimate used)"


@pytest.mark.parametrize(
    ("metric", "n", "reason"),
    [
        (Metric(29.89), 1, "1 example is too few for an interval"),
        (Metric(29.89), None, "too few examples for an interval"),
        (
            Metric(3.2, None, "5 timed calls are too few for a distribution-free 95% interval on the 99th percentile"),
            5,
            "5 timed calls are too few for a distribution-free 95% interval on the 99th percentile",
        ),
    ],
)
def test_strict_never_passes_a_metric_without_an_interval(metric: Metric, n: int | None, reason: str) -> None:
    # the estimate clears the bound by far: only the missing evidence can fail it
    measurement = Measurement({"speedup": metric}, n=n)
    (result,) = judge(measurement, [Bound("speedup", "min", 3.0)], gate="strict")
    assert not result.ok
    assert result.note == reason
    assert result.describe() == (
        f"speedup = {metric.value:.3g} not entirely >= min 3 (gate: strict; no interval, so no evidence to pass); "
        + reason
    )
    # the other gates judge the estimate, as before
    for gate in ("estimate", "lenient"):
        assert judge(measurement, [Bound("speedup", "min", 3.0)], gate=gate)[0].ok


def test_strict_passes_an_exact_value() -> None:
    # a census (a count, a parameter ratio) carries the value as its interval: no sampling to doubt
    (result,) = judge(
        Measurement({"param_ratio": Metric(8.0, (8.0, 8.0))}), [Bound("param_ratio", "min", 5)], gate="strict"
    )
    assert result.ok


def test_an_undefined_bounded_metric_cannot_be_judged() -> None:
    measurement = Measurement({"copy_rate": Metric(None, None, "the teacher makes no errors")})
    with pytest.raises(CheckError, match=r"copy_rate: it is undefined on this data .the teacher makes no errors."):
        judge(measurement, [Bound("copy_rate", "max", 0.5)], gate="estimate")
    assert judge(measurement, [], gate="estimate") == []


def _slices() -> Measurement:
    return Measurement(
        {"worst_retention": Metric(0.9)},
        slices=[
            SliceMeasurement("big", 100, {"retention": Metric(0.9)}),
            SliceMeasurement("tiny", 3, {"retention": Metric(1.0)}, under_supported=True),
        ],
    )


def test_slice_bounds_apply_to_each_slice_and_under_support_fails() -> None:
    results = judge(
        _slices(), [Bound("retention", "min", 0.8)], gate="estimate", slice_metrics=["retention"], min_support=30
    )
    by_slice = {(r.slice, r.metric): r for r in results}
    assert by_slice[("big", "retention")].ok
    assert not by_slice[("tiny", "support")].ok
    assert by_slice[("tiny", "support")].describe() == (
        "support of slice 'tiny' = 3 < min 30 (gate: estimate); under-supported slice"
    )
    assert ("tiny", "retention") not in by_slice  # too few examples to judge, reported once as support


def test_under_supported_slices_do_not_fail_a_check_without_bounds() -> None:
    assert judge(_slices(), [], gate="estimate", slice_metrics=["retention"], min_support=30) == []


def test_an_inconclusive_verdict_estimates_the_examples_that_would_settle_it() -> None:
    # half width 0.02, 0.01 from the bound: the width must halve, which takes 4x the examples
    measurement = Measurement({"top1": Metric(0.96, (0.94, 0.98))}, n=400)
    (strict,) = judge(measurement, [Bound("top1", "min", 0.95)], gate="strict")
    assert (
        strict.note == "inconclusive: the interval straddles the bound; about 1,600 examples (now 400) would settle it"
    )
    (lenient,) = judge(
        Measurement({"top1": Metric(0.94, (0.93, 0.96))}, n=400), [Bound("top1", "min", 0.95)], gate="lenient"
    )
    # half width 0.015, 0.01 from the bound: (1.5)^2 x 400
    assert lenient.ok and lenient.note is not None and "about 900 examples" in lenient.note
    (clear,) = judge(
        Measurement({"top1": Metric(0.99, (0.98, 0.995))}, n=400), [Bound("top1", "min", 0.95)], gate="strict"
    )
    assert clear.ok and clear.note is None
