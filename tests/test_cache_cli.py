"""`distill-eval cache`: list the output cache, tell current from stale entries, prune, clear, cap its size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import digits
import numpy as np
import pytest
import torch

from distill_eval.cli import _parse_size, main
from distill_eval.data import load_builtin
from distill_eval.outputs import CACHE_FORMAT, OutputCache, format_size

WEIGHTS = digits.WEIGHTS
N = 120

PYPROJECT = (
    digits.pyproject(batch_size=32, student_weights="student.pt")
    + """
# no files: its outputs are keyed by its parameters, which `distill-eval cache` never loads
[tool.distill_eval.models.fresh]
factory = "distill_eval.train.zoo:digits_student"
"""
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch on one thread."""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the working directory): a teacher, a student whose weights may change, 120 digits."""
    data = load_builtin("sklearn:digits", split="test")
    np.savez(pytester.path / "test.npz", x=data.x[:N], y=data.y[:N])
    shutil.copy(WEIGHTS / "digits_student.pt", pytester.path / "student.pt")
    (pytester.path / "pyproject.toml").write_text(PYPROJECT)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "gate.toml").write_text('[[check]]\nkind = "agreement"\nmin = { top1 = 0.5 }\n')
    monkeypatch.chdir(pytester.path)
    return pytester.path


def gate(pytester: pytest.Pytester) -> pytest.RunResult:
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=1)
    return result


def cache(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """Run `distill-eval cache ARGS`; its output lines (it must succeed)."""
    capsys.readouterr()  # what a pytester run printed before
    assert main(["cache", *args]) == 0
    return capsys.readouterr().out.splitlines()


def rows(lines: list[str]) -> dict[tuple[str, str], list[str]]:
    """The listing's table: (model, dataset) -> statuses, one per entry."""
    header = next(i for i, line in enumerate(lines) if line.startswith("STATUS"))
    out: dict[tuple[str, str], list[str]] = {}
    for line in lines[header + 1 :]:
        if line.startswith("`distill-eval"):
            break
        status, model, dataset = line.split()[:3]
        out.setdefault((model, dataset), []).append(status)
    return out


def change_student(project: Path) -> None:
    weights = torch.load(project / "student.pt", weights_only=True)
    name = next(iter(weights))
    weights[name] = weights[name] * 1.01
    torch.save(weights, project / "student.pt")


def entry_files(project: Path, model: str) -> list[Path]:
    """The .npy files of `model`'s entries."""
    out = []
    for sidecar in sorted((project / ".distill_cache" / "outputs").rglob("*.json")):
        if json.loads(sidecar.read_text()).get("model") == model:
            out.append(sidecar.with_suffix(".npy"))
    return out


def cache_files(project: Path) -> list[Path]:
    return sorted(p for p in (project / ".distill_cache").rglob("*") if p.is_file())


def test_no_cache_is_not_an_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cache(capsys) == ["no cache at .distill_cache"]
    assert cache(capsys, "--prune") == ["no cache at .distill_cache"]
    assert cache(capsys, "--clear", "--cache-dir", "other") == ["no cache at other"]
    # absolute when outside the working directory
    assert cache(capsys, "--cache-dir", "/nonexistent/cache") == ["no cache at /nonexistent/cache"]


def test_listing_tells_current_from_stale_and_sums_sizes(
    project: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    gate(pytester)
    lines = cache(capsys)
    files = cache_files(project)
    total = sum(os.path.getsize(p) for p in files)
    assert lines[0] == f"cache .distill_cache: {format_size(total)} in 2 entries (2 current)"
    assert rows(lines) == {("student", "test"): ["current"], ("teacher", "test"): ["current"]}
    table = "\n".join(lines)
    assert f"{N}x10" in table and "float32" in table and "--prune" not in table
    for npy in entry_files(project, "teacher"):
        size = os.path.getsize(npy) + os.path.getsize(npy.with_suffix(".json"))
        assert format_size(size) in next(line for line in lines if line.startswith("current  teacher"))
    scan = OutputCache(project / ".distill_cache").scan()
    assert scan.size == total and all(e.state == "ok" for e in scan.entries)

    change_student(project)
    lines = cache(capsys)
    assert rows(lines) == {("student", "test"): ["stale"], ("teacher", "test"): ["current"]}
    assert "model 'student' has changed" in next(line for line in lines if line.startswith("stale"))
    assert lines[-1].startswith("`distill-eval cache --prune` would remove 1 stale entry, freeing ")

    gate(pytester)  # the new student's entry joins the old one
    assert rows(cache(capsys)) == {("student", "test"): ["current", "stale"], ("teacher", "test"): ["current"]}


def test_prune_removes_stale_corrupt_and_orphans_and_keeps_current(
    project: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    gate(pytester)
    change_student(project)
    gate(pytester)
    [teacher] = entry_files(project, "teacher")
    current_student = _current_student(project)
    [stale] = [p for p in entry_files(project, "student") if p != current_student]
    current_student.write_bytes(current_student.read_bytes()[:-40])  # truncated: corrupt
    orphan = teacher.parent / f".{teacher.name}.4194303.k3j2x9qa.tmp"  # what a run killed mid-write leaves
    orphan.write_bytes(teacher.read_bytes()[:100])
    doomed = [stale, stale.with_suffix(".json"), current_student, current_student.with_suffix(".json"), orphan]
    expected_freed = sum(os.path.getsize(p) for p in doomed)
    teacher_before = (teacher.stat().st_mtime_ns, teacher.with_suffix(".json").read_text())

    listing = cache(capsys)
    assert rows(listing)[("student", "test")] == ["stale", "corrupt"]
    assert any(line.startswith("orphan") and "4194303" in line for line in listing)
    lines = cache(capsys, "--prune")
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["removed", "stale"],
        ["removed", "corrupt"],
        ["removed", "orphan"],
    ]
    assert (
        lines[-1]
        == f"freed {format_size(expected_freed)}; 1 entry ({format_size(_size(teacher))}) left in .distill_cache"
    )
    assert not any(p.exists() for p in doomed)
    assert rows(cache(capsys)) == {("teacher", "test"): ["current"]}
    assert cache(capsys, "--prune")[-1].startswith("nothing to remove; 1 entry")

    result = gate(pytester)  # the teacher's entry is served, untouched; the student is recomputed
    result.stdout.fnmatch_lines([f"distill_eval: teacher on test: {N} examples from cache"])
    result.stdout.fnmatch_lines([f"distill_eval: student on test: {N} examples in * s (cpu)"])
    assert (teacher.stat().st_mtime_ns, teacher.with_suffix(".json").read_text()) == teacher_before
    assert rows(cache(capsys)) == {("student", "test"): ["current"], ("teacher", "test"): ["current"]}


def _current_student(project: Path) -> Path:
    """The student entry whose fingerprint is that of student.pt now."""
    from distill_eval.config import load_project_config
    from distill_eval.models import model_fingerprint

    fingerprint = model_fingerprint(load_project_config(project).models["student"])
    return next(
        p
        for p in entry_files(project, "student")
        if json.loads(p.with_suffix(".json").read_text())["fingerprint"] == fingerprint
    )


def _size(npy: Path) -> int:
    return os.path.getsize(npy) + os.path.getsize(npy.with_suffix(".json"))


def test_unknown_and_outdated_entries(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model without files can't be keyed without loading it: unknown, kept; another cache format: stale."""
    store = OutputCache(project / ".distill_cache")
    logits = np.zeros((N, 10), dtype=np.float32)
    store.store("a" * 64, logits, {"model": "fresh", "dataset": "test"})
    store.store("b" * 64, logits, {"model": "gone", "dataset": "test"})
    store.store("c" * 64, logits, {"model": "teacher", "dataset": "test"})
    sidecar = project / ".distill_cache" / "outputs" / "cc" / f"{'c' * 64}.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "cache_format": CACHE_FORMAT + 1}))

    lines = cache(capsys)
    assert rows(lines) == {("fresh", "test"): ["unknown"], ("gone", "test"): ["stale"], ("teacher", "test"): ["stale"]}
    note = {line.split()[1]: line for line in lines if line.split()[0] in ("unknown", "stale")}
    assert "model 'fresh' has no files to hash" in note["fresh"]
    assert "no model 'gone' in the config" in note["gone"]
    assert f"cache format {CACHE_FORMAT + 1}; this version reads {CACHE_FORMAT}" in note["teacher"]

    cache(capsys, "--prune")
    assert rows(cache(capsys)) == {("fresh", "test"): ["unknown"]}


def test_clear_removes_everything(project: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    gate(pytester)
    total = sum(os.path.getsize(p) for p in cache_files(project))
    assert cache(capsys, "--clear") == [f"removed 2 entries from .distill_cache; freed {format_size(total)}"]
    assert [p.name for p in cache_files(project)] == [".lock"]  # the lock file stays: another run may hold it
    assert cache(capsys) == ["cache .distill_cache: empty"]
    result = gate(pytester)
    result.stdout.fnmatch_lines([f"distill_eval: teacher on test: {N} examples in * s (cpu)"])
    result.stdout.fnmatch_lines(["output cache: 2 entries, * kB in .distill_cache/ (distill-eval cache lists them)"])


def test_max_size_evicts_the_least_recently_used(
    project: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    gate(pytester)
    [teacher], [student] = entry_files(project, "teacher"), entry_files(project, "student")
    week_ago = time.time() - 7 * 86400
    os.utime(teacher.with_suffix(".json"), (week_ago, week_ago))  # last read a week ago
    assert "7 d ago" in next(line for line in cache(capsys) if line.startswith("current  teacher"))

    teacher_size = format_size(_size(teacher))
    lines = cache(capsys, "--max-size", str(_size(student) + 10))
    assert lines[0].split()[:6] == ["removed", "current", "teacher", "test", *teacher_size.split()]
    assert "over --max-size: least recently used (7 d ago)" in lines[0]
    assert not teacher.exists() and student.exists()
    assert cache(capsys, "--max-size", "1GB")[-1].startswith("nothing to remove; 1 entry")


@pytest.mark.parametrize(
    ("text", "size"),
    [("100", 100), ("2GB", 2 * 10**9), ("2g", 2 * 10**9), ("500 MB", 5 * 10**8), ("1.5GiB", 3 * 2**29), ("1k", 1000)],
)
def test_sizes(text: str, size: int) -> None:
    assert _parse_size(text) == size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-size", "2x"], "argument --max-size: expected a size such as 500MB, 2GB or 1.5GiB, got '2x'"),
        (["--max-size", "GiB"], "argument --max-size: expected a size"),
        (["--clear", "--prune"], "argument --prune: not allowed with argument --clear"),
        (["--clear", "--max-size", "1GB"], "argument --max-size: not allowed with argument --clear"),
        (["--purge"], "unrecognized arguments: --purge"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: distill-eval") and f": error: {message}" in err


def test_a_missing_or_broken_config_is_one_sentence(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "--config", "nope.toml"]) == 2
    assert capsys.readouterr().err == "distill-eval cache: nope.toml: file not found\n"
    (project / "pyproject.toml").write_text("[tool.distill_eval]\ncache_dri = 'x'\n")
    assert main(["cache"]) == 2
    assert "unknown key 'cache_dri' (did you mean 'cache_dir'?)" in capsys.readouterr().err


def test_help_documents_the_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--prune", "--clear", "--max-size", "--cache-dir", "--config", "current", "stale", "orphan"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "cache" in capsys.readouterr().out


def test_a_closed_pipe_ends_the_listing_quietly(project: Path) -> None:
    """`distill-eval cache | head -1`: no traceback when the reader stops reading."""
    cache = project / ".distill_cache" / "outputs" / "ab"
    cache.mkdir(parents=True)
    for i in range(2000):  # enough lines to fill the pipe
        (cache / f"other-{i}.bin").write_bytes(b"x")
    run = subprocess.run(
        f"{sys.executable} -m distill_eval cache | head -1", shell=True, cwd=project, capture_output=True, text=True
    )
    assert run.stdout.startswith("cache ") and "Traceback" not in run.stderr, run.stderr


@pytest.mark.filterwarnings("default::distill_eval.errors.DistillWarning")
def test_our_warnings_print_as_one_line(
    project: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DistillWarning raised while the listing reads the datasets is a sentence, not Python's source dump."""
    gate(pytester)
    data = load_builtin("sklearn:digits", split="test")
    header = ",".join([f"f{i}" for i in range(64)] + ["target"])
    body = "\n".join(",".join(map(str, [*row, label])) for row, label in zip(data.x[:5], data.y[:5], strict=True))
    (project / "target.csv").write_text(f"{header}\n{body}\n")
    with (project / "pyproject.toml").open("a") as f:
        f.write('\n[tool.distill_eval.datasets.csv]\npath = "target.csv"\n')
    capsys.readouterr()
    assert main(["cache"]) == 0
    err = capsys.readouterr().err.splitlines()
    (line,) = [e for e in err if "target" in e]
    assert line.startswith("distill-eval: warning: dataset 'csv': ")
    assert "label_column" in line
    assert not any(".py:" in e for e in err)  # no file:line, no source line
