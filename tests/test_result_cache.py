"""Long data work: progress lines while it runs, and its results cached on disk by content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import planted
import pytest
from test_leakage import PYPROJECT  # a teacher and student that never load, two datasets

from distill_eval import DistillSession, load_project_config, load_suite
from distill_eval.checks import KINDS, CheckContext
from distill_eval.cli import main
from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig
from distill_eval.data import Dataset
from distill_eval.metrics import find_duplicates
from distill_eval.outputs import OutputCache
from distill_eval.progress import Progress

# -- progress lines -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_short_work_is_silent_and_long_work_says_how_far_at_most_every_5_s() -> None:
    clock, lines = Clock(), []
    with Progress(lines.append, "search", 1000, clock=clock) as p:
        clock.now += 4.9
        p.update(500)
    assert lines == []  # done within 5 s: not a word
    with Progress(lines.append, "search", 1000, clock=clock) as p:
        for step in range(1, 21):  # 20 updates, one per second
            clock.now += 1.0
            p.update(step * 50)
    assert lines == [
        "search: 250/1,000 examples (25%), 5 s so far, about 15 s left",
        "search: 500/1,000 examples (50%), 10 s so far, about 10 s left",
        "search: 750/1,000 examples (75%), 15 s so far, about 5 s left",
        "search: 1,000/1,000 examples (100%), 20 s so far",
        "search: done in 20 s",
    ]


def test_without_a_sink_progress_does_nothing() -> None:
    with Progress(None, "search", 10, every=0) as p:
        p.update(5)
    assert p.lines == 0


# -- leakage: cached by content ----------------------------------------------------------


class Source:
    """Datasets as a conftest.py hook gives them (no file, empty sha256), a cache and a log."""

    def __init__(self, cache: OutputCache, *datasets: Dataset):
        self.cache = cache
        self.datasets = {d.name: d for d in datasets}
        self.lines: list[str] = []

    def dataset(self, name: str) -> Dataset:
        return self.datasets[name]

    def log(self, message: str) -> None:
        self.lines.append(message)


def _data(name: str, x: np.ndarray) -> Dataset:
    ids = np.array([f"{name}-{i}" for i in range(len(x))])
    return Dataset(name=name, x=np.asarray(x, dtype=np.float32), y=None, ids=ids)  # sha256 "": content decides


PROJECT = ProjectConfig(
    rootdir=Path("."),
    models={"teacher": ModelSpec("teacher"), "student": ModelSpec("student")},
    datasets={"test": DatasetSpec("test"), "train": DatasetSpec("train")},
)


def _leakage(tmp_path: Path, source: Source, check: str):
    path = tmp_path / "leak.toml"
    path.write_text(f'[[check]]\nkind = "leakage"\ntrain = "train"\n{check}\n')
    suite = load_suite(path, PROJECT)
    return KINDS["leakage"].compute(CheckContext(suite, suite.checks[0], source), suite.checks[0].params)


def test_a_leakage_search_is_computed_once_and_recomputed_when_its_inputs_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 8))
    x = np.concatenate([rng.normal(size=(100, 8)), train[:7], train[7:12] + 1e-4])
    cache = OutputCache(tmp_path / "cache")
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return find_duplicates(*args, **kwargs)

    monkeypatch.setattr("distill_eval.checks.leakage.M.find_duplicates", counted)
    first_source = Source(cache, _data("test", x), _data("train", train))
    first = _leakage(tmp_path, first_source, "near = true")
    again_source = Source(cache, _data("test", x), _data("train", train))  # a new run: same content
    again = _leakage(tmp_path, again_source, "near = true")
    assert len(calls) == 1
    assert any("from cache" in line for line in again_source.lines)
    assert {k: m.to_json() for k, m in again.metrics.items()} == {k: m.to_json() for k, m in first.metrics.items()}
    assert again.extras == first.extras and first.metrics["near_duplicates"].value == 5
    # the same names, another input value: a different key (a name or file hash would miss it)
    changed = x.copy()
    changed[0, 0] += 1.0
    _leakage(tmp_path, Source(cache, _data("test", changed), _data("train", train)), "near = true")
    assert len(calls) == 2
    _leakage(tmp_path, Source(cache, _data("test", x), _data("train", train)), "near = true\nnear_distance = 0.5")
    assert len(calls) == 3
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "outputs").rglob("*.json")]
    assert sorted(s["kind"] for s in sidecars) == ["leakage"] * 3


# -- through pytest: progress lines, a second run from the cache, the listing's KIND ----------

SUITE = """
[suite]
name = "leaks"

[[check]]
kind = "leakage"
id = "near"
train = "train"
near = true
max = { near_duplicates = 100 }

[[check]]
kind = "leakage"
id = "other"
train = "train"
"""


def test_progress_lines_are_whole_lines_and_a_rerun_reads_the_cache(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, 6)).astype(np.float32)
    np.savez(pytester.path / "train.npz", x=train)
    np.savez(pytester.path / "test.npz", x=np.concatenate([rng.normal(size=(450, 6)), train[:50]]))
    pytester.makefile(".toml", pyproject=PYPROJECT)
    # every line of progress is written, and the search goes in blocks of 100 rows (pytester runs in this process)
    monkeypatch.setattr("distill_eval.progress.EVERY_S", 0.0)
    monkeypatch.setattr("distill_eval.metrics.leakage._QUERY_ROWS", 100)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "leaks.toml").write_text(SUITE)
    first = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(
        [
            "distill_eval: leakage 'near': near-duplicate search of 'test' in 'train': 100/450 examples (22%)*",
            "distill_eval: leakage 'near': near-duplicate search of 'test' in 'train': 450/450 examples (100%)*",
            "distill_eval: leakage 'near': near-duplicate search of 'test' in 'train': done in * s",
        ]
    )
    # whole lines: every progress line starts a line; none follows a test's dots
    assert all(line.startswith("distill_eval: ") for line in first.stdout.lines if "distill_eval: " in line)
    again = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["distill_eval: leakage 'near': duplicates of 500 examples among 2,000 from cache"])
    again.stdout.no_fnmatch_line("*near-duplicate search*")
    monkeypatch.chdir(pytester.path)
    capsys.readouterr()
    assert main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("STATUS"))
    assert header.split()[:4] == ["STATUS", "MODEL", "DATASET", "KIND"]
    listed = [line.split() for line in lines[lines.index(header) + 1 :]]
    assert sorted(row[3] for row in listed) == ["leakage", "leakage"]
    assert all(row[:3] == ["unknown", "-", "test"] for row in listed)
    # the training data changes: both entries are stale
    np.savez(pytester.path / "train.npz", x=train[:-1])
    capsys.readouterr()
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert out.count("dataset 'train' has changed") == 2


# -- slice discovery: cached by content -------------------------------------------------------


def test_slice_discovery_is_computed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted.write_project(tmp_path, student="broken_slice")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "suites" / "d.toml"
    path.write_text('[suite]\nbootstrap = 50\n[[check]]\nkind = "slices"\ndiscover = true\n')
    calls = []
    from distill_eval.checks import slices

    real = slices.discover

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(slices, "discover", counted)

    def run() -> dict:
        config = load_project_config(tmp_path)
        suite = load_suite(path, config)
        lines: list[str] = []
        session = DistillSession(config, log=lines.append)
        result = session.run_check(suite, suite.checks[0])
        return result.extras["discovered"], lines

    first, _ = run()
    again, lines = run()
    assert len(calls) == 1 and again == first and first  # the broken group is found, then read back
    assert any("slice discovery on 3,000 examples from cache" in line for line in lines)
    (entry,) = [
        json.loads(p.read_text())
        for p in (tmp_path / ".distill_cache" / "outputs").rglob("*.json")
        if json.loads(p.read_text()).get("kind") == "discovery"
    ]
    assert entry["dataset"] == "test" and entry["check"] == "slices"
    # another student: other hits, another key
    (tmp_path / "pyproject.toml").write_text(
        (tmp_path / "pyproject.toml").read_text().replace('"broken_slice.npy"', '"good.npy"', 1)
    )
    run()
    assert len(calls) == 2


def test_model_outputs_report_progress_after_each_batch() -> None:
    from distill_eval.outputs import compute_logits

    done: list[int] = []
    x = np.zeros((25, 3), dtype=np.float32)
    out = compute_logits(lambda b: np.ones((len(b), 2)), x, batch_size=10, model="m", dataset="d", progress=done.append)
    assert out.shape == (25, 2) and done == [10, 20, 25]
