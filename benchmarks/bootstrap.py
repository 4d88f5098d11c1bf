"""Time the paired bootstrap engine against a bare numpy loop, in the same run.

Usage::

    python benchmarks/bootstrap.py [--n 100000] [--classes 100] [--resamples 1000]

Two models' logits over ``n`` examples and ``classes`` classes are reduced once to
per-example values (correctness of each model, top-1 agreement, KL(teacher || student));
then five statistics (teacher and student accuracy, their gap, agreement, mean KL) are
bootstrapped with ``resamples`` paired resamples by

* ``bootstrap_intervals`` (BCa, which adds a 100-block jackknife, and percentile), and
* a baseline: ``idx = rng.integers(0, n, n)`` and ``values[idx].mean()`` per resample and
  value, plus the percentile quantiles.

Optionally (``--naive-resamples``) it also times a few resamples of the approach the engine
replaces, recomputing every metric from the resampled logits, and extrapolates. Each timing
is the best of ``--repeat`` runs. Not a test: run it by hand, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from distill_eval.metrics import BootstrapInterval, bootstrap_intervals, kl_divergence, kl_per_example, weighted_sum
from distill_eval.metrics.sums import WeightedSums, bootstrap_sums


def make_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A teacher that is right about 80% of the time and a noisier student of it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    teacher = rng.normal(0.0, 1.0, size=(n, classes))
    teacher[np.arange(n), labels] += 3.0
    student = teacher + rng.normal(0.0, 0.7, size=(n, classes))
    return teacher, student, labels


def per_example_values(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    teacher_pred, student_pred = teacher.argmax(axis=1), student.argmax(axis=1)
    return {
        "teacher_correct": (teacher_pred == labels).astype(np.float64),
        "student_correct": (student_pred == labels).astype(np.float64),
        "agree": (teacher_pred == student_pred).astype(np.float64),
        "kl": kl_per_example(teacher, student),
    }


def statistics(values: dict[str, np.ndarray]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def mean(v: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda w: weighted_sum(w, v) / weighted_sum(w)

    gap = values["teacher_correct"] - values["student_correct"]
    return {
        "teacher_accuracy": mean(values["teacher_correct"]),
        "student_accuracy": mean(values["student_correct"]),
        "accuracy_gap": mean(gap),
        "top1": mean(values["agree"]),
        "kl": mean(values["kl"]),
    }


def baseline(
    values: dict[str, np.ndarray], n_resamples: int, seed: int, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """The bare loop: one index draw per resample, shared by the five statistics (paired)."""
    rng = np.random.default_rng(seed)
    n = values["kl"].size
    out = np.empty((n_resamples, 5))
    for r in range(n_resamples):
        idx = rng.integers(0, n, n)
        teacher, student = values["teacher_correct"][idx].mean(), values["student_correct"][idx].mean()
        out[r] = teacher, student, teacher - student, values["agree"][idx].mean(), values["kl"][idx].mean()
    alpha = 1 - confidence
    return dict(
        zip(
            ["teacher_accuracy", "student_accuracy", "accuracy_gap", "top1", "kl"],
            np.quantile(out, [alpha / 2, 1 - alpha / 2], axis=0).T,
            strict=True,
        )
    )


def naive(teacher: np.ndarray, student: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int) -> None:
    """What the engine replaces: every metric recomputed from the resampled logits."""
    rng = np.random.default_rng(seed)
    n = labels.size
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        t, s, y = teacher[idx], student[idx], labels[idx]
        t_pred, s_pred = t.argmax(axis=1), s.argmax(axis=1)
        _ = (t_pred == y).mean(), (s_pred == y).mean(), (t_pred == s_pred).mean(), kl_divergence(t, s)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="examples (default: 100000)")
    parser.add_argument("--classes", type=int, default=100, help="classes (default: 100)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default: 3)")
    parser.add_argument(
        "--naive-resamples", type=int, default=5, help="resamples of the naive approach to time, 0 to skip (default: 5)"
    )
    args = parser.parse_args(argv)

    data = make_logits(args.n, args.classes, seed=0)
    values = per_example_values(*data)
    stats = statistics(values)

    def run_engine(method: str) -> dict[str, BootstrapInterval]:
        rng = np.random.default_rng(1)
        return bootstrap_intervals(stats, args.n, n_resamples=args.resamples, rng=rng, method=method)

    def run_streaming() -> dict[str, BootstrapInterval]:
        # what the checks use: the same five statistics as functions of weighted sums
        sums = WeightedSums(args.n)
        total = sums.column()
        columns = {name: sums.column(v) for name, v in values.items()}
        gap = sums.column(values["teacher_correct"] - values["student_correct"])
        mean = {
            "teacher_accuracy": columns["teacher_correct"],
            "student_accuracy": columns["student_correct"],
            "accuracy_gap": gap,
            "top1": columns["agree"],
            "kl": columns["kl"],
        }
        streaming = {name: (lambda s, h=h: s[h] / s[total]) for name, h in mean.items()}
        return bootstrap_sums(streaming, sums, n_resamples=args.resamples, rng=np.random.default_rng(1))

    rows = [
        ("per-example values from logits (once)", best_of(args.repeat, lambda: per_example_values(*data))),
        ("baseline: numpy loop, values[idx].mean()", best_of(args.repeat, lambda: baseline(values, args.resamples, 1))),
        ("bootstrap_intervals, method='bca'", best_of(args.repeat, lambda: run_engine("bca"))),
        ("bootstrap_intervals, method='percentile'", best_of(args.repeat, lambda: run_engine("percentile"))),
        ("bootstrap_sums (streaming, Poisson), 'bca'", best_of(args.repeat, run_streaming)),
    ]
    if args.naive_resamples > 0:
        factor = args.resamples / args.naive_resamples
        seconds = best_of(1, lambda: naive(*data, args.naive_resamples, seed=1))
        rows.append(
            (f"naive: metrics from resampled logits ({args.naive_resamples} timed, x{factor:g})", seconds * factor)
        )

    machine = platform.processor() or platform.machine()
    print(f"{datetime.date.today()}  {machine}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(f"{args.resamples} paired resamples, {args.n} examples x {args.classes} classes, 5 statistics")
    print(f"best of {args.repeat} runs\n")
    width = max(len(name) for name, _ in rows)
    base = rows[1][1]
    print(f"{'':{width}}  {'seconds':>8}  {'x baseline':>10}")
    for name, seconds in rows:
        print(f"{name:{width}}  {seconds:8.2f}  {seconds / base:10.2f}")

    print("\n95% intervals: bootstrap_intervals (BCa) | baseline (percentile)")
    intervals = run_engine("bca")
    reference = baseline(values, args.resamples, 1)
    for name, interval in intervals.items():
        ours = f"{interval.estimate:.4f} [{interval.low:.4f}, {interval.high:.4f}] {interval.method}"
        print(f"  {name:17} {ours} | [{reference[name][0]:.4f}, {reference[name][1]:.4f}]")


if __name__ == "__main__":
    main()
