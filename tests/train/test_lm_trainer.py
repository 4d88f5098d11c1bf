"""The trainer on token data: masked token KD normalised per optimiser step, the control, exports, weights."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lm_setup
import numpy as np
import pytest
import torch

from distill_eval.config import ModelSpec
from distill_eval.errors import DataError, ModelError
from distill_eval.lm.loss import token_kd_loss
from distill_eval.lm.models import load_token_model
from distill_eval.lm.tokens import BYTE_VOCAB_SIZE, load_byte_corpus
from distill_eval.train import builtin, train, zoo
from distill_eval.train.config import parse_train_config

WEIGHTS = Path(zoo.__file__).with_name("weights")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch on one thread."""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("students", None)


def built() -> list:
    import students

    return students.BUILT


def assert_close_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "options",
    [
        {"divergence": "forward_kl"},
        {"divergence": "reverse_kl", "accumulation_steps": 5},
        {"divergence": "jsd", "beta": 0.3, "accumulation_steps": 3},
    ],
)
def test_a_step_of_micro_batches_has_the_gradient_of_the_whole_batch(folder: Path, options: dict) -> None:
    # The micro-batches hold different numbers of scored tokens (uneven lengths, prompts):
    # dividing each by its own count instead of the step's would change the gradient.
    arrays = lm_setup.setup(folder)
    recorder = lm_setup.FirstStepGradients(built())
    train(lm_setup.config(folder, **options), callbacks=[recorder], log=None)
    loss_options = {k: v for k, v in options.items() if k in ("divergence", "beta")}
    want, loss = lm_setup.reference_gradients(arrays, folder, temperature=2.0, alpha=0.7, **loss_options)
    assert_close_grads(recorder.grads["student"], want)
    assert recorder.loss["student"] == pytest.approx(loss, rel=1e-5)
    assert recorder.teacher_logits["student"].shape == (24, 20, BYTE_VOCAB_SIZE)


def test_the_control_learns_from_the_labels_alone(folder: Path) -> None:
    arrays = lm_setup.setup(folder)
    recorder = lm_setup.FirstStepGradients(built())
    result = train(lm_setup.config(folder, control=True, accumulation_steps=4), callbacks=[recorder], log=None)
    # Cross-entropy alone is token_kd_loss with alpha = 0, whatever the teacher says.
    want, loss = lm_setup.reference_gradients(arrays, folder, alpha=0.0)
    assert_close_grads(recorder.grads["control"], want)
    assert recorder.loss["control"] == pytest.approx(loss, rel=1e-5)
    assert recorder.teacher_logits["control"] is None
    assert result.control_path is not None and result.control_path.is_file()
    assert set(result.control_epochs[0]) == {
        "epoch",
        "train_loss",
        "val_accuracy",
        "val_agreement",
        "val_perplexity",
        "lr",
    }


def test_exported_students_take_any_batch_and_length_and_score_as_recorded(folder: Path) -> None:
    arrays = lm_setup.setup(folder)
    doc = lm_setup.document(epochs=2, batch_size=7, teacher_batch_size=5)
    doc["teacher"] = {"train": True, "factory": "distill_eval.train.zoo:causal_lm", "kwargs": lm_setup.TEACHER_KWARGS}
    doc["teacher"].update(epochs=2, batch_size=6, label_smoothing=0.1)
    (folder / "train.toml").write_text(lm_setup.to_toml(doc))
    lines: list[str] = []
    result = train(parse_train_config(doc, file=folder / "train.toml", base=folder), log=lines.append)
    assert result.finished and any("val_perplexity" in line for line in lines)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["teacher"]["trained"] and manifest["data"]["train"]["tokens"] == int(
        ((arrays["labels"][:, 1:] != -100) & (arrays["attention_mask"][:, 1:] == 1)).sum()
    )

    teacher = load_token_model(ModelSpec(name="teacher", path=result.teacher_path))
    student = load_token_model(ModelSpec(name="student", path=result.student_path))
    assert student.true_vocab_size == teacher.true_vocab_size == BYTE_VOCAB_SIZE
    ids, mask, labels = (torch.from_numpy(arrays[k]) for k in ("input_ids", "attention_mask", "labels"))
    assert student(ids[:1, :3]).shape == (1, 3, BYTE_VOCAB_SIZE)  # dynamic batch and length
    # The last record is the exported model's: token accuracy, agreement and perplexity, recomputed here.
    s_logits, t_logits = student(ids, mask).float(), teacher(ids, mask).float()
    scored = (labels[:, 1:] != -100) & (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    target = labels[:, 1:][scored]
    s, t = s_logits[:, :-1][scored], t_logits[:, :-1][scored]
    nll = -torch.log_softmax(s.double(), dim=-1).gather(1, target[:, None]).mean()
    last = result.epochs[-1]
    assert last["val_accuracy"] == pytest.approx(float((s.argmax(1) == target).double().mean()), abs=1e-9)
    assert last["val_agreement"] == pytest.approx(float((s.argmax(1) == t.argmax(1)).double().mean()), abs=1e-9)
    assert last["val_perplexity"] == pytest.approx(float(nll.exp()), rel=1e-5)


def test_a_student_with_another_vocabulary_is_refused(folder: Path) -> None:
    lm_setup.setup(folder)
    doc = lm_setup.document()
    doc["student"]["kwargs"] = {**lm_setup.STUDENT_KWARGS, "vocab_size": 256}
    with pytest.raises(ModelError, match=r"model 'teacher' has a vocabulary of 259 tokens .* 'student' has 256"):
        train(parse_train_config(doc, file=folder / "train.toml", base=folder), log=None)


def test_token_ids_outside_the_teachers_vocabulary_are_a_data_error(folder: Path) -> None:
    arrays = lm_setup.setup(folder)
    arrays["input_ids"][3, 2] = arrays["labels"][3, 2] = 300
    np.savez(folder / "train.npz", **arrays)
    with pytest.raises(DataError, match=r"token dataset 'train' .* holds token id 300, but the teacher .* 259 tokens"):
        train(lm_setup.config(folder), log=None)


# -- the built-in byte-level teacher and student ------------------------------------


def perplexity(model: torch.nn.Module, data) -> float:
    """exp(mean NLL of the next byte) over every scored token, computed here from the logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.batches(128):
            ids, mask, labels = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.labels))
            logits = model(ids, mask)[:, :-1].double()
            scored = (labels[:, 1:] != -100) & (mask[:, 1:] == 1)
            logp = torch.log_softmax(logits, dim=-1)[scored]
            total += float(-logp.gather(1, labels[:, 1:][scored][:, None]).sum())
            count += int(scored.sum())
    return float(np.exp(total / count))


def committed(name: str) -> torch.nn.Module:
    model = getattr(zoo, name)()
    model.load_state_dict(torch.load(WEIGHTS / f"{name}.pt", weights_only=True))
    return model.eval()


def test_the_committed_byte_models_learned_and_the_student_is_smaller_and_worse() -> None:
    teacher, student = committed("bytes_teacher"), committed("bytes_student")
    sizes = [sum(p.numel() for p in m.parameters()) for m in (teacher, student)]
    assert sizes[0] >= 8 * sizes[1]
    assert sum((WEIGHTS / f"{n}.pt").stat().st_size for n in ("bytes_teacher", "bytes_student")) < 2_000_000
    test = load_byte_corpus("test")
    uniform = BYTE_VOCAB_SIZE  # a model that gives every byte the same probability
    ppl_teacher, ppl_student = perplexity(teacher, test), perplexity(student, test)
    assert ppl_teacher < ppl_student < uniform / 10  # both learned; the smaller student is worse
    assert ppl_teacher < 8 and ppl_student / ppl_teacher > 1.5


def test_a_few_steps_of_distillation_reduce_the_kd_loss(folder: Path) -> None:
    arrays = lm_setup.write_token_file(folder / "train.npz", n=32, length=48)
    doc = lm_setup.document(epochs=3, batch_size=8, lr=0.01, temperature=1.0, alpha=1.0)
    doc["teacher"] = {"factory": "distill_eval.train.zoo:bytes_teacher", "weights": str(WEIGHTS / "bytes_teacher.pt")}
    doc["student"] = {"factory": "distill_eval.train.zoo:bytes_student"}
    result = train(parse_train_config(doc, file=folder / "train.toml", base=folder), log=None)
    teacher = committed("bytes_teacher")
    torch.manual_seed(3)  # the student's initial weights: [distill] seed
    before = zoo.bytes_student().eval()
    after = load_token_model(ModelSpec(name="student", path=result.student_path))
    ids, mask, labels = (torch.from_numpy(arrays[k]) for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        target = teacher(ids, mask)

        def kd(logits: torch.Tensor) -> float:
            return float(token_kd_loss(logits, target, labels, attention_mask=mask, alpha=1.0))

        assert kd(after(ids, mask)) < 0.8 * kd(before(ids, mask))


@pytest.mark.slow
def test_the_byte_models_build_saves_state_dicts_the_factories_load(tmp_path: Path) -> None:
    # The recipe of bytes.toml, shrunk: tiny models, one short epoch each.
    text = builtin.BYTES_CONFIG.read_text()
    text = text.replace('split = "train", seq_len = 128', 'split = "test", seq_len = 256')
    text = text.replace('bytes_teacher"', 'bytes_teacher"\nkwargs = { d_model = 16, n_layers = 1, d_ff = 16 }', 1)
    text = text.replace('bytes_student"', 'bytes_student"\nkwargs = { d_model = 8, d_ff = 8 }', 1)
    text = re.sub(r"epochs = \d+", "epochs = 1", text).replace("batch_size = 16", "batch_size = 64")
    (tmp_path / "bytes.toml").write_text(text)
    scores = builtin.build_bytes(tmp_path / "weights", config=tmp_path / "bytes.toml")
    teacher = zoo.bytes_teacher(d_model=16, n_layers=1, d_ff=16)
    teacher.load_state_dict(torch.load(tmp_path / "weights" / "bytes_teacher.pt", weights_only=True))
    student = zoo.bytes_student(d_model=8, d_ff=8)
    student.load_state_dict(torch.load(tmp_path / "weights" / "bytes_student.pt", weights_only=True))
    test = load_byte_corpus("test")
    assert scores["teacher_perplexity"] == pytest.approx(perplexity(teacher.eval(), test), rel=1e-4)
    assert scores["student_perplexity"] == pytest.approx(perplexity(student.eval(), test), rel=1e-4)
    assert 0 < scores["agreement"] < 1
