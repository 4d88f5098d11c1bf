"""Processes sharing one output cache: concurrent runs agree, writers never mix, a killed writer is never trusted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import digits
import numpy as np
import pytest

from distill_eval._io import LockTimeout, file_lock
from distill_eval.cli import main
from distill_eval.data import load_builtin
from distill_eval.outputs import OutputCache

WEIGHTS = digits.WEIGHTS
N = 540

PYPROJECT = digits.pyproject(batch_size=64)

SUITE = """
[suite]
bootstrap = 200

[[check]]
kind = "agreement"
min = { top1 = 0.5 }

[[check]]
kind = "calibration"
max = { student_ece = 0.5 }
"""

# Loaded by the runs of the killed-writer test: with DIE_WRITING set, the first cache write stops halfway
# through its bytes and the process kills itself with SIGKILL, as `kill -9` would: no cleanup runs.
DYING_CONFTEST = """
import io
import os
import signal

import numpy as np

_save = np.save


def _dying_save(file, array, **kwargs):
    if not os.environ.get("DIE_WRITING") or not hasattr(file, "write"):
        return _save(file, array, **kwargs)
    buffer = io.BytesIO()
    _save(buffer, array, **kwargs)
    raw = buffer.getvalue()
    file.write(raw[: len(raw) // 2])  # more than a write buffer: these bytes reach the temporary file
    os.kill(os.getpid(), signal.SIGKILL)


np.save = _dying_save
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("GITHUB_STEP_SUMMARY", None)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: a teacher, a student, 540 digits, two checks."""
    digits = load_builtin("sklearn:digits", split="test")
    np.savez(tmp_path / "test.npz", x=digits.x[:N], y=digits.y[:N])
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "gate.toml").write_text(SUITE)
    return tmp_path


def start_gate(project: Path, reports: str, **env: str) -> subprocess.Popen[str]:
    """`pytest --distill` in its own process, writing its reports into `reports`."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--distill", "--distill-reports", reports]
    return subprocess.Popen(
        command, cwd=project, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = process.communicate(timeout=240)
    return process.returncode, out


def metrics(project: Path, reports: str) -> list[tuple[str, dict]]:
    doc = json.loads((project / reports / "results.json").read_text())
    return [(check["id"], check["metrics"]) for suite in doc["suites"] for check in suite["checks"]]


@pytest.mark.slow
def test_two_runs_at_once_agree_and_leave_one_entry_per_pair(project: Path) -> None:
    runs = [start_gate(project, f"reports-{i}") for i in range(2)]
    for run in runs:
        code, out = finish(run)
        assert code == 0, out[-3000:]
        assert "2 passed" in out and "corrupted" not in out
    first, second = metrics(project, "reports-0"), metrics(project, "reports-1")
    assert [check for check, _ in first] == ["agreement", "calibration"] and first == second

    scan = OutputCache(project / ".distill_cache").scan()
    assert all(entry.state == "ok" for entry in scan.entries)  # no temporary file, nothing torn
    assert Counter((e.model, e.dataset) for e in scan.entries) == {("teacher", "test"): 1, ("student", "test"): 1}

    # a third run reads both and agrees
    code, out = finish(start_gate(project, "reports-2"))
    assert code == 0 and out.count(f"on test: {N} examples from cache") == 2, out[-3000:]
    assert metrics(project, "reports-2") == first


WRITER = """
import sys
import numpy as np
from distill_eval.outputs import OutputCache

folder, key, writer, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cache = OutputCache(folder)
logits = np.full((100_000, 10), writer, dtype=np.float32)  # 4 MB: each write takes a while
for _ in range(rounds):
    cache.store(key, logits, {"model": "m", "dataset": "d", "writer": writer})
"""

READER = """
import json
import sys
from pathlib import Path
from distill_eval.outputs import OutputCache

folder, key, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
cache = OutputCache(folder)
reads, problems = 0, []
while not stop.exists() or reads == 0:
    logits, info, warning = cache.load(key)
    if warning:
        problems.append(warning)
    elif logits is not None:
        reads += 1
        if not (logits == info["writer"]).all():
            problems.append(f"the sidecar of writer {info['writer']} came with other data")
print(json.dumps({"reads": reads, "problems": problems[:3], "n_problems": len(problems)}))
"""


@pytest.mark.slow
def test_writers_and_readers_of_one_key_never_mix(tmp_path: Path) -> None:
    """Three processes rewrite one entry with different logits while a fourth reads it: every read is whole."""
    key = "ab" * 32
    stop = tmp_path / "stop"
    run = [sys.executable, "-c"]
    reader = subprocess.Popen([*run, READER, str(tmp_path), key, str(stop)], env=ENV, stdout=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([*run, WRITER, str(tmp_path), key, str(writer), "15"], env=ENV) for writer in (1, 2, 3)]
    assert all(w.wait(timeout=240) == 0 for w in writers)
    stop.touch()
    out, _ = reader.communicate(timeout=240)
    assert reader.returncode == 0
    seen = json.loads(out)
    assert seen["reads"] > 0 and seen["n_problems"] == 0, seen

    [entry] = OutputCache(tmp_path).scan().entries
    assert entry.state == "ok" and entry.info["writer"] in (1, 2, 3)


@pytest.mark.slow
def test_a_run_killed_mid_write_leaves_nothing_that_is_trusted(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "conftest.py").write_text(DYING_CONFTEST)
    code, out = finish(start_gate(project, "reports-good"))
    assert code == 0, out[-3000:]
    good = metrics(project, "reports-good")
    outputs = project / ".distill_cache" / "outputs"
    teacher = next(
        p.with_suffix(".npy") for p in outputs.rglob("*.json") if json.loads(p.read_text())["model"] == "teacher"
    )
    teacher.write_bytes(teacher.read_bytes()[:-100])  # a torn final file, as a non-atomic writer leaves

    # the teacher's entry is unusable, so this run recomputes it, and is killed halfway through writing it
    code, out = finish(start_gate(project, "reports-killed", DIE_WRITING="1"))
    assert code == -signal.SIGKILL, out[-3000:]
    [temporary] = [p for p in outputs.rglob("*.tmp")]
    assert temporary.name.startswith(f".{teacher.name}.") and temporary.stat().st_size > 0

    code, out = finish(start_gate(project, "reports-after"))
    assert code == 0, out[-3000:]
    assert f"cache entry {teacher} is corrupted" in out and "recomputing" in out
    assert f"teacher on test: {N} examples in " in out and f"student on test: {N} examples from cache" in out
    assert metrics(project, "reports-after") == good

    states = Counter(e.state for e in OutputCache(project / ".distill_cache").scan().entries)
    assert states == {"ok": 2, "orphan": 1}  # the half-written file stays unread until pruned
    monkeypatch.chdir(project)
    assert main(["cache", "--prune"]) == 0
    removed = capsys.readouterr().out.splitlines()
    assert len(removed) == 2 and removed[0].startswith("removed  orphan") and "an unfinished write by pid" in removed[0]
    assert not temporary.exists() and not list(outputs.rglob("*.tmp"))


LOCKER = """
import sys, time
from distill_eval._io import file_lock

with file_lock(sys.argv[1], shared=sys.argv[2] == "shared") as held:
    print(held, flush=True)
    time.sleep(float(sys.argv[3]))
"""


@pytest.mark.parametrize("other", ["shared", "exclusive"])
def test_the_cache_lock_excludes_writers_across_processes(tmp_path: Path, other: str) -> None:
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(lock), other, "30"], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "True\n"
        with (
            pytest.raises(LockTimeout, match=r"stayed locked by another process for 0\.2 s"),
            file_lock(lock, timeout=0.2),
        ):
            pass
        if other == "shared":  # readers share
            with file_lock(lock, shared=True, timeout=0.2) as held:
                assert held
        else:
            with pytest.raises(LockTimeout), file_lock(lock, shared=True, timeout=0.2):
                pass
    finally:
        holder.kill()  # killed, as `kill -9` would: the lock goes with the process
        holder.communicate()
    with file_lock(lock, timeout=5) as held:
        assert held and lock.exists()


def test_the_first_write_of_a_new_cache_is_locked_too(tmp_path: Path) -> None:
    OutputCache(tmp_path / "new").store("cd" * 32, np.zeros((3, 2), dtype=np.float32), {"model": "m"})
    assert (tmp_path / "new" / "outputs" / ".lock").is_file()
