"""`distill-eval predict`: cache entries the plugin reuses, computed in one process or sharded over two."""

from __future__ import annotations

import json
from pathlib import Path

import digits
import numpy as np
import pytest
from launch import torchrun

from distill_eval.cli import main
from distill_eval.config import load_project_config
from distill_eval.data import load_builtin
from distill_eval.errors import ConfigError
from distill_eval.predict import predict

WEIGHTS = digits.WEIGHTS
N = 301  # odd, and 10 batches of 32: the two ranks get 5 and 4 batches (160 and 141 rows)

PYPROJECT = digits.pyproject(batch_size=32)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch on one thread."""


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    """A project folder: pyproject.toml, 301 digits in test.npz, an agreement suite."""
    digits = load_builtin("sklearn:digits", split="test")
    np.savez(pytester.path / "test.npz", x=digits.x[:N], y=digits.y[:N])
    (pytester.path / "pyproject.toml").write_text(PYPROJECT)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "gate.toml").write_text('[[check]]\nkind = "agreement"\nmin = { top1 = 0.5 }\n')
    return pytester.path


def entries(project: Path) -> list[Path]:
    return sorted((project / ".distill_cache" / "outputs").rglob("*.npy"))


def test_predict_stores_the_entry_the_plugin_reads(project: Path, pytester: pytest.Pytester) -> None:
    config = load_project_config(project)
    lines: list[str] = []
    result = predict(config, "student", "test", log=lines.append)
    assert not result.from_cache and result.world_size == 1 and (result.n, result.n_classes) == (N, 10)
    assert entries(project) == [result.path] and lines[0].startswith(f"student on test: {N} examples in ")
    again = predict(config, "student", "test", log=lines.append)
    assert again.from_cache and again.key == result.key and lines[-1].startswith(f"student on test: {N} examples from")
    predict(config, "teacher", "test", log=None)

    run = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    run.assert_outcomes(passed=1)
    for name in ("teacher", "student"):
        run.stdout.fnmatch_lines([f"distill_eval: {name} on test: {N} examples from cache"])
    assert "loaded model" not in run.stdout.str()
    models = json.loads((project / "reports" / "results.json").read_text())["models"]
    assert models["student"]["loaded"] is False and models["teacher"]["loaded"] is False


def test_unknown_names_and_a_missing_config_are_one_sentence(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_project_config(project)
    with pytest.raises(
        ConfigError, match=r"model 'stduent' is not defined in .*models\] .*\(did you mean 'student'\?\)"
    ):
        predict(config, "stduent", "test")
    assert (
        main(["predict", "--model", "student", "--dataset", "tset", "--config", str(project / "pyproject.toml")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "distill-eval predict: dataset 'tset' is not defined in [tool.distill_eval.datasets]" in err
    assert "(did you mean 'test'?)" in err
    assert main(["predict", "--model", "student", "--dataset", "test", "--config", str(project / "nope.toml")]) == 2
    assert "nope.toml: file not found" in capsys.readouterr().err
    assert main(["predict", "--model", "student", "--dataset", "test", "--batch-size", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in ("--model", "--dataset", "--config", "--batch-size", "torchrun"))


@pytest.mark.slow
def test_predict_under_torchrun_writes_the_single_process_entry(
    project: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pyproject = str(project / "pyproject.toml")
    assert main(["predict", "--model", "student", "--dataset", "test", "--config", pyproject]) == 0
    assert "(cpu)" in capsys.readouterr().out
    [entry] = entries(project)
    single = entry.read_bytes()
    entry.unlink()
    entry.with_suffix(".json").unlink()

    done = torchrun(project, "-m", "distill_eval", "predict", "--model", "student", "--dataset", "test")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"student on test: {N} examples in ") == 1 and "2 processes" in done.stdout
    assert entries(project) == [entry]  # the same key, written once, by rank 0
    assert entry.read_bytes() == single  # every batch the one a single process computes: the same bytes
    assert json.loads(entry.with_suffix(".json").read_text())["world_size"] == 2

    assert main(["predict", "--model", "teacher", "--dataset", "test", "-q"]) == 0
    run = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    run.assert_outcomes(passed=1)
    run.stdout.fnmatch_lines([f"*student on test: {N} examples from cache*"])
    assert "loaded model" not in run.stdout.str()
