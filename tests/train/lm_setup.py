"""Tiny token-data training runs for the trainer's tests: a token file, a tiny teacher, a recording student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill_eval.lm.loss import token_kd_loss
from distill_eval.lm.tokens import IGNORE_INDEX, load_byte_corpus
from distill_eval.train import TrainCallback, TrainConfig, zoo
from distill_eval.train.config import parse_train_config

TEACHER_KWARGS = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
STUDENT_KWARGS = {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 8}

# A student factory that remembers what it built, so a callback can read its gradients.
STUDENT_MODULE = """
from distill_eval.train import zoo

BUILT = []

def build(**kwargs):
    model = zoo.causal_lm(**kwargs)
    BUILT.append(model)
    return model
"""


def write_token_file(path: Path, *, n: int = 24, length: int = 20) -> dict[str, np.ndarray]:
    """Byte-corpus sequences of uneven lengths (right padding) with unscored prompts: uneven token counts."""
    corpus = load_byte_corpus("test", seq_len=length)
    ids = corpus.input_ids[:n].copy()
    mask = np.ones_like(ids)
    labels = ids.copy()
    for i in range(n):
        keep = length - (i * 5) % 13  # 20, 15, 10, 18, ... real tokens
        mask[i, keep:] = 0
        ids[i, keep:] = 0
        labels[i, keep:] = IGNORE_INDEX
        labels[i, : 1 + (i % 4) * 2] = IGNORE_INDEX  # a prompt of 1, 3, 5 or 7 unscored tokens
    arrays = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    np.savez(path, **arrays)
    return arrays


def write_teacher(path: Path) -> None:
    torch.manual_seed(123)
    torch.save(zoo.causal_lm(**TEACHER_KWARGS).state_dict(), path)


def setup(folder: Path) -> dict[str, np.ndarray]:
    """Write train.npz, teacher.pt and students.py into ``folder``; returns the training arrays."""
    (folder / "students.py").write_text(STUDENT_MODULE)
    write_teacher(folder / "teacher.pt")
    return write_token_file(folder / "train.npz")


def document(**distill: Any) -> dict[str, Any]:
    """A token training config: the tiny teacher, the recording student, one global batch per epoch."""
    return {
        "data": {"kind": "tokens", "train": {"path": "train.npz"}, "val": {"path": "train.npz"}},
        "teacher": {"factory": "distill_eval.train.zoo:causal_lm", "kwargs": TEACHER_KWARGS, "weights": "teacher.pt"},
        "student": {"factory": "students:build", "kwargs": STUDENT_KWARGS},
        "distill": {
            "epochs": 1,
            "batch_size": 24,
            "lr": 0.01,
            "temperature": 2.0,
            "alpha": 0.7,
            "device": "cpu",
            "seed": 3,
            **distill,
        },
        "output": {"dir": "run"},
    }


def config(folder: Path, **distill: Any) -> TrainConfig:
    return parse_train_config(document(**distill), file=folder / "train.toml", base=folder)


def to_toml(doc: dict[str, Any]) -> str:
    """The few TOML shapes :func:`document` uses."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    return "\n".join(f"[{t}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items()) for t, table in doc.items())


class FirstStepGradients(TrainCallback):
    """The student's gradients and loss right after each phase's first optimiser step."""

    def __init__(self, built: list) -> None:
        self.built = built
        self.grads: dict[str, dict[str, torch.Tensor]] = {}
        self.loss: dict[str, float] = {}
        self.teacher_logits: dict[str, torch.Tensor | None] = {}

    def on_batch(self, phase, epoch, rows, teacher_logits, loss) -> None:
        if phase in self.grads:
            return
        model = self.built[-1]
        self.grads[phase] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        self.loss[phase] = float(loss)
        self.teacher_logits[phase] = teacher_logits


def reference_gradients(
    arrays: dict[str, np.ndarray], folder: Path, *, seed: int = 3, **loss_options: Any
) -> tuple[dict[str, torch.Tensor], float]:
    """The gradient of the whole batch's loss, computed in one piece by token_kd_loss (no trainer involved)."""
    teacher = zoo.causal_lm(**TEACHER_KWARGS)
    teacher.load_state_dict(torch.load(folder / "teacher.pt", weights_only=True))
    teacher.eval()
    torch.manual_seed(seed)
    student = zoo.causal_lm(**STUDENT_KWARGS)
    ids, mask, labels = (torch.from_numpy(arrays[k]) for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        target = teacher(ids, mask)
    loss = token_kd_loss(student(ids, mask), target, labels, attention_mask=mask, **loss_options)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in student.named_parameters()}, float(loss.detach())
