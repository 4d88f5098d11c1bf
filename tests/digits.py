"""The built-in digits teacher and student as a project's ``pyproject.toml`` (shared by the tests)."""

from __future__ import annotations

from pathlib import Path

from distill_eval.train import zoo

WEIGHTS = Path(zoo.__file__).with_name("weights")


def pyproject(
    *,
    dataset: str = 'path = "test.npz"',
    batch_size: int | None = None,
    student_weights: str | Path = WEIGHTS / "digits_student.pt",
) -> str:
    """``[tool.distill_eval]`` on the CPU with the digits teacher and student and one dataset ``test``.

    ``dataset`` is the body of ``[tool.distill_eval.datasets.test]``; more tables may be appended.
    """
    settings = 'device = "cpu"' + (f"\nbatch_size = {batch_size}" if batch_size is not None else "")
    return f"""
[tool.distill_eval]
{settings}

[tool.distill_eval.models.teacher]
factory = "distill_eval.train.zoo:digits_teacher"
weights = "{WEIGHTS / "digits_teacher.pt"}"

[tool.distill_eval.models.student]
factory = "distill_eval.train.zoo:digits_student"
weights = "{student_weights}"

[tool.distill_eval.datasets.test]
{dataset}
"""


def train_config(rest: str) -> str:
    """A ``distill-eval train`` config: digits data, the digits teacher, a small digits student, then ``rest``."""
    return f"""
[data]
train = {{ source = "sklearn:digits", split = "train" }}
val = {{ source = "sklearn:digits", split = "test" }}

[teacher]
factory = "distill_eval.train.zoo:digits_teacher"
weights = "{WEIGHTS / "digits_teacher.pt"}"

[student]
factory = "distill_eval.train.zoo:digits_student"
kwargs = {{ hidden = [8] }}
{rest}"""
