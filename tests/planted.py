"""Synthetic teachers and students with planted defects, for end-to-end check tests.

Inputs are row indices (``x[:, 0]``); a "model" is a lookup table of logits,
so every defect is exactly what we planted:

- ``good``: errs on 12% of examples, independently of the teacher, and states
  its confidence honestly (p = 0.88 on its prediction);
- ``overconfident``: ``good``'s logits × 4 (same predictions, confidence near 1);
- ``broken_slice``: ``good`` except on meta group "b", where it guesses uniformly;
- ``copier``: repeats the teacher's wrong answer on every teacher error, and is
  right more often elsewhere so that its accuracy (and calibration) match ``good``.

The teacher is right on exactly 90% of examples and says p = 0.9 on its prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N, C = 3000, 10
GROUP_B = 0.08  # share of examples in the broken meta group

LOOKUP_MODULE = """
import numpy as np
import torch


class Lookup(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(np.load(table)))

    def forward(self, x):
        return self.table[x[:, 0].long()]


def build(table):
    return Lookup(table)
"""


def _logits_for(pred: np.ndarray, confidence: float) -> np.ndarray:
    p = np.full((len(pred), C), (1 - confidence) / (C - 1))
    p[np.arange(len(pred)), pred] = confidence
    return np.log(p).astype(np.float32)


def _wrong(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    return (y + rng.integers(1, C, size=len(y))) % C


def scenario(seed: int = 0) -> dict[str, np.ndarray]:
    """Labels, meta groups and the logits of the teacher and every student."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=N)
    group = np.where(rng.random(N) < GROUP_B, "b", "a")
    teacher_right = rng.permutation(N) < int(0.9 * N)
    t_pred = np.where(teacher_right, y, _wrong(rng, y))
    s_right = rng.random(N) < 0.88
    s_pred = np.where(s_right, y, _wrong(rng, y))
    # the copier: copies every teacher error, right elsewhere often enough to match good's accuracy
    copier_right = rng.random(N) < 0.88 / 0.9
    c_pred = np.where(teacher_right, np.where(copier_right, y, _wrong(rng, y)), t_pred)
    good = _logits_for(s_pred, 0.88)
    broken = good.copy()
    b = group == "b"
    broken[b] = rng.normal(0, 1e-3, size=(int(b.sum()), C)).astype(np.float32)  # uniform guess
    return {
        "y": y,
        "group": group,
        "teacher": _logits_for(t_pred, 0.9),
        "good": good,
        "overconfident": good * 4,
        "broken_slice": broken,
        "copier": _logits_for(c_pred, 0.88),
    }


MODELS = ("teacher", "good", "overconfident", "broken_slice", "copier")

SUITE = """
[suite]
name = "planted"

[[check]]
kind = "calibration"
max = { student_ece = 0.05 }

[[check]]
kind = "agreement"
min = { top1 = 0.6 }

[[check]]
kind = "slices"
slices = [
  { name = "group-a", where = "meta.group == 'a'" },
  { name = "group-b", where = "meta.group == 'b'" },
]
min = { retention = 0.8 }

[[check]]
kind = "copied_errors"
max = { copied_share = 0.3 }
"""


def write_project(root: Path, student: str = "good", seed: int = 0) -> None:
    """Write data, lookup tables, a lookup module, a pyproject and the suite into ``root``."""
    data = scenario(seed)
    root = Path(root)
    np.savez(root / "test.npz", x=np.arange(N, dtype=np.float32)[:, None], y=data["y"], meta_group=data["group"])
    for name in MODELS:
        np.save(root / f"{name}.npy", data[name])
    (root / "lookup.py").write_text(LOOKUP_MODULE)
    models = "\n".join(
        f'[tool.distill_eval.models.{name}]\nfactory = "lookup:build"\nkwargs = {{ table = "{name}.npy" }}\n'
        for name in MODELS
    )
    (root / "pyproject.toml").write_text(
        f"""
[tool.distill_eval]
device = "cpu"

[tool.distill_eval.models.student]
factory = "lookup:build"
kwargs = {{ table = "{student}.npy" }}

{models}

[tool.distill_eval.datasets.test]
path = "test.npz"
"""
    )
    (root / "suites").mkdir(exist_ok=True)
    (root / "suites" / "planted.toml").write_text(SUITE)
