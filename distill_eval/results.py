"""Check results and ``results.json`` (schema 1; ``distill-eval docs results-schema``)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_eval._io import atomic_write
from distill_eval.checks.base import Metric, SliceMeasurement
from distill_eval.checks.judge import BoundResult

__all__ = [
    "SCHEMA",
    "CheckResult",
    "build_results",
    "deselected_names",
    "partial_note",
    "project_file",
    "verdict",
    "verdict_of",
    "write_json",
]

SCHEMA = 1
OUTCOMES = ("passed", "failed", "warned", "error")


@dataclass
class CheckResult:
    """The outcome of one check: what was measured, which bounds held, and why."""

    suite: str
    file: str
    gate: str  # the gate this check was judged under
    id: str
    kind: str
    outcome: str
    message: str = ""
    metrics: dict[str, Metric] = field(default_factory=dict)
    bounds: list[BoundResult] = field(default_factory=list)
    slices: list[SliceMeasurement] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    dataset: str = ""
    duration_s: float = 0.0
    suite_gate: str = ""  # the suite's gate (or --distill-gate); a check may override it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "outcome": self.outcome,
            "gate": self.gate,
            "message": self.message,
            "dataset": self.dataset,
            "models": self.models,
            "metrics": {name: m.to_json() for name, m in self.metrics.items()},
            "bounds": [b.to_json() for b in self.bounds],
            "duration_s": round(self.duration_s, 4),
        }
        if self.slices is not None:
            out["slices"] = [s.to_json() for s in self.slices]
        out.update(self.extras)
        return out


def verdict(results: Iterable[CheckResult]) -> str:
    """``"error"`` if any check errored, else ``"failed"`` if any failed, else ``"passed"``."""
    return verdict_of(r.outcome for r in results)


def verdict_of(outcomes: Iterable[str]) -> str:
    """The verdict of checks with these outcomes (see :func:`verdict`)."""
    outcomes = set(outcomes)
    if "error" in outcomes:
        return "error"
    if "failed" in outcomes:
        return "failed"
    return "passed"


#: packages whose versions can change a run's numbers (the installed ones are recorded)
PACKAGES = ("distill-eval", "torch", "numpy", "scipy", "scikit-learn", "jinja2", "pytest", "onnxruntime", "safetensors")


def environment() -> dict[str, Any]:
    """Versions and machine facts that explain a run's numbers."""
    import numpy

    from distill_eval import __version__
    from distill_eval.models import torch_version

    # A warm run (every output from the cache) never needs torch: its thread count and CUDA
    # are recorded only when the run imported it (to load a model), not imported for this.
    torch = sys.modules.get("torch")
    return {
        "distill_eval": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch": torch_version(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "cuda": (torch.version.cuda if torch.cuda.is_available() else None) if torch is not None else None,
        "numpy": numpy.__version__,
    }


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None when it is not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path) -> dict[str, Any] | None:
    """The commit checked out at ``root`` and whether tracked files differ from it; None outside git."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def build_results(
    results: Iterable[CheckResult],
    *,
    models: Mapping[str, Mapping[str, Any]],
    datasets: Mapping[str, Mapping[str, Any]],
    command: list[str] | None = None,
    root: Path | None = None,
    device: str | None = None,
    deselected: Iterable[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The results.json document: every suite with its checks, in run order.

    ``deselected`` lists the checks collected but not run (``-k``, ``-m``), each as
    ``{"suite", "file", "id", "kind"}``: a run with any is partial, and says so.

    ``root`` (the project under test) adds its git commit to the environment, and suite files
    are recorded relative to it;
    ``device`` the device the models ran on.
    """
    results = list(results)
    suites: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        file = project_file(r.file, root)
        suite = suites.setdefault(
            (file, r.suite), {"name": r.suite, "file": file, "gate": r.suite_gate or r.gate, "checks": []}
        )
        suite["checks"].append(r.to_json())
    counts = {o: sum(r.outcome == o for r in results) for o in OUTCOMES}
    return {
        "schema": SCHEMA,
        "verdict": verdict(results),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": counts,
        "command": command,
        "models": dict(models),
        "datasets": dict(datasets),
        "environment": {
            **environment(),
            "device": device,
            "git": git_state(root) if root is not None else None,
            "packages": package_versions(),
        },
        "suites": list(suites.values()),
        "deselected": [dict(d) for d in deselected],
    }


def deselected_names(doc: Mapping[str, Any]) -> list[str]:
    """The checks a results document lists as deselected, as ``suite::id``."""
    return [f"{d.get('suite')}::{d.get('id')}" for d in doc.get("deselected") or []]


def partial_note(doc: Mapping[str, Any]) -> str | None:
    """One sentence for a partial run (checks deselected), naming them; None for a complete run."""
    names = deselected_names(doc)
    if not names:
        return None
    return (
        f"partial run: {len(names)} check(s) deselected and not judged, so the verdict covers only the rest: "
        + ", ".join(names)
    )


def project_file(file: str | Path, root: Path | None) -> str:
    """A suite file as results.json records it: relative to the project root (POSIX) when inside it.

    So that results, and the baselines made from them, do not depend on where pytest was started.
    """
    path = Path(file)
    if root is not None and path.is_absolute() and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(file)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file); NaN is refused, never written."""
    atomic_write(path, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
