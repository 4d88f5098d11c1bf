"""Model outputs: batched inference, output validation, derived views and the on-disk cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distill_eval.session
from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig
from distill_eval.errors import ModelError
from distill_eval.models import wrap_model
from distill_eval.outputs import ModelOutputs, compute_logits
from distill_eval.session import DistillSession
from distill_eval.train.zoo import digits_student

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _rowwise(batch: np.ndarray) -> np.ndarray:
    """A 'model' whose output row depends only on its input row, exactly (no float rounding)."""
    return np.stack([batch[:, 0], -2 * batch[:, 1], batch[:, 0] + 0.5], axis=1)


# -- compute_logits -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 50), batch_size=st.integers(1, 60))
def test_batching_never_changes_which_row_goes_where(n: int, batch_size: int) -> None:
    x = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    sizes: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return _rowwise(batch)

    logits = compute_logits(predict, x, batch_size=batch_size, model="m", dataset="d")
    np.testing.assert_array_equal(logits, _rowwise(x))
    assert sum(sizes) == n and max(sizes) <= batch_size and len(sizes) == -(-n // batch_size)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_torch_model_logits_do_not_depend_on_batch_size(saved_models, batch_size: int) -> None:
    model = wrap_model("student", saved_models.module)
    logits = compute_logits(model.predict_logits, saved_models.x, batch_size=batch_size, model="student", dataset="d")
    assert logits.shape == (37, 10)
    np.testing.assert_allclose(logits, saved_models.reference(), **TOL)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_rejected_with_counts(bad: float) -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        out = _rowwise(batch)
        out[np.isin(batch[:, 0], [6.0, 40.0])] = bad  # rows 3 and 20: 3 values each
        out[batch[:, 0] == 60.0, 1] = bad  # row 30: one value
        return out

    x = np.arange(74, dtype=np.float32).reshape(37, 2)
    with pytest.raises(ModelError) as info:
        compute_logits(predict, x, batch_size=8, model="student", dataset="test")
    message = str(info.value)
    assert "model 'student'" in message and "dataset 'test'" in message
    assert "7 non-finite logits" in message and "3 of 37 examples" in message
    assert "[3, 20, 30]" in message


def test_one_dimensional_output_is_rejected() -> None:
    with pytest.raises(ModelError, match=r"model 'student' returned outputs of shape \(7,\).*expected logits of shape"):
        compute_logits(lambda b: b[:, 0], np.zeros((10, 2), np.float32), batch_size=7, model="student", dataset="d")


def test_output_with_the_wrong_number_of_rows_is_rejected() -> None:
    with pytest.raises(ModelError, match=r"model 'student' returned outputs of shape \(6, 3\) for an input batch"):
        compute_logits(
            lambda b: _rowwise(b)[:-1], np.zeros((10, 2), np.float32), batch_size=7, model="student", dataset="d"
        )


def test_class_count_changing_between_batches_is_rejected() -> None:
    calls = iter(range(100))

    def predict(batch: np.ndarray) -> np.ndarray:
        width = 3 if next(calls) == 0 else 4
        return np.zeros((len(batch), width), np.float32)

    with pytest.raises(ModelError, match=r"model 'student' returned 4 classes.*dataset 'test'.*3 classes"):
        compute_logits(predict, np.zeros((25, 2), np.float32), batch_size=10, model="student", dataset="test")


def test_a_failing_model_is_a_model_error_naming_model_and_dataset() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(ModelError, match=r"model 'student' failed on dataset 'test'.*RuntimeError: mat1") as info:
        compute_logits(predict, np.zeros((3, 2), np.float32), batch_size=2, model="student", dataset="test")
    assert isinstance(info.value.__cause__, RuntimeError)


# -- ModelOutputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [
        np.random.default_rng(0).normal(scale=3.0, size=(50, 7)).astype(np.float32),
        np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0], [-5.0, 2.0, 2.0]], np.float32),  # overflow and ties
    ],
)
def test_probs_preds_and_confidence_match_scipy_and_numpy(logits: np.ndarray) -> None:
    out = ModelOutputs("student", "test", logits)
    expected = scipy.special.softmax(logits.astype(np.float64), axis=1)
    assert out.n == logits.shape[0] and out.n_classes == logits.shape[1]
    # computed in float64, stored in the logits' precision (half the memory of a float64 copy)
    assert out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs, expected, rtol=1e-6, atol=1e-30)
    np.testing.assert_array_equal(out.preds, np.argmax(logits, axis=1))  # ties: first index, as numpy
    assert out.confidence.dtype == np.float64
    np.testing.assert_allclose(out.confidence, expected.max(axis=1), rtol=1e-7)
    wide = ModelOutputs("student", "test", logits.astype(np.float64))
    assert wide.probs.dtype == np.float64
    np.testing.assert_allclose(wide.probs, expected, rtol=1e-12, atol=1e-300)


# -- the cache, through a real session ----------------------------------------------


FACTORY = "distill_eval.train.zoo:digits_student"


def _module(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return digits_student(hidden=(8,)).eval()


def _logits(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


class Project:
    """A tmp project: weights and data files, a config over them, and a counter of model loads."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.weights = root / "student.pt"
        self.data = root / "test.npz"
        self.x = np.random.default_rng(0).random((45, 64), dtype=np.float32)
        self.loads = 0
        self.set_weights(seed=0)
        self.set_data(self.x)
        real_load_model = distill_eval.session.load_model

        def counting_load_model(*args, **kwargs):
            self.loads += 1
            return real_load_model(*args, **kwargs)

        monkeypatch.setattr(distill_eval.session, "load_model", counting_load_model)

    def set_weights(self, seed: int) -> None:
        self.module = _module(seed)
        torch.save(self.module.state_dict(), self.weights)

    def set_data(self, x: np.ndarray) -> None:
        self.x = x
        np.savez(self.data, x=x, y=np.arange(len(x)) % 10)

    def expected(self) -> np.ndarray:
        return _logits(self.module, self.x)

    def session(self, *, use_cache: bool = True, weights: bool = True) -> DistillSession:
        spec = ModelSpec(
            name="student", factory=FACTORY, kwargs={"hidden": [8]}, weights=self.weights if weights else None
        )
        config = ProjectConfig(
            rootdir=self.root,
            cache_dir=self.root / "c",
            device="cpu",
            batch_size=16,
            models={"student": spec},
            datasets={"test": DatasetSpec(name="test", path=self.data)},
        )
        return DistillSession(config, use_cache=use_cache)

    def entries(self) -> list[Path]:
        return sorted((self.root / "c").rglob("*.npy"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    return Project(tmp_path, monkeypatch)


def test_second_session_reads_the_cache_without_loading_the_model(project: Project) -> None:
    first = project.session().outputs("student", "test")
    assert not first.cached and project.loads == 1
    np.testing.assert_allclose(first.logits, project.expected(), **TOL)
    assert len(project.entries()) == 1

    second = project.session().outputs("student", "test")
    assert second.cached and project.loads == 1
    np.testing.assert_array_equal(second.logits, first.logits)


def test_one_session_computes_each_pair_once(project: Project) -> None:
    session = project.session(use_cache=False)
    assert session.outputs("student", "test") is session.outputs("student", "test")
    assert project.loads == 1


def test_changed_weights_invalidate_the_cache(project: Project) -> None:
    old = project.session().outputs("student", "test").logits
    project.set_weights(seed=1)
    new = project.session().outputs("student", "test")
    assert not new.cached and project.loads == 2
    np.testing.assert_allclose(new.logits, project.expected(), **TOL)
    assert not np.allclose(new.logits, old)


def test_changed_dataset_file_invalidates_the_cache(project: Project) -> None:
    project.session().outputs("student", "test")
    project.set_data(project.x[::-1].copy())  # same examples, another order: other logits per row
    new = project.session().outputs("student", "test")
    assert not new.cached and project.loads == 2
    np.testing.assert_allclose(new.logits, project.expected(), **TOL)


def test_factory_without_weights_is_keyed_by_its_parameters(project: Project) -> None:
    torch.manual_seed(5)
    first = project.session(weights=False).outputs("student", "test")
    torch.manual_seed(5)
    assert project.session(weights=False).outputs("student", "test").cached  # same parameters
    torch.manual_seed(6)
    other = project.session(weights=False).outputs("student", "test")
    assert not other.cached
    torch.manual_seed(6)
    np.testing.assert_allclose(other.logits, _logits(digits_student(hidden=(8,)).eval(), project.x), **TOL)
    assert not np.allclose(other.logits, first.logits)


def test_no_cache_recomputes(project: Project) -> None:
    project.session().outputs("student", "test")
    out = project.session(use_cache=False).outputs("student", "test")
    assert not out.cached and project.loads == 2
    np.testing.assert_allclose(out.logits, project.expected(), **TOL)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) - 17] ^= 0xFF  # inside the float data, past the header: still a valid .npy
    path.write_bytes(bytes(raw))


def _break_sidecar(path: Path) -> None:
    path.with_suffix(".json").write_text("{")


@pytest.mark.parametrize("corrupt", [_truncate, _flip_a_byte, _break_sidecar])
def test_corrupted_entry_is_detected_recomputed_and_reported(project: Project, corrupt) -> None:
    project.session().outputs("student", "test")
    (entry,) = project.entries()
    corrupt(entry)

    session = project.session()
    out = session.outputs("student", "test")
    assert not out.cached and project.loads == 2
    np.testing.assert_allclose(out.logits, project.expected(), **TOL)
    assert len(session.warnings) == 1 and "corrupted" in session.warnings[0] and entry.name in session.warnings[0]

    healed = project.session()  # the entry was rewritten
    assert healed.outputs("student", "test").cached and not healed.warnings


def test_leftover_tmp_files_are_never_read_as_entries(project: Project) -> None:
    project.session().outputs("student", "test")
    (entry,) = project.entries()
    sidecar = entry.with_suffix(".json")
    # What a crash inside atomic_write leaves behind: plausible, checksummed, but wrong logits.
    decoy = np.zeros_like(np.load(entry))
    for stray in (entry.parent / f".{entry.name}.k3j2.tmp", entry.parent / f"{entry.name}.tmp"):
        with open(stray, "wb") as f:
            np.save(f, decoy)
    info = json.loads(sidecar.read_text())
    info["sha256"] = hashlib.sha256((entry.parent / f"{entry.name}.tmp").read_bytes()).hexdigest()
    for stray in (entry.parent / f".{sidecar.name}.k3j2.tmp", entry.parent / f"{sidecar.name}.tmp"):
        stray.write_text(json.dumps(info))

    with_entry = project.session().outputs("student", "test")
    assert with_entry.cached
    np.testing.assert_allclose(with_entry.logits, project.expected(), **TOL)

    entry.unlink()
    sidecar.unlink()
    session = project.session()
    out = session.outputs("student", "test")
    assert not out.cached and not session.warnings
    np.testing.assert_allclose(out.logits, project.expected(), **TOL)


def test_cache_writes_leave_no_temporary_files(project: Project) -> None:
    project.session().outputs("student", "test")
    files = sorted(p.relative_to(project.root / "c").as_posix() for p in (project.root / "c").rglob("*") if p.is_file())
    # the entry's data and sidecar, and the lock that makes them change together
    assert len(files) == 3 and files[0] == "outputs/.lock" and not any(name.endswith(".tmp") for name in files)


def test_a_factory_keyword_that_changes_outputs_changes_the_cache_key(tmp_path: Path) -> None:
    """Same parameters, different kwargs: the outputs must not be shared through the cache."""
    from distill_eval.models import parameter_fingerprint, wrap_model

    module = torch.nn.Linear(3, 2)
    model = wrap_model("m", module)
    one = ModelSpec("m", factory="pkg:build", kwargs={"temperature": 1})
    two = ModelSpec("m", factory="pkg:build", kwargs={"temperature": 2})
    assert parameter_fingerprint(model, one) != parameter_fingerprint(model, two)
    assert parameter_fingerprint(model, one) == parameter_fingerprint(wrap_model("m", module), one)


def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path) -> None:
    from distill_eval._io import atomic_write

    atomic_write(tmp_path / "written.bin", b"data")
    (tmp_path / "opened.bin").write_bytes(b"data")
    assert (tmp_path / "written.bin").stat().st_mode & 0o777 == (tmp_path / "opened.bin").stat().st_mode & 0o777
