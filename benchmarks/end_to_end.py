"""Wall time of `pytest --distill`, cold and warm, against a bare Python script, in the same run.

    python benchmarks/end_to_end.py            # defaults: --n 20000 --teacher-width 3072 --threads 1 --repeat 3
    python benchmarks/end_to_end.py --help

Two comparisons (issue 7, item 4):

1. cold `pytest --distill` (empty output cache) vs a bare script that loads the same two
   TorchScript models, runs them batched (same batch size) over the same data and computes the
   same top-1 agreement and ECE (15 bins) with numpy: target <= 1.10x;
2. the same `pytest --distill` run warm (model outputs cached on disk) vs cold, with a teacher
   whose forward pass dominates: target <= 0.20x.

Every run is a fresh subprocess timed from launch to exit, so each includes the interpreter's
start-up and every import (pytest, the plugin, torch). The three variants alternate `--repeat`
times and each keeps its best, so a busy moment of a shared machine does not land on one side
only. Every run gets the same thread count (`--threads`, one by default: with two threads on
two shared cores, one competing process stalls each of torch's parallel regions, and the
teacher's forward pass varied from 4 to 24 s between runs). Then one more cold and one more
warm run are instrumented (a probe plugin that times each phase exclusive of the others,
charges every import to its package and takes the cyclic garbage collector's passes out of the
phase they interrupt) to show where the pytest run's time goes; the bare script times its own
phases.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# -- the scripts run in subprocesses ------------------------------------------------------

#: what a user would write by hand: the least that produces the same two numbers
BARE_SCRIPT = """\
import time

T0 = time.time()
import json
import sys

import numpy as np
import torch

T_IMPORTS = time.time()
batch_size, bins = int(sys.argv[1]), int(sys.argv[2])
with np.load("data/test.npz") as d:
    x, y = d["x"], d["y"]
T_DATA = time.time()
teacher = torch.jit.load("models/teacher.pt").eval()
student = torch.jit.load("models/student.pt").eval()
T_LOAD = time.time()


def logits(model):
    out = None
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = model(torch.from_numpy(x[start : start + batch_size])).numpy()
            if out is None:
                out = np.empty((len(x), batch.shape[1]), dtype=np.float32)
            out[start : start + len(batch)] = batch
    return out


t_logits, s_logits = logits(teacher), logits(student)
T_FORWARD = time.time()


def ece(z):
    z = z.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf = p.max(axis=1)
    hit = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bins (lo, hi]
    return float(np.abs(np.bincount(index, weights=hit - conf, minlength=bins)).sum() / len(y))


top1 = float((t_logits.argmax(axis=1) == s_logits.argmax(axis=1)).mean())
student_ece, teacher_ece = ece(s_logits), ece(t_logits)
T_METRICS = time.time()
print(json.dumps({
    "top1": top1, "student_ece": student_ece, "teacher_ece": teacher_ece,
    "stamps": {"start": T0, "imports": T_IMPORTS, "data": T_DATA, "load": T_LOAD,
               "forward": T_FORWARD, "metrics": T_METRICS},
}))
"""

#: a pytest plugin (`-p _e2e_probe`) that times distill_eval's phases, exclusive of one another
PROBE_PLUGIN = '''\
import atexit
import functools
import gc
import importlib._bootstrap as _bootstrap
import json
import os
import sys
import time
from collections import defaultdict

T_LOADED = time.time()
_stack = []  # [category, start, time spent in nested timed calls]
_buckets = defaultdict(float)
_missing = []  # functions that moved: their time stays in the enclosing phase


def _timed(category, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _stack.append([category, time.perf_counter(), 0.0])
        try:
            return fn(*args, **kwargs)
        finally:
            cat, start, nested = _stack.pop()
            elapsed = time.perf_counter() - start
            _buckets[cat] += elapsed - nested
            if _stack:
                _stack[-1][2] += elapsed

    wrapper.__e2e_probe__ = True
    return wrapper


def _timed_import(fn):
    """Imports, each charged to its top-level package (``import:scipy``), exclusive of nested ones."""
    timed = {}

    @functools.wraps(fn)
    def wrapper(name, *args, **kwargs):
        package = name.partition(".")[0]
        if package not in timed:
            timed[package] = _timed("import:" + package, fn)
        return timed[package](name, *args, **kwargs)

    return wrapper


# every import from here on, wherever it happens (torch inside a loader, jinja2 in the report)
_bootstrap._find_and_load = _timed_import(_bootstrap._find_and_load)
_gc_start = []


def _gc(phase, info):
    """The cyclic garbage collector's passes, taken out of whatever phase they interrupt."""
    if phase == "start":
        _gc_start.append(time.perf_counter())
    elif _gc_start:
        elapsed = time.perf_counter() - _gc_start.pop()
        _buckets["garbage collection"] += elapsed
        if _stack:
            _stack[-1][2] += elapsed


gc.callbacks.append(_gc)


def _patch(owner, name, category):
    fn = getattr(owner, name, None)
    if fn is None:
        _missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
    elif not getattr(fn, "__e2e_probe__", False):
        setattr(owner, name, _timed(category, fn))


def pytest_configure(config):
    if not config.getoption("distill", False):
        return
    import distill_eval._hashing as hashing
    import distill_eval.checks.intervals as intervals
    import distill_eval.data as data
    import distill_eval.metrics as metrics
    import distill_eval.models as models
    import distill_eval.outputs as outputs
    import distill_eval.report as report
    import distill_eval.session as session

    for module in (hashing, data, models, outputs, session):
        _patch(module, "sha256_file", "hashing")
    _patch(session, "load_dataset", "dataset loading")
    _patch(session, "load_model", "model loading")
    _patch(session, "compute_logits", "forward passes")
    _patch(outputs.OutputCache, "load", "output cache read/write")
    _patch(outputs.OutputCache, "store", "output cache read/write")
    _patch(session.DistillSession, "run_check", "checks: point estimates, judging")
    _patch(intervals.Intervals, "compute", "checks: bootstrap intervals")
    _patch(metrics, "consistency_resampling", "checks: bootstrap intervals")
    _patch(report, "write_reports", "report writing")


@atexit.register
def _dump():
    stamps = {"probe": T_LOADED, "exit": time.time()}
    with open(os.environ["E2E_PROBE_OUT"], "w") as f:
        json.dump({"stamps": stamps, "buckets": dict(_buckets), "missing": _missing}, f)
'''

# -- the project under test ------------------------------------------------------------------


def _build_models(folder: Path, *, features: int, classes: int, width: int, depth: int, student_width: int):
    """A large teacher and a small student as TorchScript files.

    Both share a linear part that the labels come from, so the student mostly agrees with the
    teacher; the teacher adds a wide MLP (its forward pass is the cost), the student a small one.
    """
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear, hidden: int, layers: int):
            super().__init__()
            self.linear = linear
            dims, mods = features, []
            for _ in range(layers):
                mods += [torch.nn.Linear(dims, hidden), torch.nn.ReLU()]
                dims = hidden
            self.mlp = torch.nn.Sequential(*mods, torch.nn.Linear(dims, classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + self.mlp(x)

    linear = torch.nn.Linear(features, classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, 2.0 / features**0.5)
        linear.bias.zero_()
    student_linear = torch.nn.Linear(features, classes)
    with torch.no_grad():
        student_linear.weight.copy_(linear.weight + torch.randn_like(linear.weight) * 0.2 / features**0.5)
        student_linear.bias.zero_()
    teacher = Net(linear, width, depth).eval()
    student = Net(student_linear, student_width, 1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation warning
        torch.jit.save(torch.jit.script(teacher), str(folder / "models" / "teacher.pt"))
        torch.jit.save(torch.jit.script(student), str(folder / "models" / "student.pt"))
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    return linear.weight.detach().numpy().copy(), teacher_params, student_params


def build_project(folder: Path, args: argparse.Namespace) -> dict[str, int]:
    """Data, models, pyproject.toml and a two-check suite in ``folder``."""
    for sub in ("data", "models", "suites"):
        (folder / sub).mkdir()
    weight, teacher_params, student_params = _build_models(
        folder,
        features=args.features,
        classes=args.classes,
        width=args.teacher_width,
        depth=args.teacher_depth,
        student_width=args.student_width,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.features)).astype(np.float32)
    y = np.argmax(x @ weight.T + rng.gumbel(size=(args.n, args.classes)), axis=1)  # labels ~ softmax(linear)
    np.savez(folder / "data" / "test.npz", x=x, y=y)
    (folder / "pyproject.toml").write_text(
        f"""\
[tool.distill_eval]
suites = "suites"
reports = "reports"
cache_dir = ".distill_cache"
device = "cpu"
batch_size = {args.batch_size}

[tool.distill_eval.models.teacher]
path = "models/teacher.pt"

[tool.distill_eval.models.student]
path = "models/student.pt"

[tool.distill_eval.datasets.test]
path = "data/test.npz"
"""
    )
    (folder / "suites" / "bench.toml").write_text(
        f"""\
[suite]
name = "bench"
bootstrap = {args.bootstrap}

[[check]]
kind = "agreement"
min = {{ top1 = 0.5 }}
max = {{ kl = 1.0 }}

[[check]]
kind = "calibration"
bins = {args.bins}
max = {{ student_ece = 0.2, ece_gap = 0.2 }}
"""
    )
    (folder / "bare.py").write_text(BARE_SCRIPT)
    (folder / "probe").mkdir()
    (folder / "probe" / "_e2e_probe.py").write_text(PROBE_PLUGIN)
    return {"teacher_params": teacher_params, "student_params": student_params}


# -- running ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One subprocess: wall seconds from launch to exit, its CPU seconds (user + system), what it printed."""

    wall: float
    cpu: float
    launch: float  # time.time() just before the launch
    done: subprocess.CompletedProcess


def _env(args: argparse.Namespace, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GITHUB_STEP_SUMMARY", None)  # no appending to a CI summary from a benchmark
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.update(extra or {})
    return env


def _run(cmd: list[str], folder: Path, env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launch, start = time.time(), time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, launch, done)


def _pytest_cmd(args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "pytest", "--distill", "-q", *shlex.split(args.pytest_args)]


def _fresh(folder: Path, *, cold: bool) -> None:
    if cold:
        shutil.rmtree(folder / ".distill_cache", ignore_errors=True)
    shutil.rmtree(folder / "reports", ignore_errors=True)


def run_pytest(folder: Path, args: argparse.Namespace, *, cold: bool) -> tuple[Run, dict]:
    """One `pytest --distill` run (cold: with the output cache emptied first) and its results.json."""
    _fresh(folder, cold=cold)
    run = _run(_pytest_cmd(args), folder, _env(args))
    results = folder / "reports" / "results.json"
    if run.done.returncode not in (0, 1) or not results.is_file():
        sys.exit(f"pytest --distill exited with {run.done.returncode}:\n{run.done.stdout}\n{run.done.stderr}")
    return run, json.loads(results.read_text())


def run_bare(folder: Path, args: argparse.Namespace) -> tuple[Run, dict]:
    """One run of the bare script and what it printed (its numbers and the time stamps of its phases)."""
    run = _run([sys.executable, "bare.py", str(args.batch_size), str(args.bins)], folder, _env(args))
    if run.done.returncode != 0:
        sys.exit(f"the bare script exited with {run.done.returncode}:\n{run.done.stderr}")
    return run, json.loads(run.done.stdout)


PHASES = (
    "dataset loading",
    "hashing",
    "model loading",
    "forward passes",
    "output cache read/write",
    "checks: bootstrap intervals",
    "checks: point estimates, judging",
    "report writing",
    "garbage collection",
)


def probe_pytest(folder: Path, args: argparse.Namespace, *, cold: bool) -> dict:
    """One instrumented run: exclusive seconds per phase, and import seconds per package.

    (`python -X importtime` would miss the imports made inside a check: pytest captures
    file descriptor 2 while an item runs, and torch is first imported there.)
    """
    _fresh(folder, cold=cold)
    out = folder / "probe.json"
    path = os.pathsep.join(filter(None, [str(folder / "probe"), os.environ.get("PYTHONPATH")]))
    env = _env(args, {"E2E_PROBE_OUT": str(out), "PYTHONPATH": path})
    run = _run([*_pytest_cmd(args), "-p", "_e2e_probe"], folder, env)
    if run.done.returncode not in (0, 1):
        sys.exit(f"instrumented pytest exited with {run.done.returncode}:\n{run.done.stdout}\n{run.done.stderr}")
    probe = json.loads(out.read_text())
    stamps, buckets = probe["stamps"], probe["buckets"]
    imports = {k.partition(":")[2]: buckets.pop(k) for k in list(buckets) if k.startswith("import:")}
    rows = {
        "start-up (interpreter; pytest: to the first plugin)": stamps["probe"] - run.launch,
        "imports after that": sum(imports.values()),
        **{name: buckets.pop(name, 0.0) for name in PHASES},
        "interpreter exit": max(run.wall - (stamps["exit"] - run.launch), 0.0),
    }
    rows["pytest and the rest (collection, hooks, output)"] = run.wall - sum(rows.values())
    top = sorted(((name, s) for name, s in imports.items() if s >= 0.03), key=lambda item: -item[1])
    return {"wall": run.wall, "rows": rows, "imports": top, "missing": probe["missing"]}


def bare_rows(run: Run, stamps: dict[str, float]) -> dict[str, float]:
    """The bare script's phases, under the names of the pytest run's rows."""
    return {
        "start-up (interpreter; pytest: to the first plugin)": stamps["start"] - run.launch,
        "imports after that": stamps["imports"] - stamps["start"],
        "dataset loading": stamps["data"] - stamps["imports"],
        "model loading": stamps["load"] - stamps["data"],
        "forward passes": stamps["forward"] - stamps["load"],
        "checks: point estimates, judging": stamps["metrics"] - stamps["forward"],
        "interpreter exit": run.wall - (stamps["metrics"] - run.launch),
    }


def _metric(results: dict, kind: str, name: str) -> float:
    checks = [c for s in results["suites"] for c in s["checks"] if c["kind"] == kind]
    return checks[0]["metrics"][name]["value"]


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--n", type=int, default=20_000, help="evaluation examples (default: 20000)")
    add("--features", type=int, default=256, help="input features (default: 256)")
    add("--classes", type=int, default=10, help="classes (default: 10)")
    add("--teacher-width", type=int, default=3072, help="width of the teacher's hidden layers (default: 3072)")
    add("--teacher-depth", type=int, default=3, help="hidden layers of the teacher (default: 3)")
    add("--student-width", type=int, default=64, help="width of the student's one hidden layer (default: 64)")
    add("--batch-size", type=int, default=256, help="inference batch size, both sides (default: 256)")
    add("--bins", type=int, default=15, help="ECE bins, both sides (default: 15)")
    add("--bootstrap", type=int, default=1000, help="the suite's bootstrap resamples (default: 1000)")
    add("--repeat", type=int, default=3, help="alternating rounds, each variant keeps its best (default: 3)")
    add("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run; 0: torch's own choice (default: 1)")
    add("--pytest-args", default="", help="extra pytest arguments, e.g. '-p no:hypothesispytest' (default: none)")
    add("--no-profile", action="store_true", help="skip the instrumented runs (default: run them)")
    add("--keep", metavar="DIR", help="build the project in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        if args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        sizes = build_project(folder, args)
        report(folder, args, sizes)


def report(folder: Path, args: argparse.Namespace, sizes: dict[str, int]) -> None:
    runs: dict[str, list[Run]] = {"bare": [], "cold": [], "warm": []}
    for i in range(args.repeat):
        # cold, bare and warm alternate, so a busy moment of the machine hits every side alike
        run, cold_results = run_pytest(folder, args, cold=True)
        runs["cold"].append(run)
        run, bare_out = run_bare(folder, args)
        runs["bare"].append(run)
        run, warm_results = run_pytest(folder, args, cold=False)
        runs["warm"].append(run)
        print(
            f"round {i + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1].wall:.2f} s" for k, v in runs.items()),
            file=sys.stderr,
            flush=True,
        )
    best = {k: min(r.wall for r in v) for k, v in runs.items()}
    median = {k: statistics.median(r.wall for r in v) for k, v in runs.items()}
    cpu = {k: min(r.cpu for r in v) for k, v in runs.items()}
    rounds = {  # the ratio within each round, whose runs ran minutes apart at most
        "cold": statistics.median(c.wall / b.wall for c, b in zip(runs["cold"], runs["bare"], strict=True)),
        "warm": statistics.median(w.wall / c.wall for w, c in zip(runs["warm"], runs["cold"], strict=True)),
    }
    teacher_mb = (folder / "models" / "teacher.pt").stat().st_size / 2**20
    threads = args.threads or "torch's default"
    print(
        f"{args.n} examples x {args.features} features, {args.classes} classes, batch {args.batch_size}, "
        f"threads: {threads}; teacher {sizes['teacher_params'] / 1e6:.1f}M params ({teacher_mb:.0f} MB), "
        f"student {sizes['student_params'] / 1e3:.0f}k; suite: agreement + calibration, {args.bootstrap} resamples"
    )
    print(
        f"{args.repeat} alternating rounds; wall: launch to exit; ratio: of the bests; rounds: median per-round ratio"
    )
    print(f"{'':40s} {'best s':>7s} {'median':>7s} {'cpu s':>7s} {'ratio':>7s} {'rounds':>7s}")
    print(f"{'bare script (torch + numpy)':40s} {best['bare']:7.2f} {median['bare']:7.2f} {cpu['bare']:7.2f}")
    for key, label, base, target in (
        ("cold", "pytest --distill, cold (empty cache)", "bare", "x bare, target <= 1.10"),
        ("warm", "pytest --distill, warm (outputs cached)", "cold", "x cold, target <= 0.20"),
    ):
        print(
            f"{label:40s} {best[key]:7.2f} {median[key]:7.2f} {cpu[key]:7.2f} {best[key] / best[base]:7.2f} "
            f"{rounds[key]:7.2f}   {target}"
        )
    for name, kind in (("top1", "agreement"), ("student_ece", "calibration"), ("teacher_ece", "calibration")):
        ours = [_metric(r, kind, name) for r in (cold_results, warm_results)]
        print(f"  same numbers? {name}: bare {bare_out[name]:.6f}, cold {ours[0]:.6f}, warm {ours[1]:.6f}")
    if args.no_profile:
        return

    cold, warm = probe_pytest(folder, args, cold=True), probe_pytest(folder, args, cold=False)
    run, out = run_bare(folder, args)
    bare = bare_rows(run, out["stamps"])
    print()
    print("where the time goes: one more run of each, instrumented (exclusive seconds)")
    print(f"{'':52s} {'cold':>7s} {'warm':>7s} {'bare':>7s}")
    for name in cold["rows"]:
        b = f"{bare[name]:7.2f}" if name in bare else f"{'-':>7s}"
        print(f"{name:52s} {cold['rows'][name]:7.2f} {warm['rows'][name]:7.2f} {b}")
    print(f"{'total':52s} {cold['wall']:7.2f} {warm['wall']:7.2f} {run.wall:7.2f}")
    for label, probe in (("cold", cold), ("warm", warm)):
        print(f"imports after the first plugin, {label}, by package (s, >= 0.03): ", end="")
        print(", ".join(f"{name} {s:.2f}" for name, s in probe["imports"]))
    if cold["missing"]:
        print(f"not found, so not timed apart (their time is in the enclosing phase): {', '.join(cold['missing'])}")


if __name__ == "__main__":
    main()
