"""Rebuild the built-in default teacher and student for ``sklearn:digits`` (and, with ``--bytes``, the byte-level LMs).

Run ``python -m distill_eval.train.builtin [--out DIR]``. It runs the reference
trainer (:func:`~distill_eval.train.train`) on the example config
``distill_eval/train/examples/digits_from_scratch.toml``: the teacher
(:func:`~distill_eval.train.zoo.digits_teacher`) is trained there with
cross-entropy on the train split of ``sklearn:digits`` (``[teacher] train =
true``), and the student (:func:`~distill_eval.train.zoo.digits_student`) is
distilled from it (T = 4, alpha = 0.9) on the same split. The state dicts of the
two trained models are saved with ``torch.save`` as ``digits_teacher.pt`` and
``digits_student.pt``, by default into ``distill_eval/train/weights/``, where the
default project config loads them (factory + weights).

``python -m distill_eval.train.builtin --bytes`` does the same for the built-in
language models: it runs ``examples/bytes.toml``, which trains
:func:`~distill_eval.train.zoo.bytes_teacher` on the train split of the built-in
byte corpus and distils :func:`~distill_eval.train.zoo.bytes_student` from it,
and saves ``bytes_teacher.pt`` and ``bytes_student.pt``.

The build is deterministic: every random draw comes from a seed in the config
and it runs on one CPU thread, so two runs on the same machine and PyTorch
version write bit-identical files.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill_eval.config import ModelSpec
from distill_eval.data import load_builtin
from distill_eval.metrics import expected_calibration_error
from distill_eval.train.config import TrainConfig, load_train_config
from distill_eval.train.trainer import train
from distill_eval.train.zoo import digits_student, digits_teacher

__all__ = [
    "BYTES_CONFIG",
    "CONFIG",
    "DEFAULT_OUT",
    "STUDENT_FILE",
    "TEACHER_FILE",
    "build_bytes",
    "build_default",
    "main",
]

DEFAULT_OUT = Path(__file__).resolve().with_name("weights")
CONFIG = Path(__file__).resolve().with_name("examples") / "digits_from_scratch.toml"
TEACHER_FILE = "digits_teacher.pt"
STUDENT_FILE = "digits_student.pt"
SOURCE = "sklearn:digits"
BYTES_CONFIG = Path(__file__).resolve().with_name("examples") / "bytes.toml"
BYTES_TEACHER_FILE = "bytes_teacher.pt"
BYTES_STUDENT_FILE = "bytes_student.pt"


def build_default(out_dir: str | Path = DEFAULT_OUT, *, config: str | Path = CONFIG) -> dict[str, float]:
    """Train the default teacher, distil the default student, save both state dicts, and score them.

    Parameters
    ----------
    out_dir : str or Path, default ``distill_eval/train/weights/``
        Folder for ``digits_teacher.pt`` and ``digits_student.pt``; created if missing.
    config : str or Path, default ``examples/digits_from_scratch.toml``
        The training config; it must train its teacher (``[teacher] train = true``).
        Its run (exported models, manifest, checkpoint) goes to a temporary folder
        and the output cache is not used.

    Returns
    -------
    dict of str to float
        Test-split ``teacher_accuracy``, ``student_accuracy``, ``agreement``
        (student/teacher top-1), ``teacher_ece`` and ``student_ece`` (top-label,
        15 equal-width bins).
    """
    train_config = load_train_config(config)
    if train_config.teacher_training is None:
        raise ValueError(f"{config}: the built-in default trains its teacher; set [teacher] train = true")
    teacher, student = _train_and_save(
        train_config, (digits_teacher, digits_student), (TEACHER_FILE, STUDENT_FILE), out_dir, log=None
    )

    test = load_builtin(SOURCE, split="test")
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


def _train_and_save(
    train_config: TrainConfig,
    factories: tuple[Callable[..., nn.Module], Callable[..., nn.Module]],
    files: tuple[str, str],
    out_dir: str | Path,
    *,
    log: Callable[[str], None] | None,
) -> tuple[nn.Module, nn.Module]:
    """Train a config's teacher and student in a scratch folder; save both state dicts in ``out_dir``."""
    with tempfile.TemporaryDirectory(prefix="distill_eval_builtin_") as tmp:
        result = train(train_config.with_output_dir(tmp), log=log, use_cache=False)
        assert result.teacher_path is not None and result.student_path is not None
        models = (
            _as_module(result.teacher_path, factories[0], train_config.teacher.kwargs),
            _as_module(result.student_path, factories[1], train_config.student.kwargs),
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for model, name in zip(models, files, strict=True):
        torch.save(model.state_dict(), out / name)
    return models


def build_bytes(out_dir: str | Path = DEFAULT_OUT, *, config: str | Path = BYTES_CONFIG) -> dict[str, float]:
    """Train the byte-level teacher, distil the student, save both state dicts, and score them.

    Parameters
    ----------
    out_dir : str or Path, default ``distill_eval/train/weights/``
        Folder for ``bytes_teacher.pt`` and ``bytes_student.pt``; created if missing.
    config : str or Path, default ``examples/bytes.toml``
        The training config; it must train its teacher on token data.

    Returns
    -------
    dict of str to float
        ``teacher_perplexity`` and ``student_perplexity`` on the test split of the byte
        corpus (a uniform model has 259), and the student's top-1 ``agreement`` with the teacher.
    """
    from distill_eval.lm.models import load_token_model
    from distill_eval.lm.tokens import load_byte_corpus
    from distill_eval.train.zoo import bytes_student, bytes_teacher

    train_config = load_train_config(config)
    if train_config.teacher_training is None or not train_config.tokens:
        raise ValueError(f"{config}: the built-in language models train their teacher on token data")
    _train_and_save(
        train_config, (bytes_teacher, bytes_student), (BYTES_TEACHER_FILE, BYTES_STUDENT_FILE), out_dir, log=print
    )
    out = Path(out_dir)

    test = load_byte_corpus("test")
    specs = {
        "teacher": (BYTES_TEACHER_FILE, train_config.teacher),
        "student": (BYTES_STUDENT_FILE, train_config.student),
    }
    models = {
        name: load_token_model(
            ModelSpec(
                name=name,
                factory=f"distill_eval.train.zoo:bytes_{name}",
                weights=out / file,
                kwargs=dict(spec.kwargs),
            )
        )
        for name, (file, spec) in specs.items()
    }
    nll = {"teacher": 0.0, "student": 0.0}
    agree = 0
    for batch in test.batches(256):
        scored = torch.from_numpy(
            test.scored()[batch.start : batch.start + len(batch.input_ids), : batch.labels.shape[1]]
        )
        target = torch.from_numpy(batch.labels)[:, 1:][scored[:, :-1]]
        argmax = {}
        for name, model in models.items():
            logits = model(batch.input_ids, batch.attention_mask).float()[:, :-1][scored[:, :-1]]
            nll[name] += float(-torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum())
            argmax[name] = logits.argmax(dim=1)
        agree += int((argmax["teacher"] == argmax["student"]).sum())
    n = test.n_scored
    return {
        "teacher_perplexity": float(np.exp(nll["teacher"] / n)),
        "student_perplexity": float(np.exp(nll["student"] / n)),
        "agreement": agree / n,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m distill_eval.train.builtin",
        description="Rebuild the built-in default teacher and student weights for sklearn:digits.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--config", type=Path, default=None, help=f"training config (default: {CONFIG})")
    parser.add_argument(
        "--bytes",
        action="store_true",
        help=f"rebuild the byte-level language models instead (default config: {BYTES_CONFIG})",
    )
    args = parser.parse_args(argv)
    # One thread: the same float operation order on any machine, and fast enough for these sizes.
    torch.set_num_threads(1)
    if args.bytes:
        scores = build_bytes(args.out, config=args.config or BYTES_CONFIG)
        print(
            f"teacher: test perplexity {scores['teacher_perplexity']:.3f} -> {args.out / BYTES_TEACHER_FILE}\n"
            f"student: test perplexity {scores['student_perplexity']:.3f}, top-1 agreement with teacher "
            f"{scores['agreement']:.4f} -> {args.out / BYTES_STUDENT_FILE}"
        )
        return 0
    metrics = build_default(args.out, config=args.config or CONFIG)
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


def _as_module(path: Path, factory: Callable[..., nn.Module], kwargs: dict) -> nn.Module:
    """The weights of an exported program, loaded (strictly) into a fresh module from ``factory``."""
    program = torch.export.load(path)
    module = factory(**kwargs)
    module.load_state_dict(program.module().state_dict(), strict=True)
    return module.eval()


def _logits(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    """Logits of ``model`` on all of ``x``, without gradients."""
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x), dtype=torch.float32))


if __name__ == "__main__":
    raise SystemExit(main())
