"""The reference trainer: outputs, determinism, resume, offline mode, filtering, the control, the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import digits
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_eval._hashing import sha256_file
from distill_eval.cli import main
from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig
from distill_eval.data import load_builtin, load_dataset
from distill_eval.errors import ConfigError, ModelError
from distill_eval.models import load_model, torchscript_deprecation_ignored
from distill_eval.outputs import OutputCache
from distill_eval.session import DistillSession, output_cache_key
from distill_eval.train import (
    TrainCallback,
    TrainConfig,
    distillation_loss,
    kd_loss,
    load_train_config,
    train,
    zoo,
)
from distill_eval.train.config import parse_train_config

WEIGHTS = digits.WEIGHTS
EXAMPLE = Path(zoo.__file__).with_name("examples") / "digits.toml"
RECORD_KEYS = {"epoch", "train_loss", "val_accuracy", "val_agreement"}

# A student with dropout: its masks come from the global RNG, which a resume must restore too.
STUDENTS_MODULE = """
from torch import nn

def dropout_mlp(hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 10))
"""


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch on one thread."""


def digits_teacher() -> nn.Module:
    model = zoo.digits_teacher()
    model.load_state_dict(torch.load(WEIGHTS / "digits_teacher.pt", weights_only=True))
    return model.eval()


def make_config(tmp_path: Path, *, out: str = "run", augment: dict | None = None, **distill: Any) -> TrainConfig:
    """A tiny run on sklearn:digits: the committed teacher, a 64-8-10 student, 2 epochs."""
    document: dict[str, Any] = {
        "data": {
            "train": {"source": "sklearn:digits", "split": "train"},
            "val": {"source": "sklearn:digits", "split": "test"},
        },
        "teacher": {"factory": "distill_eval.train.zoo:digits_teacher", "weights": str(WEIGHTS / "digits_teacher.pt")},
        "student": {"factory": "distill_eval.train.zoo:digits_student", "kwargs": {"hidden": [8]}},
        "distill": {"epochs": 2, "batch_size": 128, "lr": 0.01, "device": "cpu", "cache_dir": "cache", **distill},
        "output": {"dir": out},
    }
    if augment is not None:
        document["augment"] = augment
    return parse_train_config(document, file=tmp_path / "train.toml", base=tmp_path)


def final_state(out: Path, phase: str = "student") -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["phases"][phase]["model"]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Recorder(TrainCallback):
    def __init__(self) -> None:
        self.batches: list[tuple[str, int, torch.Tensor, torch.Tensor | None]] = []
        self.epochs: list[tuple[str, dict]] = []
        self.phases: list[str] = []

    def on_phase_start(self, phase: str) -> None:
        self.phases.append(phase)

    def on_batch(self, phase, epoch, rows, teacher_logits, loss) -> None:
        self.batches.append((phase, epoch, rows.clone(), None if teacher_logits is None else teacher_logits.clone()))

    def on_epoch_end(self, phase, record) -> None:
        self.epochs.append((phase, dict(record)))


# -- outputs -------------------------------------------------------------------------


def test_tiny_run_writes_loadable_students_a_manifest_and_a_checkpoint(tmp_path: Path) -> None:
    config = make_config(tmp_path, control=True)
    lines: list[str] = []
    result = train(config, log=lines.append)
    out = tmp_path / "run"
    assert result.finished and result.output_dir == out
    assert result.student_path == out / "student.pt2" and result.control_path == out / "control.pt2"
    assert (out / "checkpoint.pt").is_file()

    x = load_builtin("sklearn:digits", split="test").x
    for name in ("student", "control"):
        model = load_model(ModelSpec(name=name, path=out / f"{name}.pt2"))
        assert model.format == "torch.export"
        assert model.predict_logits(x[:1]).shape == (1, 10)  # a dynamic batch dimension
        assert model.predict_logits(x[:37]).shape == (37, 10)
        # The exported program is the trained model: it reproduces the last validation accuracy.
        val = load_builtin("sklearn:digits", split="test")
        accuracy = float(np.mean(model.predict_logits(val.x).argmax(1) == val.y))
        records = result.epochs if name == "student" else result.control_epochs
        assert accuracy == pytest.approx(records[-1]["val_accuracy"])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["status"] == "finished" and manifest["finished"] is True
    assert manifest["config"]["distill"]["epochs"] == 2
    assert manifest["seed"] == 0 and manifest["output_dir"] == str(out)
    assert manifest["teacher"]["sha256"] == sha256_file(WEIGHTS / "digits_teacher.pt")
    assert manifest["data"]["train"]["sha256"] == load_dataset(config.train).sha256
    assert manifest["data"]["val"] == load_dataset(config.val).describe()
    assert manifest["environment"]["torch"] == torch.__version__
    assert manifest["student"]["sha256"] == sha256_file(out / "student.pt2")
    assert manifest["control"]["file"] == "control.pt2"
    for records in (manifest["epochs"], manifest["control"]["epochs"]):
        assert [r["epoch"] for r in records] == [1, 2]
        assert all(RECORD_KEYS <= r.keys() for r in records)
        assert all(0 <= r["val_accuracy"] <= 1 and 0 <= r["val_agreement"] <= 1 for r in records)
    # One progress line per epoch and phase.
    progress = [line for line in lines if " epoch " in line]
    assert len(progress) == 4
    assert progress[0].startswith("student epoch 1/2") and "val_agreement" in progress[0]
    assert progress[2].startswith("control epoch 1/2")


def test_an_exported_student_holds_its_weights_and_no_training_rows(tmp_path: Path) -> None:
    # torch.export keeps its example inputs in the .pt2; a slice of the training set as the
    # example once saved the slice's whole storage, i.e. every training row, with the student.
    config = make_config(tmp_path, control=True)
    result = train(config, log=None)
    train_x = np.ascontiguousarray(load_dataset(config.train).x)
    assert len(train_x) > 1000
    rows = {row.tobytes() for row in train_x}
    for path in (result.student_path, result.control_path):
        assert path is not None
        blob = path.read_bytes()
        module = load_model(ModelSpec(name="student", path=path)).module
        params = sum(p.numel() * p.element_size() for p in module.parameters())
        assert params == (64 * 8 + 8 + 8 * 10 + 10) * 4
        # the weights plus a graph description of a few kB; the training set alone is 322 kB
        assert len(blob) < params + 64 * 1024, f"{path.name} is {len(blob)} bytes for {params} bytes of weights"
        leaked = [row for row in rows if row in blob]
        assert not leaked, f"{len(leaked)} training rows are stored in {path.name}"


def test_torchscript_format_writes_pt_files_with_a_dynamic_batch(tmp_path: Path) -> None:
    document_config = make_config(tmp_path)
    config = parse_train_config(
        {**document_config.document, "output": {"dir": "run", "format": "torchscript"}},
        file=tmp_path / "train.toml",
        base=tmp_path,
    )
    result = train(config, log=None)
    assert result.student_path == tmp_path / "run" / "student.pt" and result.control_path is None
    model = load_model(ModelSpec(name="student", path=result.student_path))
    assert model.format == "torchscript"
    x = np.random.default_rng(0).random((37, 64), dtype=np.float32)
    assert model.predict_logits(x[:1]).shape == (1, 10)
    assert model.predict_logits(x).shape == (37, 10)


def test_the_trainer_leaves_the_callers_random_state_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(make_config(tmp_path), log=None)
    assert torch.equal(torch.get_rng_state(), before)


# -- determinism and resume ---------------------------------------------------------


def test_the_same_seed_gives_identical_epoch_records(tmp_path: Path) -> None:
    runs = [train(make_config(tmp_path, out=f"run{i}", epochs=3, control=True), log=None) for i in range(2)]
    assert runs[0].epochs == runs[1].epochs  # exact float equality
    assert runs[0].control_epochs == runs[1].control_epochs
    assert_same_state(final_state(tmp_path / "run0"), final_state(tmp_path / "run1"))
    other = train(make_config(tmp_path, out="other", epochs=3, seed=1), log=None)
    assert other.epochs != runs[0].epochs  # the seed does matter


@pytest.fixture
def dropout_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "students"
    folder.mkdir()
    (folder / "de_train_students.py").write_text(STUDENTS_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return "de_train_students:dropout_mlp"


def resumable_config(tmp_path: Path, out: str, factory: str) -> TrainConfig:
    """Every state a resume must restore: dropout (global RNG), input noise, a cosine schedule, both phases."""
    config = make_config(tmp_path, out=out, epochs=4, control=True, schedule="cosine", augment={"noise_std": 0.05})
    document = {**config.document, "student": {"factory": factory}}
    return parse_train_config(document, file=tmp_path / "train.toml", base=tmp_path)


def test_resume_continues_exactly(tmp_path: Path, dropout_student: str) -> None:
    straight = train(resumable_config(tmp_path, "straight", dropout_student), log=None)

    config = resumable_config(tmp_path, "pieces", dropout_student)
    first = train(config, log=None, max_epochs_this_run=2)  # half the student
    assert not first.finished and len(first.epochs) == 2 and first.manifest["status"] == "interrupted"
    assert json.loads((tmp_path / "pieces" / "manifest.json").read_text())["epochs"] == first.epochs
    second = train(config, resume=True, log=None, max_epochs_this_run=4)  # the rest of it, half the control
    assert not second.finished and len(second.epochs) == 4 and len(second.control_epochs) == 2
    last = train(config, resume=True, log=None)
    assert last.finished

    assert last.epochs == straight.epochs and last.control_epochs == straight.control_epochs
    for phase in ("student", "control"):
        assert_same_state(final_state(tmp_path / "pieces", phase), final_state(tmp_path / "straight", phase))
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    a = load_model(ModelSpec(name="a", path=straight.student_path)).predict_logits(x)
    b = load_model(ModelSpec(name="b", path=last.student_path)).predict_logits(x)
    np.testing.assert_array_equal(a, b)


class Interrupt(Exception):
    pass


class InterruptAfter(TrainCallback):
    def __init__(self, phase: str, epoch: int) -> None:
        self.phase, self.epoch = phase, epoch

    def on_epoch_end(self, phase, record) -> None:
        if (phase, record["epoch"]) == (self.phase, self.epoch):
            raise Interrupt


def test_resume_after_an_exception_in_the_middle_of_a_run(tmp_path: Path, dropout_student: str) -> None:
    straight = train(resumable_config(tmp_path, "straight", dropout_student), log=None)
    config = resumable_config(tmp_path, "crashed", dropout_student)
    with pytest.raises(Interrupt):
        train(config, log=None, callbacks=[InterruptAfter("student", 3)])
    manifest = json.loads((tmp_path / "crashed" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and len(manifest["epochs"]) == 3
    lines: list[str] = []
    resumed = train(config, resume=True, log=lines.append)
    assert "student after epoch 3" in lines[0]
    assert sum("train_loss" in line for line in lines) == 1 + 4  # the last student epoch, then the control
    assert resumed.epochs == straight.epochs and resumed.control_epochs == straight.control_epochs
    assert_same_state(final_state(tmp_path / "crashed"), final_state(tmp_path / "straight"))


def test_an_existing_run_is_never_clobbered_and_a_changed_config_is_not_resumed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    train(config, log=None, max_epochs_this_run=1)
    with pytest.raises(ConfigError, match=r"already holds a training run.*--resume.*--overwrite"):
        train(config, log=None)
    with pytest.raises(ConfigError, match=r"config changed.*distill\.lr"):
        train(make_config(tmp_path, lr=0.02), resume=True, log=None)
    # Where the outputs go may change; the recipe may not.
    moved = config.with_output_dir(tmp_path / "run")
    assert train(moved, resume=True, log=None).finished
    fresh = train(config, overwrite=True, log=None)
    assert fresh.finished and len(fresh.epochs) == 2


# -- offline mode ---------------------------------------------------------------------


class CountingTeacher(nn.Module):
    """Wraps a teacher and counts the examples it is called on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows_seen = 0
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise AssertionError("the teacher was called while the control trained")
        self.rows_seen += len(x)
        return self.inner(x)


def test_offline_equals_online_and_runs_the_teacher_once(tmp_path: Path) -> None:
    n_train, n_val = 1257, 540
    results = {}
    for offline in (False, True):
        teacher = CountingTeacher(digits_teacher())
        config = make_config(tmp_path, out=f"offline-{offline}", epochs=3, offline=offline)
        results[offline] = train(config, teacher=teacher, log=None, use_cache=False)
        per_epoch = 0 if offline else n_train
        probe = 32 if offline else 0
        assert teacher.rows_seen == n_val + (n_train if offline else 0) + probe + 3 * per_epoch
    online, offline_ = results[False].epochs, results[True].epochs
    for a, b in zip(online, offline_, strict=True):
        assert a["val_accuracy"] == b["val_accuracy"] and a["val_agreement"] == b["val_agreement"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def index_of(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x[:, 0] * 1000).long()


def logits_of_index(index: torch.Tensor) -> torch.Tensor:
    """A different, known row of logits for every example index."""
    classes = torch.arange(10, dtype=torch.float32)
    return 3 * torch.cos(0.37 * (index.float()[:, None] + 1) * (classes[None, :] + 1))


class IndexTeacher(nn.Module):
    """A teacher whose logits depend only on the example's index, written into feature 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of_index(index_of(x.flatten(1)))


def test_offline_logits_are_aligned_by_example_index_not_batch_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n, offset in (("train", 300, 0), ("val", 60, 300)):
        x = rng.random((n, 64), dtype=np.float32)
        x[:, 0] = (np.arange(n) + offset) / 1000
        np.savez(tmp_path / f"{name}.npz", x=x, y=rng.integers(0, 10, n))
    config = make_config(tmp_path, offline=True, batch_size=32)
    config = parse_train_config(
        {**config.document, "data": {"train": {"path": "train.npz"}, "val": {"path": "val.npz"}}},
        file=tmp_path / "train.toml",
        base=tmp_path,
    )
    recorder = Recorder()
    train(config, teacher=IndexTeacher(), callbacks=[recorder], log=None)
    batches = [(rows, logits) for phase, _, rows, logits in recorder.batches if phase == "student"]
    assert len(batches) == 2 * math.ceil(300 / 32)
    assert any(not torch.equal(rows, torch.sort(rows).values) for rows, _ in batches)  # batches are shuffled
    for rows, logits in batches:
        torch.testing.assert_close(logits, logits_of_index(rows), rtol=0, atol=1e-6)


def test_offline_reuses_the_plugins_cache_entries(tmp_path: Path) -> None:
    config = make_config(tmp_path, offline=True, epochs=1)
    lines: list[str] = []
    train(config, log=lines.append)
    assert "teacher on train: 1257 examples in" in "\n".join(lines)
    project = ProjectConfig(
        rootdir=tmp_path,
        cache_dir=tmp_path / "cache",
        device="cpu",
        models={"teacher": config.teacher},
        datasets={"train": DatasetSpec(name="train", source="sklearn:digits", split="train")},
    )
    outputs = DistillSession(project).outputs("teacher", "train")
    assert outputs.cached  # the plugin reads the entry the trainer wrote
    lines.clear()
    train(make_config(tmp_path, out="again", offline=True, epochs=1), log=lines.append)
    assert "teacher on train: 1257 examples from cache" in lines


def test_offline_checks_a_probe_batch_against_the_live_teacher(tmp_path: Path) -> None:
    config = make_config(tmp_path, offline=True, epochs=1)
    train_data = load_dataset(config.train)
    from distill_eval.models import model_fingerprint

    key = output_cache_key(model_fingerprint(config.teacher), train_data, device="cpu", batch_size=256)
    stale = np.zeros((train_data.n, 10), dtype=np.float32)  # a well-formed entry that no longer fits the teacher
    OutputCache(tmp_path / "cache").store(key, stale, {"model": "teacher"})
    with pytest.raises(ModelError, match=r"do not match the live teacher on a probe batch of 32 examples"):
        train(config, log=None)


# -- teacher hygiene and the control --------------------------------------------------


def test_the_teacher_is_frozen_in_eval_mode_and_never_updated(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 10)).train()
    reference = copy.deepcopy(teacher).eval()
    before = copy.deepcopy(teacher.state_dict())
    recorder = Recorder()
    config = make_config(tmp_path, offline=False)
    train(config, teacher=teacher, callbacks=[recorder], log=None)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert_same_state(teacher.state_dict(), before)
    x = torch.from_numpy(load_builtin("sklearn:digits", split="train").x)
    for _, _, rows, logits in recorder.batches:
        with torch.no_grad():
            torch.testing.assert_close(logits, reference(x[rows]))  # no dropout: the teacher ran in eval mode
        assert not logits.requires_grad


def test_the_control_never_calls_the_teacher(tmp_path: Path) -> None:
    teacher = CountingTeacher(digits_teacher())

    class ArmOnControl(Recorder):
        def on_phase_start(self, phase: str) -> None:
            super().on_phase_start(phase)
            teacher.armed = phase == "control"

    recorder = ArmOnControl()
    result = train(make_config(tmp_path, control=True), teacher=teacher, callbacks=[recorder], log=None)
    assert recorder.phases == ["student", "control"] and result.finished
    student = [b for b in recorder.batches if b[0] == "student"]
    control = [b for b in recorder.batches if b[0] == "control"]
    assert all(logits is not None for *_, logits in student)
    assert all(logits is None for *_, logits in control)
    # Same seed, same recipe: the control sees the same batches in the same order.
    assert all(torch.equal(s[2], c[2]) for s, c in zip(student, control, strict=True))


def test_with_alpha_zero_the_student_is_the_control(tmp_path: Path) -> None:
    result = train(make_config(tmp_path, control=True, alpha=0.0), log=None)
    assert result.epochs == result.control_epochs
    assert_same_state(final_state(tmp_path / "run", "student"), final_state(tmp_path / "run", "control"))


# -- filtering the teacher's errors -----------------------------------------------------


def planted_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Student and teacher logits, labels, and which rows the teacher gets wrong (rows 1, 4 and 6)."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(8, 5, generator=gen) * 2
    teacher = torch.randn(8, 5, generator=gen) * 2
    labels = teacher.argmax(1).clone()
    wrong = np.array([1, 4, 6])
    labels[wrong] = (labels[wrong] + 1) % 5
    return student, teacher, labels, wrong


def hand_terms(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy and T²·KL(teacher ‖ student), float64 numpy."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    s64, t64 = s.double().numpy(), t.double().numpy()
    ce = -log_softmax(s64)[np.arange(len(y)), y.numpy()]
    log_p, log_q = log_softmax(t64 / temperature), log_softmax(s64 / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1) * temperature**2
    return ce, kl


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_filtered_losses_equal_the_hand_computation(alpha: float, temperature: float) -> None:
    s, t, y, wrong = planted_batch()
    ce, kl = hand_terms(s, t, y, temperature)
    right = np.setdiff1d(np.arange(len(y)), wrong)
    expected = {
        "none": np.mean((1 - alpha) * ce + alpha * kl),
        "drop": (1 - alpha) * ce.mean() + alpha * kl[right].mean(),
        "relabel": np.mean(np.where(np.isin(np.arange(len(y)), wrong), ce, (1 - alpha) * ce + alpha * kl)),
    }
    for mode, value in expected.items():
        got = distillation_loss(s, t, y, temperature=temperature, alpha=alpha, filter_teacher_errors=mode)
        assert got.dtype == torch.float32
        assert float(got) == pytest.approx(value, rel=1e-5, abs=1e-6), mode
    assert expected["drop"] != pytest.approx(expected["none"]) or alpha == 0


def test_filtering_changes_nothing_when_the_teacher_is_right() -> None:
    s, t, _, _ = planted_batch()
    y = t.argmax(1)
    plain = kd_loss(s, t, y, temperature=2.0, alpha=0.7)
    for mode in ("drop", "relabel"):
        torch.testing.assert_close(
            distillation_loss(s, t, y, temperature=2.0, alpha=0.7, filter_teacher_errors=mode), plain
        )


def test_dropped_and_relabelled_examples_get_no_soft_gradient() -> None:
    s, t, y, wrong = planted_batch()
    right = np.setdiff1d(np.arange(len(y)), wrong)
    for mode in ("drop", "relabel"):
        student = s.clone().requires_grad_(True)
        distillation_loss(student, t, y, temperature=4.0, alpha=1.0, filter_teacher_errors=mode).backward()
        grad = student.grad
        if mode == "drop":  # alpha = 1: no cross-entropy, and no soft term for the teacher's errors
            assert torch.all(grad[wrong] == 0)
        else:  # the hard label alone: the gradient of CE / n
            expected = (torch.softmax(s[wrong], 1) - F.one_hot(y[wrong], 5)) / len(y)
            torch.testing.assert_close(grad[wrong], expected)
        assert torch.all(grad[right].abs().sum(1) > 0)


class SwappingTeacher(nn.Module):
    """The digits teacher with classes 3 and 8 swapped: wrong on every 3 and every 8."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = digits_teacher()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:, [0, 1, 2, 8, 4, 5, 6, 7, 3, 9]]


def test_drop_and_relabel_keep_the_student_from_copying_the_teachers_errors(tmp_path: Path) -> None:
    val = load_builtin("sklearn:digits", split="test")
    swapped = (val.y == 3) | (val.y == 8)
    accuracy = {}
    for mode in ("none", "drop", "relabel"):
        config = make_config(
            tmp_path,
            out=mode,
            epochs=6,
            alpha=0.7,
            temperature=1.0,
            batch_size=64,
            offline=True,
            filter_teacher_errors=mode,
        )
        document = {**config.document, "student": {"factory": "distill_eval.train.zoo:digits_student"}}
        config = parse_train_config(document, file=tmp_path / "train.toml", base=tmp_path)
        result = train(config, teacher=SwappingTeacher(), log=None)
        student = load_model(ModelSpec(name=mode, path=result.student_path))
        accuracy[mode] = float(np.mean(student.predict_logits(val.x[swapped]).argmax(1) == val.y[swapped]))
    assert accuracy["none"] < 0.2  # plain distillation copies the swap
    assert accuracy["drop"] > 0.6  # no soft targets for the teacher's errors: the labels win
    assert accuracy["relabel"] > 0.85  # the hard label alone for them


# -- schedule, early stopping, precision, mistakes -----------------------------------


def test_cosine_schedule_and_early_stopping_on_validation_agreement(tmp_path: Path) -> None:
    result = train(make_config(tmp_path, epochs=30, lr=0.02, schedule="cosine", patience=2), log=None)
    records = result.epochs
    lrs = [r["lr"] for r in records]
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 30)) for e in range(len(records))])
    agreements = [r["val_agreement"] for r in records]
    best = int(np.argmax(agreements)) + 1  # the first best epoch
    assert result.manifest["student"]["stopped_early"] and len(records) == best + 2 < 30
    assert result.manifest["student"]["selected_epoch"] == best
    val = load_builtin("sklearn:digits", split="test")
    teacher_pred = digits_teacher()(torch.from_numpy(val.x)).argmax(1).numpy()
    student = load_model(ModelSpec(name="s", path=result.student_path))
    assert float(np.mean(student.predict_logits(val.x).argmax(1) == teacher_pred)) == pytest.approx(max(agreements))


def test_bf16_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bf16.*CUDA"):
        train(make_config(tmp_path, precision="bf16"), log=None)


def test_a_student_with_another_class_count_is_a_clear_error(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    document = {**config.document, "student": {"factory": "distill_eval.train.zoo:mlp", "kwargs": {"n_classes": 5}}}
    config = parse_train_config(document, file=tmp_path / "train.toml", base=tmp_path)
    with pytest.raises(ModelError, match=r"model 'student'.*\(2, 5\).*10 classes"):
        train(config, log=None)


# -- the command line ---------------------------------------------------------------------


CLI_CONFIG = digits.train_config(
    """
[distill]
epochs = 2
batch_size = 128
device = "cpu"
cache_dir = "cache"

[output]
dir = "runs/tiny"
"""
)


def test_cli_train_resume_and_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.toml"
    config.write_text(CLI_CONFIG)
    assert main(["train", str(config), "--max-epochs-this-run", "1"]) == 0
    out = capsys.readouterr().out
    assert "student epoch 1/2" in out and "--resume" in out
    assert main(["train", str(config)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(config), "--resume"]) == 0
    assert "student epoch 2/2" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())
    assert manifest["finished"] and len(manifest["epochs"]) == 2
    assert main(["train", str(config), "--resume"]) == 0  # a finished run: nothing left to train
    assert "train_loss" not in capsys.readouterr().out
    assert json.loads((tmp_path / "runs" / "tiny" / "manifest.json").read_text())["epochs"] == manifest["epochs"]

    config.write_text(CLI_CONFIG.replace("epochs = 2", "epoch = 2"))
    assert main(["train", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert "train.toml: [distill]: unknown key 'epoch' (did you mean 'epochs'?)" in err


def test_cli_train_help_documents_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--resume", "--overwrite", "--output-dir", "filter_teacher_errors", "manifest.json"):
        assert needle in text


# -- the example config (slow) --------------------------------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("example")
        config = load_train_config(EXAMPLE).with_output_dir(out / "run")
        return train(config, log=None, use_cache=False)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_example_student_agrees_with_the_teacher_more_than_the_control(example_run: Any) -> None:
    student, control = example_run.epochs[-1], example_run.control_epochs[-1]
    assert student["val_agreement"] >= 0.93
    assert student["val_agreement"] > control["val_agreement"]
    # Measured again through the plugin's loaders, from the files.
    val = load_builtin("sklearn:digits", split="test")
    teacher = load_model(
        ModelSpec(
            name="teacher", factory="distill_eval.train.zoo:digits_teacher", weights=WEIGHTS / "digits_teacher.pt"
        )
    )
    teacher_pred = teacher.predict_logits(val.x).argmax(1)
    for path, record in ((example_run.student_path, student), (example_run.control_path, control)):
        pred = load_model(ModelSpec(name="m", path=path)).predict_logits(val.x).argmax(1)
        assert float(np.mean(pred == teacher_pred)) == pytest.approx(record["val_agreement"])


@pytest.mark.slow
def test_the_plugin_gates_the_trained_student(example_run: Any, pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".toml",
        pyproject=f"""
[tool.distill_eval]
device = "cpu"
[tool.distill_eval.models.teacher]
factory = "distill_eval.train.zoo:digits_teacher"
weights = "{WEIGHTS / "digits_teacher.pt"}"
[tool.distill_eval.models.student]
path = "{example_run.student_path}"
[tool.distill_eval.models.control]
path = "{example_run.control_path}"
[tool.distill_eval.datasets.test]
source = "sklearn:digits"
""",
    )
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "gate.toml").write_text(
        '[[check]]\nkind = "agreement"\nmin = { top1 = 0.95 }\n\n'
        '[[check]]\nkind = "copied_errors"\ncontrol = "control"\n'
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=2)


# -- a teacher trained here ([teacher] train = true) -------------------------------------


def trained_teacher_config(tmp_path: Path, *, out: str = "run", **distill: Any) -> TrainConfig:
    """The tiny run, with a small teacher (64-32-10) trained for 3 epochs first."""
    config = make_config(tmp_path, out=out, **distill)
    teacher = {
        "train": True,
        "factory": "distill_eval.train.zoo:digits_teacher",
        "kwargs": {"hidden": [32]},
        "epochs": 3,
        "lr": 0.01,
        "batch_size": 128,
        "label_smoothing": 0.05,
        "seed": 5,
    }
    return parse_train_config({**config.document, "teacher": teacher}, file=tmp_path / "train.toml", base=tmp_path)


def test_a_trained_teacher_is_trained_exported_recorded_and_distilled_from(tmp_path: Path) -> None:
    recorder = Recorder()
    lines: list[str] = []
    result = train(trained_teacher_config(tmp_path, control=True), callbacks=[recorder], log=lines.append)
    out = tmp_path / "run"
    assert result.finished and result.teacher_path == out / "teacher.pt2"
    assert recorder.phases == ["teacher", "student", "control"]
    # The teacher learns from the labels alone.
    assert all(logits is None for phase, *_, logits in recorder.batches if phase == "teacher")
    assert any(line.startswith("teacher epoch 1/3") and "val_agreement" not in line for line in lines)

    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["teacher"]
    assert entry["trained"] is True and entry["file"] == "teacher.pt2"
    assert entry["sha256"] == sha256_file(out / "teacher.pt2")
    assert entry["factory"] == "distill_eval.train.zoo:digits_teacher" and entry["kwargs"] == {"hidden": [32]}
    assert entry["recipe"]["label_smoothing"] == 0.05 and entry["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert [r["epoch"] for r in entry["epochs"]] == [1, 2, 3] == [r["epoch"] for r in result.teacher_epochs]
    assert all("val_agreement" not in r and 0 <= r["val_accuracy"] <= 1 for r in entry["epochs"])
    assert [r["epoch"] for r in manifest["epochs"]] == [1, 2]

    # The exported teacher is the trained one, and it is the teacher the student learnt from.
    teacher = load_model(ModelSpec(name="teacher", path=out / "teacher.pt2"))
    val = load_builtin("sklearn:digits", split="test")
    teacher_pred = teacher.predict_logits(val.x).argmax(1)
    assert float(np.mean(teacher_pred == val.y)) == pytest.approx(entry["epochs"][-1]["val_accuracy"])
    student = load_model(ModelSpec(name="student", path=result.student_path)).predict_logits(val.x).argmax(1)
    assert float(np.mean(student == teacher_pred)) == pytest.approx(result.epochs[-1]["val_agreement"])
    # Distilling from the exported teacher, named as a saved model, gives the same student bit for bit.
    document = {**make_config(tmp_path).document, "teacher": {"path": str(out / "teacher.pt2")}}
    given = parse_train_config(document, file=tmp_path / "train.toml", base=tmp_path)
    same = train(given.with_output_dir(tmp_path / "given"), log=None)
    assert same.epochs == result.epochs
    assert_same_state(final_state(tmp_path / "given"), final_state(out))
    # The control is the student's architecture on labels, not the teacher's.
    assert result.manifest["control"]["factory"] == "distill_eval.train.zoo:digits_student"


def test_a_trained_teacher_resumes_exactly_across_the_teacher_phase(tmp_path: Path) -> None:
    straight = train(trained_teacher_config(tmp_path, out="straight"), log=None)
    config = trained_teacher_config(tmp_path, out="pieces")
    first = train(config, log=None, max_epochs_this_run=2)  # inside the teacher phase
    assert not first.finished and len(first.teacher_epochs) == 2 and not first.epochs
    assert first.teacher_path is None and not (tmp_path / "pieces" / "teacher.pt2").exists()
    second = train(config, resume=True, log=None, max_epochs_this_run=2)  # the teacher's last epoch, a student one
    assert not second.finished and len(second.teacher_epochs) == 3 and len(second.epochs) == 1
    (tmp_path / "pieces" / "teacher.pt2").unlink()  # re-exported from the checkpoint
    last = train(config, resume=True, log=None)
    assert last.finished
    assert last.teacher_epochs == straight.teacher_epochs and last.epochs == straight.epochs
    for phase in ("teacher", "student"):
        assert_same_state(final_state(tmp_path / "pieces", phase), final_state(tmp_path / "straight", phase))
    # A changed teacher recipe is not resumed.
    changed = parse_train_config(
        {**config.document, "teacher": {**config.document["teacher"], "lr": 0.02}},
        file=tmp_path / "train.toml",
        base=tmp_path,
    )
    with pytest.raises(ConfigError, match=r"config changed.*teacher\.lr"):
        train(changed, resume=True, log=None)


def test_a_trained_teacher_cannot_be_passed_in_and_a_loaded_one_is_never_deleted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[teacher\].*trains its own"):
        train(trained_teacher_config(tmp_path), teacher=digits_teacher(), log=None)
    # A teacher file in the output folder that the run does not train survives --overwrite.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "teacher.pt2").write_bytes(b"the user's teacher")
    train(make_config(tmp_path), overwrite=True, log=None)
    assert (tmp_path / "run" / "teacher.pt2").read_bytes() == b"the user's teacher"


def test_a_torchscript_teacher_is_frozen_and_distilled_from(tmp_path: Path) -> None:
    """The user's most common teacher: a TorchScript file (which refuses module.requires_grad_)."""
    with torchscript_deprecation_ignored():
        torch.jit.trace(digits_teacher(), torch.zeros(1, 64)).save(str(tmp_path / "teacher.pt"))
    config = make_config(tmp_path)
    document = dict(config.document, teacher={"path": "teacher.pt"})
    result = train(parse_train_config(document, file=tmp_path / "train.toml", base=tmp_path), log=None)
    assert result.finished and len(result.epochs) == 2
    assert result.manifest["teacher"]["sha256"] == hashlib.sha256((tmp_path / "teacher.pt").read_bytes()).hexdigest()
    # the same teacher by factory + weights teaches the same student
    same = train(make_config(tmp_path, out="factory"), log=None)
    assert [r["val_agreement"] for r in same.epochs] == [r["val_agreement"] for r in result.epochs]
