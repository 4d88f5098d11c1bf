"""The committed default weights: they load, meet their targets, and the trainer rebuilds them bit for bit."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from distill_eval.data import load_builtin
from distill_eval.train import builtin, load_train_config, zoo

WEIGHTS = Path(builtin.__file__).with_name("weights")
REPO_ROOT = Path(builtin.__file__).resolve().parents[2]


def _load(name: str) -> torch.nn.Module:
    factory = {"teacher": zoo.digits_teacher, "student": zoo.digits_student}[name]
    model = factory()
    model.load_state_dict(torch.load(WEIGHTS / f"digits_{name}.pt", weights_only=True))
    return model.eval()


def _ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width bins (lo, hi], written out independently of builtin.py."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = np.mean(predicted[in_bin] == labels[in_bin]) - np.mean(confidence[in_bin])
            total += in_bin.sum() / len(labels) * abs(gap)
    return float(total)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def test_probs() -> dict[str, np.ndarray]:
    test = load_builtin("sklearn:digits", split="test")
    x = torch.from_numpy(test.x)
    with torch.no_grad():
        probs = {name: torch.softmax(_load(name)(x), dim=1).double().numpy() for name in ("teacher", "student")}
    return {"y": test.y, **probs}


def test_weight_files_are_small_state_dicts() -> None:
    files = [WEIGHTS / builtin.TEACHER_FILE, WEIGHTS / builtin.STUDENT_FILE]
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for f in files:
        state = torch.load(f, weights_only=True)
        assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())


def test_models_accept_flat_and_image_inputs() -> None:
    x = torch.from_numpy(load_builtin("sklearn:digits", split="test").x[:5])
    for name in ("teacher", "student"):
        model = _load(name)
        with torch.no_grad():
            flat, image = model(x), model(x.reshape(-1, 8, 8))
        assert flat.shape == (5, 10)
        assert torch.equal(flat, image)


def test_teacher_meets_targets(test_probs: dict[str, np.ndarray]) -> None:
    y, probs = test_probs["y"], test_probs["teacher"]
    assert accuracy_score(y, probs.argmax(axis=1)) >= 0.97
    assert _ece(probs, y) < 0.05


def test_student_meets_targets(test_probs: dict[str, np.ndarray]) -> None:
    y, probs = test_probs["y"], test_probs["student"]
    assert accuracy_score(y, probs.argmax(axis=1)) >= 0.94
    assert accuracy_score(test_probs["teacher"].argmax(axis=1), probs.argmax(axis=1)) >= 0.94
    assert _ece(probs, y) < 0.05


def test_the_default_is_built_by_the_trainer_from_the_from_scratch_example() -> None:
    config = load_train_config(builtin.CONFIG)
    assert builtin.CONFIG.name == "digits_from_scratch.toml" and builtin.CONFIG.parent.name == "examples"
    # The teacher is trained there, and both factories are the ones the default project loads, unchanged.
    assert config.teacher_training is not None
    assert config.teacher.factory == "distill_eval.train.zoo:digits_teacher" and not config.teacher.kwargs
    assert config.student.factory == "distill_eval.train.zoo:digits_student" and not config.student.kwargs
    assert config.distill.device == "cpu"  # the same float operations wherever it is rebuilt


def test_the_builder_needs_a_config_that_trains_its_teacher(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train = true"):
        builtin.build_default(tmp_path, config=builtin.CONFIG.with_name("digits.toml"))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_rebuild_is_deterministic_and_matches_the_committed_models(tmp_path: Path) -> None:
    # The real command, in a fresh process, as the committed files were made.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "distill_eval.train.builtin", "--out"]
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        result = subprocess.run(
            [*command, str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        runs.append(out)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("teacher:") and "agreement" in lines[1]
    # The rebuilt models meet the same targets on the test split as the committed ones.
    teacher_accuracy = float(lines[0].split("test accuracy ")[1].split(",")[0])
    student_accuracy = float(lines[1].split("test accuracy ")[1].split(",")[0])
    agreement = float(lines[1].split("agreement with teacher ")[1].split(" ")[0])
    assert teacher_accuracy >= 0.97 and student_accuracy >= 0.94 and agreement >= 0.94
    # Same seed, same machine: bit-identical files.
    for name in (builtin.TEACHER_FILE, builtin.STUDENT_FILE):
        assert _sha256(runs[0] / name) == _sha256(runs[1] / name), name
    # Against the committed files, a different CPU may round differently, so compare behaviour.
    test = load_builtin("sklearn:digits", split="test")
    x = torch.from_numpy(test.x)
    for role in ("teacher", "student"):
        rebuilt = {"teacher": zoo.digits_teacher, "student": zoo.digits_student}[role]()
        rebuilt.load_state_dict(torch.load(runs[0] / f"digits_{role}.pt", weights_only=True))
        with torch.no_grad():
            same = (rebuilt.eval()(x).argmax(1) == _load(role)(x).argmax(1)).float().mean().item()
        assert same >= 0.99, role
