"""Rebuild the built-in default teacher and student for ``sklearn:digits``.

Run ``python -m distill_eval.train.builtin [--out DIR]``. The teacher
(:func:`~distill_eval.train.zoo.digits_teacher`) is trained with cross-entropy
on the train split of ``sklearn:digits``; the student
(:func:`~distill_eval.train.zoo.digits_student`) is distilled from it with
:func:`~distill_eval.train.loss.kd_loss` (T = 4, alpha = 0.9) on the same split.
Both state dicts are saved with ``torch.save`` as ``digits_teacher.pt`` and
``digits_student.pt``, by default into ``distill_eval/train/weights/``.

The build is deterministic: every random draw comes from an explicit seed, so
two runs on the same machine and PyTorch version write bit-identical files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from distill_eval.data import load_builtin
from distill_eval.metrics import expected_calibration_error
from distill_eval.train.loss import kd_loss
from distill_eval.train.zoo import digits_student, digits_teacher

__all__ = [
    "DEFAULT_OUT",
    "STUDENT_FILE",
    "TEACHER_FILE",
    "build_default",
    "distill_student",
    "main",
    "train_teacher",
]

DEFAULT_OUT = Path(__file__).resolve().with_name("weights")
TEACHER_FILE = "digits_teacher.pt"
STUDENT_FILE = "digits_student.pt"
SOURCE = "sklearn:digits"

# Loss of one mini-batch from its logits and the row indices of the batch.
_BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_teacher(
    x: ArrayLike,
    y: ArrayLike,
    *,
    factory: Callable[[], nn.Module] = digits_teacher,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Train a teacher with cross-entropy on labelled data.

    Parameters
    ----------
    x : array-like of shape (n_samples, ...)
        Inputs, converted to float32.
    y : array-like of shape (n_samples,)
        Integer class labels.
    factory : callable, default digits_teacher
        Builds the untrained model.
    epochs, batch_size, lr, weight_decay : int, int, float, float
        Adam settings; each epoch visits every example once in a seeded order.
    label_smoothing : float, default 0.0
        Passed to ``F.cross_entropy``; tempers the teacher's confidence.
    seed : int, default 0
        Seeds the initial weights and the batch order.

    Returns
    -------
    nn.Module
        The trained teacher, in eval mode.
    """
    targets = torch.as_tensor(np.asarray(y), dtype=torch.int64)

    def loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets[rows], label_smoothing=label_smoothing)

    return _fit(factory, x, loss, epochs=epochs, batch_size=batch_size, lr=lr, wd=weight_decay, seed=seed)


def distill_student(
    teacher: nn.Module,
    x: ArrayLike,
    y: ArrayLike,
    *,
    factory: Callable[[], nn.Module] = digits_student,
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 1,
) -> nn.Module:
    """Distil a student from a teacher with :func:`~distill_eval.train.loss.kd_loss`.

    Parameters
    ----------
    teacher : nn.Module
        The trained teacher; it is run once, in eval mode, and never updated.
    x : array-like of shape (n_samples, ...)
        Inputs, converted to float32.
    y : array-like of shape (n_samples,)
        Integer class labels, for the ``(1 - alpha)`` cross-entropy term.
    factory : callable, default digits_student
        Builds the untrained student.
    temperature, alpha : float
        As in :func:`~distill_eval.train.loss.kd_loss`.
    epochs, batch_size, lr, weight_decay : int, int, float, float
        Adam settings; each epoch visits every example once in a seeded order.
    seed : int, default 1
        Seeds the initial weights and the batch order.

    Returns
    -------
    nn.Module
        The trained student, in eval mode.
    """
    targets = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    # The teacher is fixed and there is no augmentation, so its logits are computed once.
    teacher_logits = _logits(teacher, x)

    def loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return kd_loss(logits, teacher_logits[rows], targets[rows], temperature=temperature, alpha=alpha)

    return _fit(factory, x, loss, epochs=epochs, batch_size=batch_size, lr=lr, wd=weight_decay, seed=seed)


def build_default(out_dir: str | Path = DEFAULT_OUT) -> dict[str, float]:
    """Train the default teacher, distil the default student, save both, and score them.

    Parameters
    ----------
    out_dir : str or Path, default ``distill_eval/train/weights/``
        Folder for ``digits_teacher.pt`` and ``digits_student.pt``; created if missing.

    Returns
    -------
    dict of str to float
        Test-split ``teacher_accuracy``, ``student_accuracy``, ``agreement``
        (student/teacher top-1), ``teacher_ece`` and ``student_ece`` (top-label,
        15 equal-width bins).
    """
    train = load_builtin(SOURCE, split="train")
    test = load_builtin(SOURCE, split="test")
    teacher = train_teacher(train.x, train.y)
    student = distill_student(teacher, train.x, train.y)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), out / TEACHER_FILE)
    torch.save(student.state_dict(), out / STUDENT_FILE)

    teacher_probs = torch.softmax(_logits(teacher, test.x), dim=1).numpy()
    student_probs = torch.softmax(_logits(student, test.x), dim=1).numpy()
    teacher_pred, student_pred = teacher_probs.argmax(1), student_probs.argmax(1)
    return {
        "teacher_accuracy": float(np.mean(teacher_pred == test.y)),
        "student_accuracy": float(np.mean(student_pred == test.y)),
        "agreement": float(np.mean(student_pred == teacher_pred)),
        "teacher_ece": expected_calibration_error(teacher_probs, test.y, bins=15),
        "student_ece": expected_calibration_error(student_probs, test.y, bins=15),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m distill_eval.train.builtin",
        description="Rebuild the built-in default teacher and student weights for sklearn:digits.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    # One thread: the same float operation order on any machine, and fast enough for these sizes.
    torch.set_num_threads(1)
    metrics = build_default(args.out)
    print(
        f"teacher: test accuracy {metrics['teacher_accuracy']:.4f}, ece {metrics['teacher_ece']:.4f}"
        f" -> {args.out / TEACHER_FILE}"
    )
    print(
        f"student: test accuracy {metrics['student_accuracy']:.4f}, ece {metrics['student_ece']:.4f},"
        f" top-1 agreement with teacher {metrics['agreement']:.4f} -> {args.out / STUDENT_FILE}"
    )
    return 0


# -- internals -------------------------------------------------------------


def _fit(
    factory: Callable[[], nn.Module],
    x: ArrayLike,
    loss: _BatchLoss,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    wd: float,
    seed: int,
) -> nn.Module:
    """Build a model from a seeded init and train it with Adam on shuffled mini-batches."""
    inputs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    # fork_rng: seed the initial weights without changing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(inputs), generator=order).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss(model(inputs[rows]), rows).backward()
            optimizer.step()
    return model.eval()


def _logits(model: nn.Module, x: ArrayLike) -> torch.Tensor:
    """Logits of ``model`` on all of ``x``, without gradients."""
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x), dtype=torch.float32))


if __name__ == "__main__":
    raise SystemExit(main())
