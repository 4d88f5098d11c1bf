"""Every quality check with bootstrap intervals on a large evaluation set, against bare numpy.

    python benchmarks/metrics.py                  # 1,000,000 examples x 100 classes, 1000 resamples
    python benchmarks/metrics.py --n 100000 --profile

Synthetic teacher and student logits (float32, the dtype models emit) and labels are held in
memory, exactly as the plugin's session holds them after a cached run; the four checks that read
model outputs -- ``calibration``, ``agreement``, ``slices`` (declared slices on a metadata column
and a quantile of the teacher's entropy) and ``copied_errors`` -- then compute their measurements
through the same code path ``pytest --distill`` uses, each with ``--resamples`` bootstrap
resamples. Side by side, in the same process, a bare numpy baseline computes the headline point
estimates alone (softmax, ECE, agreement, accuracy, KL): the least any tool must do.

Each variant runs in a fresh subprocess, so peak memory (``ru_maxrss``) is its own; the peak is
reported above the process's footprint before the logits existed, and compared with the size of
the two logit arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SUITE = """
[suite]
name = "bench"
bootstrap = {resamples}

[[check]]
kind = "calibration"
max = {{ student_ece = 0.05, ece_gap = 0.02 }}

[[check]]
kind = "agreement"
min = {{ top1 = 0.9, accuracy_retention = 0.95 }}
max = {{ kl = 0.2 }}

[[check]]
kind = "slices"
min_support = 30
slices = [
    {{ name = "uncertain-teacher", where = "teacher_entropy >= quantile(teacher_entropy, 0.8)" }},
    {{ name = "group-a", where = "meta.group == 'a'" }},
    {{ name = "first-classes", where = "label in [0, 1, 2, 3, 4]" }},
]
min = {{ retention = 0.9 }}

[[check]]
kind = "copied_errors"
max = {{ copied_share = 0.9 }}
"""


def rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Teacher and student logits (float32), labels and a metadata column, built in chunks."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    teacher = np.empty((n, classes), dtype=np.float32)
    student = np.empty((n, classes), dtype=np.float32)
    chunk = 65536
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        m = stop - start
        base = rng.standard_normal((m, classes), dtype=np.float32) * 1.5
        base[np.arange(m), y[start:stop]] += 4.0  # a teacher right about 85% of the time
        teacher[start:stop] = base
        base += rng.standard_normal((m, classes), dtype=np.float32)  # the student imitates, noisily
        student[start:stop] = base * 1.3  # and is overconfident
    group = np.where(rng.random(n) < 0.3, "a", "b")
    return teacher, student, y, group


def run_checks(n: int, classes: int, resamples: int, profile: bool) -> dict:
    import torch  # noqa: F401 - a pytest --distill run has imported it (to load models) before any check runs

    from distill_eval.checks import KINDS
    from distill_eval.checks.base import CheckContext
    from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig
    from distill_eval.data import Dataset
    from distill_eval.outputs import ModelOutputs
    from distill_eval.suite import load_suite

    before = current_rss_mib()
    teacher, student, y, group = make_logits(n, classes, seed=0)
    logits_mib = (teacher.nbytes + student.nbytes) / 2**20
    data = Dataset(
        "test", np.zeros((n, 1), np.float32), y, np.arange(n).astype(str), {"group": group}, "synthetic", "0"
    )
    outputs = {"teacher": ModelOutputs("teacher", "test", teacher), "student": ModelOutputs("student", "test", student)}
    project = ProjectConfig(
        rootdir=Path("."),
        models={"teacher": ModelSpec("teacher"), "student": ModelSpec("student")},
        datasets={"test": DatasetSpec("test")},
    )

    class Source:
        results = ()

        def dataset(self, name):
            return data

        def outputs(self, model, dataset):
            return outputs[model]

        def model(self, name):
            raise AssertionError("no model is loaded")

        @property
        def project(self):
            return project

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(SUITE.format(resamples=resamples))
        suite = load_suite(path, project)

    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    times, values = {}, {}
    start_all = time.perf_counter()
    for check in suite.checks:
        start = time.perf_counter()
        measurement = KINDS[check.kind].compute(CheckContext(suite, check, Source()), check.params)
        times[check.id] = time.perf_counter() - start
        values[check.id] = {k: (m.value, m.ci) for k, m in measurement.metrics.items()}
    total = time.perf_counter() - start_all
    if profile:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    return {
        "seconds": total,
        "per_check": times,
        "peak_mib": rss_mib() - before,
        "logits_mib": logits_mib,
        "values": values,
    }


def run_bare(n: int, classes: int) -> dict:
    before = current_rss_mib()
    teacher, student, y, _ = make_logits(n, classes, seed=0)
    logits_mib = (teacher.nbytes + student.nbytes) / 2**20
    start = time.perf_counter()

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lt, ls = log_softmax(teacher), log_softmax(student)
    pt, ps = np.exp(lt), np.exp(ls)
    t_pred, s_pred = pt.argmax(1), ps.argmax(1)
    conf = ps.max(1)
    hit = s_pred == y
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = np.abs(np.bincount(bins, weights=hit - conf, minlength=15)).sum() / n
    kl = (pt * (lt - ls)).sum(1).mean()
    out = {"ece": ece, "top1": (t_pred == s_pred).mean(), "accuracy": hit.mean(), "kl": kl}
    return {"seconds": time.perf_counter() - start, "peak_mib": rss_mib() - before, "logits_mib": logits_mib, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="examples (default: 1000000)")
    parser.add_argument("--classes", type=int, default=100, help="classes (default: 100)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the checks to stderr")
    parser.add_argument("--variant", choices=("checks", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # one variant, in its own process
        result = (
            run_checks(args.n, args.classes, args.resamples, args.profile)
            if args.variant == "checks"
            else run_bare(args.n, args.classes)
        )
        print(json.dumps(result, default=float))
        return

    rows = {}
    for variant in ("bare", "checks"):
        cmd = [sys.executable, __file__, "--variant", variant, "--n", str(args.n), "--classes", str(args.classes)]
        cmd += ["--resamples", str(args.resamples)] + (["--profile"] if args.profile else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if args.profile or done.returncode:
            sys.stderr.write(done.stderr)
        if done.returncode:
            sys.exit(f"the {variant} variant failed (exit status {done.returncode})")
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])

    bare, checks = rows["bare"], rows["checks"]
    logits = checks["logits_mib"]
    print(f"{args.n:,} examples x {args.classes} classes, {args.resamples} resamples")
    print(f"two logit arrays (float32) = {logits:,.0f} MiB")
    print(f"{'':44}{'seconds':>10}{'peak MiB':>10}{'x logits':>10}")
    print(
        f"{'bare numpy: point estimates only':44}{bare['seconds']:10.2f}"
        f"{bare['peak_mib']:10.0f}{bare['peak_mib'] / logits:10.2f}"
    )
    print(
        f"{'distill_eval: 4 checks, every interval':44}{checks['seconds']:10.2f}"
        f"{checks['peak_mib']:10.0f}{checks['peak_mib'] / logits:10.2f}"
    )
    for check, seconds in checks["per_check"].items():
        print(f"{'  ' + check:44}{seconds:10.2f}")
    print("targets: <= 10 s on 2 cores; peak memory <= 3x the two logit arrays")
    ece = checks["values"]["calibration"]["student_ece"]
    print(
        f"cross-check: student ECE {ece[0]:.5f} (bare: {bare['ece']:.5f}), top-1 agreement "
        f"{checks['values']['agreement']['top1'][0]:.5f} (bare: {bare['top1']:.5f})"
    )


if __name__ == "__main__":
    main()
