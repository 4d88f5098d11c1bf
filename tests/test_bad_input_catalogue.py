"""The bad-input catalogue, through the user's door: one ``pytest --distill`` session per mistake.

Every mistake a user can make with a suite, the project table, a model or a dataset ends in a
collection error, a usage error, a check error or a failure (never a pass), with one paragraph
that names the file, the key and what was expected, and no traceback. README.md lists the same
cases under "When the input is wrong"; ``test_readme_catalogue_matches_the_cases`` keeps the two
in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"

# Two tiny models (4 features -> `classes` logits) and a 120-example, 3-class dataset.
TINY = """
import torch


def build(classes=3, fill=None):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, classes)
    if fill is not None:
        with torch.no_grad():
            module.bias.fill_(fill)
    return module
"""

PYPROJECT = """
[tool.distill_eval]
device = "cpu"

[tool.distill_eval.models.teacher]
factory = "tiny:build"

[tool.distill_eval.models.student]
factory = "tiny:build"
kwargs = { fill = 0.1 }

[tool.distill_eval.datasets.test]
path = "test.npz"
"""

SUITE = """
[suite]
name = "gate"
bootstrap = 50

[[check]]
kind = "agreement"
min = { top1 = 0.5 }
"""


def slices_suite(slice_table: str, extra: str = "") -> str:
    """A suite with one slices check over one slice."""
    return f'[suite]\nname = "gate"\nbootstrap = 50\n\n[[check]]\nkind = "slices"\nslices = [{slice_table}]\n{extra}'


def _arrays(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 4), dtype=np.float32), rng.integers(0, 3, n)


def npz(name: str, **changes: Callable[[np.ndarray], np.ndarray] | np.ndarray) -> Callable[[Path], None]:
    """Write a dataset ``name`` whose arrays are the good ones, changed as given."""

    def write(folder: Path) -> None:
        x, y = _arrays()
        arrays = {"x": x, "y": y}
        for key, change in changes.items():
            arrays[key] = change(arrays[key]) if callable(change) else change
        np.savez(folder / name, **arrays)

    return write


def raw(name: str, content: bytes) -> Callable[[Path], None]:
    """Write a file ``name`` holding ``content``."""

    def write(folder: Path) -> None:
        (folder / name).write_bytes(content)

    return write


def pickled_module(folder: Path) -> None:
    torch.save(torch.nn.Linear(4, 3), folder / "full.pt")  # the whole module, pickled: not weights-only


def nan_rows(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[[3, 7], 1] = np.nan
    return x


def unlabelled(folder: Path) -> None:
    np.savez(folder / "test.npz", x=_arrays()[0])


def fixed_batch_export(folder: Path) -> None:
    torch.manual_seed(0)
    program = torch.export.export(torch.nn.Linear(4, 3), (torch.zeros(8, 4),))  # batch 8, and only 8
    torch.export.save(program, str(folder / "student.pt2"))


@pytest.fixture(scope="module")
def _torch_export_imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Export, load and call a fixed-batch .pt2 once, before any ``pytester`` fixture exists.

    ``pytester`` drops the modules first imported during its test; importing torch's export
    modules again re-registers their operator libraries, a RuntimeError in the next test that
    exports a model. Imported here, they stay.
    """
    from distill_eval.config import ModelSpec
    from distill_eval.models import load_model

    folder = tmp_path_factory.mktemp("export")
    fixed_batch_export(folder)
    module = load_model(ModelSpec("student", path=folder / "student.pt2")).module
    with contextlib.suppress(Exception):  # it fails (batch 1 is not 8): the imports are what matter
        module(torch.zeros(1, 4))


def latency_suite(extra: str = "") -> str:
    """A suite with one quick latency check."""
    return f'[suite]\nname = "gate"\n\n[[check]]\nkind = "latency"\nwarmup = 1\nmin_time_s = 0.01\n{extra}'


def token_npz(folder: Path) -> None:
    """``test.npz`` as token data: 10 sequences of 8 byte ids (a language model's dataset)."""
    rng = np.random.default_rng(0)
    np.savez(folder / "test.npz", input_ids=rng.integers(0, 259, (10, 8)))


def token_lm(folder: Path) -> None:
    """``test.npz`` as token data and ``tiny_lm.py``, a bigram language model over its 259 byte ids."""
    token_npz(folder)
    (folder / "tiny_lm.py").write_text(
        "import torch\n\n\nclass LM(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        torch.manual_seed(0)\n"
        "        self.embed, self.head = torch.nn.Embedding(259, 8), torch.nn.Linear(8, 259)\n\n"
        "    def forward(self, input_ids, attention_mask):\n        return self.head(self.embed(input_ids))\n\n\n"
        "def build():\n    return LM()\n"
    )


def token_and_classification_train(folder: Path) -> None:
    """``test.npz`` as token data and ``train.npz`` as classification examples."""
    token_npz(folder)
    x, y = _arrays()
    np.savez(folder / "train.npz", x=x, y=y)


def ids_file(folder: Path) -> None:
    (folder / "suites" / "hard.txt").write_text("# known hard examples\n0\n1\nnope-1\nnope-2\n")


@dataclass(frozen=True)
class Case:
    """One catalogue entry: how to make the mistake and what the user must read.

    ``outcome`` is ``"collection"`` (a suite file is wrong: pytest exits 2), ``"usage"`` (the
    project table is wrong: exit 4), ``"error"`` (the check cannot be computed) or ``"failed"``
    (a bound is broken). ``expected`` are fnmatch patterns for the message lines.
    """

    id: str
    outcome: str
    expected: list[str]
    suite: str = SUITE
    pyproject: tuple[tuple[str, str], ...] = ()
    files: tuple[Callable[[Path], None], ...] = ()


# Text of PYPROJECT that a case replaces: the teacher's factory (written up to the student's
# table, which has the same factory), the student's kwargs and the dataset's path.
TEACHER = 'factory = "tiny:build"\n\n[tool.distill_eval.models.student]'
STUDENT = "kwargs = { fill = 0.1 }"
DATASET = 'path = "test.npz"'

CASES = [
    # -- suite files: collection errors ------------------------------------------------------
    Case(
        "toml-syntax-suite",
        "collection",
        ["*suites/gate.toml: not valid TOML: Illegal character * (at line 7, column 18)"],
        suite=SUITE.replace('"agreement"', '"agreement'),
    ),
    Case(
        "unknown-kind",
        "collection",
        [
            "*suites/gate.toml: check #1: unknown kind 'agreemnt' (did you mean 'agreement'?); "
            "expected one of 'agreement', 'calibration', *"
        ],
        suite=SUITE.replace('"agreement"', '"agreemnt"'),
    ),
    Case(
        "unknown-key-suite",
        "collection",
        ["*suites/gate.toml: check 'agreement': unknown key 'temprature' (did you mean 'temperature'?)"],
        suite=SUITE + "temprature = 2.0\n",
    ),
    Case(
        "unknown-metric",
        "collection",
        [
            "*suites/gate.toml: check 'agreement': unknown metric 'top_1' in 'min' (did you mean 'top1'?); "
            "metrics of this kind: top1, topk, *"
        ],
        suite=SUITE.replace("top1 =", "top_1 ="),
    ),
    Case(
        "wrong-type-suite",
        "collection",
        ["*suites/gate.toml: check 'agreement': 'k' must be an integer >= 1, got a string ('5')"],
        suite=SUITE + 'k = "5"\n',
    ),
    Case(
        "wrong-type-bound",
        "collection",
        ["*suites/gate.toml: check 'agreement': 'min.top1' must be a finite number, got a string ('0.5')"],
        suite=SUITE.replace("top1 = 0.5", 'top1 = "0.5"'),
    ),
    Case(
        "duplicate-check-id",
        "collection",
        [
            "*suites/gate.toml: check 'agreement': duplicate check id 'agreement' (also check #1); "
            "give each check a unique 'id'"
        ],
        suite=SUITE + '\n[[check]]\nkind = "calibration"\nid = "agreement"\n',
    ),
    Case(
        "unknown-model-name",
        "collection",
        [
            "*suites/gate.toml: check 'agreement': 'teacher' names model 'teachr', which "
            "[[]tool.distill_eval.models[]] does not define (did you mean 'teacher'?); defined: student, teacher"
        ],
        suite=SUITE + 'teacher = "teachr"\n',
    ),
    Case(
        "unknown-where-field",
        "collection",
        [
            "*suites/gate.toml: check 'slices', slice 'unsure': 'where': unknown field 'teacher_entropyy' "
            "(did you mean 'teacher_entropy'?)",
            "    teacher_entropyy > 1",
            "    ^^^^^^^^^^^^^^^^",
        ],
        suite=slices_suite('{ name = "unsure", where = "teacher_entropyy > 1" }'),
    ),
    Case(
        "code-in-where",
        "collection",
        [
            "*suites/gate.toml: check 'slices', slice 'evil': 'where': only quantile(field, q) can be called; "
            "'__import__('os').system' is not a function here",
        ],
        suite=slices_suite("{ name = \"evil\", where = \"__import__('os').system('true') == 0\" }"),
    ),
    # -- the project table: usage errors -----------------------------------------------------
    Case(
        "toml-syntax-pyproject",
        "usage",
        ["*pyproject.toml: Invalid value (at line 2, column 10)"],
        pyproject=(('device = "cpu"', "device = cpu"),),
    ),
    Case(
        "unknown-key-pyproject",
        "usage",
        ["*pyproject.toml: [[]tool.distill_eval.models.student[]]: unknown key 'pth' (did you mean 'path'?)"],
        pyproject=((STUDENT, 'pth = "student.pt"'),),
    ),
    Case(
        "wrong-type-pyproject",
        "usage",
        ["*pyproject.toml: [[]tool.distill_eval[]]: 'batch_size' must be an integer >= 1, got a string ('256')"],
        pyproject=(('device = "cpu"', 'batch_size = "256"'),),
    ),
    # -- files the configuration names: check errors -----------------------------------------
    Case(
        "missing-model-file",
        "usage",
        [
            "ERROR: 1 file(s) the selected checks need do not exist; no check ran:",
            "  model 'teacher': file not found: *missing.pt",
        ],
        pyproject=((TEACHER, TEACHER.replace('factory = "tiny:build"', 'path = "missing.pt"', 1)),),
    ),
    Case(
        "missing-weights-file",
        "usage",
        ["*file(s) the selected checks need do not exist*", "  model 'student': weights file not found: *nope.pt"],
        pyproject=((STUDENT, 'weights = "nope.pt"'),),
    ),
    Case(
        "missing-dataset-file",
        "usage",
        ["*file(s) the selected checks need do not exist*", "  dataset 'test': file not found: *missing.npz"],
        pyproject=((DATASET, 'path = "missing.npz"'),),
    ),
    Case(
        "missing-ids-file",
        "error",
        ["*suites/gate.toml: slices check 'slices' could not be computed: slice 'hard': ids file not found: *hard.txt"],
        suite=slices_suite('{ name = "hard", ids = "hard.txt" }'),
    ),
    Case(
        "missing-baseline-results",
        "error",
        [
            "*suites/gate.toml: regression check 'regression' could not be computed: no baseline results at "
            "suites/nope.json (named by 'baseline_results'); point it at a results.json written by *"
        ],
        suite='[suite]\nname = "gate"\n\n[[check]]\nkind = "regression"\nbaseline_results = "nope.json"\n',
    ),
    Case(
        "unsupported-model-format",
        "error",
        [
            "*could not be computed: model 'teacher': *model.h5: unsupported format '.h5'; expected .pt2 "
            "(torch.export), .pt/.pth/.ts (TorchScript), .onnx, or .joblib/.pkl (scikit-learn, needs trusted = true)"
        ],
        pyproject=((TEACHER, TEACHER.replace('factory = "tiny:build"', 'path = "model.h5"', 1)),),
        files=(raw("model.h5", b"\x89HDF\r\n"),),
    ),
    Case(
        "unsupported-dataset-format",
        "error",
        ["*could not be computed: dataset 'test': *test.h5: unsupported format '.h5'; expected .npz, .pt or .csv"],
        pyproject=((DATASET, 'path = "test.h5"'),),
        files=(raw("test.h5", b"\x89HDF\r\n"),),
    ),
    Case(
        "untrusted-pickle",
        "error",
        [
            "*could not be computed: model 'teacher': *model.pkl is a pickle, and loading a pickle runs code from "
            "the file; set 'trusted = true' in [[]tool.distill_eval.models.teacher[]] if you trust it"
        ],
        pyproject=((TEACHER, TEACHER.replace('factory = "tiny:build"', 'path = "model.pkl"', 1)),),
        files=(raw("model.pkl", pickle.dumps({"weights": [1.0]})),),
    ),
    Case(
        "untrusted-torch-pickle",
        "error",
        [
            "*could not be computed: model 'teacher': *full.pt is neither TorchScript nor a weights-only file; "
            "loading a pickled module runs code from the file, so it needs 'trusted = true' in "
            "[[]tool.distill_eval.models.teacher[]]"
        ],
        pyproject=((TEACHER, TEACHER.replace('factory = "tiny:build"', 'path = "full.pt"', 1)),),
        files=(pickled_module,),
    ),
    # -- models and data that load but do not fit: check errors ------------------------------
    Case(
        "class-count-mismatch",
        "error",
        [
            "*suites/gate.toml: agreement check 'agreement' could not be computed: models 'teacher' and 'student' "
            "disagree on the number of classes: 'teacher' outputs shape (120, 3), 'student' outputs shape (120, 2) "
            "on dataset 'test'"
        ],
        pyproject=((STUDENT, "kwargs = { classes = 2 }"),),
    ),
    Case(
        "nan-outputs",
        "error",
        [
            "*could not be computed: model 'student' produced 360 non-finite logits (NaN or Inf) on dataset 'test', "
            "in 120 of 120 examples (first rows: [[]0, 1, 2, 3, 4[]]); logits must be finite numbers*"
        ],
        pyproject=((STUDENT, "kwargs = { fill = nan }"),),
    ),
    Case(
        "inf-outputs",
        "error",
        ["*could not be computed: model 'student' produced 360 non-finite logits (NaN or Inf) on dataset 'test'*"],
        pyproject=((STUDENT, "kwargs = { fill = inf }"),),
    ),
    Case(
        "labels-out-of-range",
        "error",
        [
            "*could not be computed: dataset 'test' (*test.npz) has label 5, but model 'teacher' outputs only "
            "3 classes (logits of shape (120, 3)); labels must be in [[]0, 3)"
        ],
        files=(npz("test.npz", y=lambda y: y + 3),),
    ),
    Case(
        "negative-labels",
        "error",
        ["*could not be computed: dataset 'test' (*test.npz): labels must be >= 0, found -1"],
        files=(npz("test.npz", y=lambda y: y - 1),),
    ),
    Case(
        "empty-dataset",
        "error",
        ["*could not be computed: dataset 'test' (*test.npz) has no examples"],
        files=(npz("test.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64)),),
    ),
    Case(
        "xy-length-mismatch",
        "error",
        [
            "*could not be computed: dataset 'test' (*test.npz): "
            "'x' has 120 rows but 'y' has shape (100,); expected (120,)"
        ],
        files=(npz("test.npz", y=lambda y: y[:100]),),
    ),
    Case(
        "duplicate-dataset-ids",
        "error",
        ["*could not be computed: dataset 'test' (*test.npz): ids must be unique; repeated: 'a'"],
        files=(npz("test.npz", ids=np.array(["a"] * 120)),),
    ),
    Case(
        "unknown-ids",
        "error",
        [
            "*suites/gate.toml: slices check 'slices' could not be computed: slice 'hard': *suites/hard.txt names "
            "2 id(s) that are not in dataset 'test', e.g. 'nope-1', 'nope-2'"
        ],
        suite=slices_suite('{ name = "hard", ids = "hard.txt" }'),
        files=(ids_file,),
    ),
    # -- slices that cannot carry a verdict: failures ----------------------------------------
    Case(
        "empty-slice",
        "failed",
        [
            "*suites/gate.toml: slices check 'slices' of suite 'gate' failed: support of slice 'impossible' = 0 "
            "< min 30 (gate: estimate); under-supported slice"
        ],
        suite=slices_suite('{ name = "impossible", where = "teacher_conf > 2" }', "min = { retention = 0.5 }\n"),
    ),
    Case(
        "under-supported-slice",
        "failed",
        [
            "*suites/gate.toml: slices check 'slices' of suite 'gate' failed: support of slice 'zeros' = 37 "
            "< min 100 (gate: estimate); under-supported slice"
        ],
        suite=slices_suite(
            '{ name = "zeros", where = "label == 0" }', "min_support = 100\nmin = { retention = 0.5 }\n"
        ),
    ),
    Case(
        "nan-inputs",
        "error",
        [
            "*agreement check 'agreement' could not be computed: dataset 'test' (*test.npz): field 'x' holds NaN or "
            "infinite values in 2 of 120 example(s), ids '3', '7'; model 'teacher' needs finite inputs: fix or drop "
            "those rows"
        ],
        files=(npz("test.npz", x=nan_rows),),
    ),
    Case(
        "no-labels",
        "error",
        [
            "*calibration check 'calibration' could not be computed: check 'calibration' (calibration) needs labels, "
            "but dataset 'test' (*test.npz) has none; give it labels ('y' in .npz/.pt files; in a .csv file the "
            "column named by label_column in [[]tool.distill_eval.datasets.test[]])"
        ],
        suite=SUITE.replace('"agreement"\nmin = { top1 = 0.5 }', '"calibration"'),
        files=(unlabelled,),
    ),
    # -- latency -------------------------------------------------------------------------------
    Case(
        "latency-batch-larger-than-data",
        "error",
        [
            "*suites/gate.toml: latency check 'latency' could not be computed: 'batch_size' = 500 is larger than "
            "dataset 'test' (120 examples): *; set batch_size to at most 120 in this check, *"
        ],
        suite=latency_suite("batch_size = 500\n"),
    ),
    Case(
        "latency-fixed-batch-export",
        "error",
        [
            "*suites/gate.toml: latency check 'latency' could not be computed: model 'student' (*student.pt2) "
            "cannot run on the latency timing batch of shape (1, 4) (rows of dataset 'test'): *; if the model was "
            "exported for a fixed batch size, export it with a dynamic batch dimension, e.g. torch.export.export(*"
        ],
        suite=latency_suite(),
        pyproject=((f'factory = "tiny:build"\n{STUDENT}', 'path = "student.pt2"'),),
        files=(fixed_batch_export,),
    ),
    Case(
        "latency-3d-inputs",
        "error",
        [
            "*suites/gate.toml: latency check 'latency' could not be computed: model 'teacher' (tiny:build) cannot "
            "run on the latency timing batch of shape (1, 2, 2) (rows of dataset 'test'): RuntimeError: *; "
            "if the model was exported for a fixed batch size, *"
        ],
        suite=latency_suite(),
        files=(npz("test.npz", x=lambda x: x.reshape(-1, 2, 2)),),
    ),
    Case(
        "latency-class-count-mismatch",
        "error",
        [
            "*suites/gate.toml: latency check 'latency' could not be computed: models 'teacher' and 'student' "
            "disagree on the number of classes: 'teacher' outputs shape (1, 3), 'student' outputs shape (1, 2) "
            "on the timing batch of dataset 'test'*"
        ],
        suite=latency_suite(),
        pyproject=((STUDENT, "kwargs = { classes = 2 }"),),
    ),
    Case(
        "strict-without-interval",
        "failed",
        [
            "*suites/gate.toml: latency check 'latency' of suite 'gate' failed: speedup = * not entirely >= min 0.01 "
            "(gate: strict; no interval, so no evidence to pass); 1 timed pair is too few for a bootstrap interval *"
        ],
        suite=latency_suite('gate = "strict"\nmax_pairs = 1\nmin = { speedup = 0.01 }\n'),
    ),
    # -- token-level (language-model) data -----------------------------------------------------
    Case(
        "classification-model-on-token-data",
        "error",
        [
            "*suites/gate.toml: agreement check 'agreement' could not be computed: model 'teacher': "
            "forward(input_ids, attention_mask) on a batch of shape (1, 2) failed: *; dataset 'test' holds token "
            "sequences, so model 'teacher' must be a language model (forward(input_ids, attention_mask) -> logits "
            "of shape (batch, length, vocab))"
        ],
        files=(token_npz,),
    ),
    Case(
        "language-model-on-classification-data",
        "error",
        [
            "*suites/gate.toml: agreement check 'agreement' could not be computed: model 'student' sets vocab_size, "
            "which only a language model on token data has, but dataset 'test' holds classification examples; "
            "expected a token dataset (*), or remove vocab_size from [[]tool.distill_eval.models.student]"
        ],
        pyproject=((STUDENT, f"{STUDENT}\nvocab_size = 259"),),
    ),
    Case(
        "token-metric-on-classification-data",
        "error",
        [
            "*suites/gate.toml: agreement check 'agreement' could not be computed: check 'agreement' bounds "
            "perplexity, which kind agreement does not compute on dataset 'test': it holds classification "
            "examples; metrics there: top1, topk, kl, *"
        ],
        suite=SUITE.replace("min = { top1 = 0.5 }", "max = { perplexity = 10 }"),
    ),
    Case(
        "classification-metric-on-token-data",
        "error",
        [
            "*suites/gate.toml: agreement check 'agreement' could not be computed: check 'agreement' bounds kappa, "
            "which kind agreement does not compute on dataset 'test': it holds token sequences; metrics there: "
            "top1, topk, top_k_overlap, *"
        ],
        suite=SUITE.replace("min = { top1 = 0.5 }", "min = { kappa = 0.5 }"),
        files=(token_npz,),
    ),
    Case(
        "prompt-longer-than-sequences",
        "error",
        [
            "*suites/gate.toml: latency check 'latency' could not be computed: check 'latency' (latency): "
            "'prompt_length' = 64 is longer than every sequence of dataset 'test' (the longest has 8 tokens); set "
            "prompt_length to at most 8"
        ],
        suite=latency_suite(),
        files=(token_npz,),
    ),
    Case(
        "position-on-classification-data",
        "error",
        [
            "*suites/gate.toml: slices check 'slices' could not be computed: slice 'start': field 'position' is not "
            "available for this dataset*"
        ],
        suite=slices_suite('{ name = "start", where = "position < 5" }'),
    ),
    Case(
        "stored-regression-on-token-data",
        "error",
        [
            "*suites/gate.toml: regression check 'regression' could not be computed: no accepted baseline at "
            "reports/baseline.json; run `pytest --distill --distill-accept` on the accepted student to create it"
        ],
        suite='[suite]\nname = "gate"\n\n[[check]]\nkind = "regression"\n',
        pyproject=(
            (TEACHER, TEACHER.replace("tiny:build", "tiny_lm:build")),
            (f'factory = "tiny:build"\n{STUDENT}', 'factory = "tiny_lm:build"'),
        ),
        files=(token_lm,),
    ),
    Case(
        "seq-len-without-bytes",
        "usage",
        [
            "ERROR: */pyproject.toml: [[]tool.distill_eval.datasets.test]: 'seq_len' applies only to "
            "source = 'builtin:bytes' (a file's sequences keep their length)"
        ],
        pyproject=((DATASET, f"{DATASET}\nseq_len = 64"),),
    ),
    Case(
        "near-on-token-leakage",
        "error",
        [
            "*suites/gate.toml: leakage check 'leakage' could not be computed: check 'leakage': 'near' applies only "
            "to classification data; on token data (dataset 'test' holds token sequences) shared n-grams ('ngram', "
            "default 13) find the near copies"
        ],
        suite='[suite]\nname = "gate"\n\n[[check]]\nkind = "leakage"\ntrain = "test"\nnear = true\n',
        files=(token_npz,),
    ),
    Case(
        "classification-train-for-token-leakage",
        "error",
        [
            "*suites/gate.toml: leakage check 'leakage' could not be computed: check 'leakage': dataset 'test' holds "
            "token sequences but its 'train' dataset 'train' holds classification examples; expected token data "
            "there too (*)"
        ],
        suite='[suite]\nname = "gate"\n\n[[check]]\nkind = "leakage"\ntrain = "train"\n',
        pyproject=((DATASET, f'{DATASET}\n\n[tool.distill_eval.datasets.train]\npath = "train.npz"'),),
        files=(token_and_classification_train,),
    ),
    Case(
        "ngram-on-classification-data",
        "error",
        [
            "*suites/gate.toml: leakage check 'leakage' could not be computed: check 'leakage': 'ngram' applies only "
            "to token data, and dataset 'test' holds classification examples"
        ],
        suite='[suite]\nname = "gate"\n\n[[check]]\nkind = "leakage"\ntrain = "test"\nngram = 8\n',
    ),
    Case(
        "frequency-rank-on-classification-data",
        "error",
        [
            "*suites/gate.toml: slices check 'slices' could not be computed: slice 'rare': field 'frequency_rank' is "
            "not available for this dataset: it describes tokens of a language-model dataset, and this one holds "
            "classification examples*"
        ],
        suite=slices_suite('{ name = "rare", where = "frequency_rank > 10" }'),
    ),
    Case(
        "frequency-data-on-classification-data",
        "error",
        [
            "*suites/gate.toml: slices check 'slices' could not be computed: check 'slices': 'frequency_data' applies "
            "only to token data (the reference corpus of token_frequency and frequency_rank), and dataset 'test' "
            "holds classification examples"
        ],
        suite=slices_suite('{ name = "a", where = "label == 1" }', 'frequency_data = "test"\n'),
    ),
    Case(
        "unknown-frequency-data",
        "collection",
        [
            "*suites/gate.toml: check 'slices': 'frequency_data' names dataset 'trian', which "
            "[[]tool.distill_eval.datasets[]] does not define (did you mean 'train'?); defined: test, train"
        ],
        suite=slices_suite('{ name = "a", where = "position < 3" }', 'frequency_data = "trian"\n'),
        pyproject=((DATASET, f'{DATASET}\n\n[tool.distill_eval.datasets.train]\npath = "train.npz"'),),
        files=(token_and_classification_train,),
    ),
    Case(
        "frequency-data-not-tokens",
        "error",
        [
            "*suites/gate.toml: slices check 'slices' could not be computed: check 'slices': 'frequency_data' names "
            "dataset 'train', which holds classification examples; expected token sequences over the vocabulary of "
            "'test' (*)"
        ],
        suite=slices_suite('{ name = "a", where = "frequency_rank > 3" }', 'frequency_data = "train"\n'),
        pyproject=((DATASET, f'{DATASET}\n\n[tool.distill_eval.datasets.train]\npath = "train.npz"'),),
        files=(token_and_classification_train,),
    ),
]

#: what pytest-style tracebacks and crash reports look like; none may appear
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|INTERNALERROR|^\s*File \".*\", line \d+|\.py:\d+: \w+")


def make_project(pytester: pytest.Pytester, case: Case) -> None:
    pyproject = PYPROJECT
    for old, new in case.pyproject:
        assert old in pyproject, old
        pyproject = pyproject.replace(old, new, 1)
    pytester.makefile(".toml", pyproject=pyproject)
    pytester.makepyfile(tiny=TINY)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "gate.toml").write_text(case.suite)
    npz("test.npz")(pytester.path)
    for write in case.files:
        write(pytester.path)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_reads_as_one_paragraph(_torch_export_imported: None, pytester: pytest.Pytester, case: Case) -> None:
    _reads_as_one_paragraph(pytester, case)


def _reads_as_one_paragraph(pytester: pytest.Pytester, case: Case) -> None:
    make_project(pytester, case)
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    lines = result.stdout.lines + result.stderr.lines
    # (a) never a pass
    if case.outcome == "collection":
        assert result.ret == pytest.ExitCode.INTERRUPTED
        result.assert_outcomes(errors=1)
    elif case.outcome == "usage":
        assert result.ret == pytest.ExitCode.USAGE_ERROR
    else:
        result.assert_outcomes(**{"errors" if case.outcome == "error" else "failed": 1})
        assert result.ret == pytest.ExitCode.TESTS_FAILED
    # (b) the paragraph names the file, the key and what was expected
    pytest.LineMatcher(lines).fnmatch_lines(case.expected)
    # (c) no traceback, no internal frames
    bad = [line for line in lines if TRACEBACK.search(line)]
    assert not bad, "\n".join(bad)


def test_every_case_is_a_different_mistake() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)


def _readme_catalogue_ids() -> list[str]:
    section = README.read_text().split("\n## When the input is wrong\n", 1)[1].split("\n## ", 1)[0]
    # one table row per entry; its first cell is the case id in backticks
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)


def test_readme_catalogue_matches_the_cases() -> None:
    documented = _readme_catalogue_ids()
    assert len(documented) == len(set(documented)), "an entry is listed twice in the README"
    assert sorted(documented) == sorted(c.id for c in CASES)


class _Payload:
    """Unpickling this creates a folder: proof that a file ran code when it was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (str(self.marker),)


def test_a_pt2_file_cannot_run_a_pickled_payload(tmp_path: Path) -> None:
    # torch.export.load unpickles archive entries marked use_pickle with weights_only=False, so
    # distill_eval refuses such a .pt2 file unless it is trusted (README: Security and trust).
    from distill_eval.config import ModelSpec
    from distill_eval.errors import ModelError
    from distill_eval.models import load_model

    program = torch.export.export(torch.nn.Linear(4, 3), (torch.zeros(2, 4),))
    torch.export.save(program, str(tmp_path / "good.pt2"))
    marker = tmp_path / "payload-ran"
    with zipfile.ZipFile(tmp_path / "good.pt2") as good, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as evil:
        names = good.namelist()
        config = next((n for n in names if n.endswith("/data/weights/model_weights_config.json")), None)
        if config is None:
            pytest.skip("this torch writes .pt2 archives in a layout the payload does not know")
        weights = json.loads(good.read(config))
        first = next(iter(weights["config"].values()))
        for entry in weights["config"].values():
            entry["use_pickle"] = True
        target = config.rsplit("/", 1)[0] + "/" + first["path_name"]
        for info in good.infolist():
            data = good.read(info.filename)
            if info.filename == config:
                data = json.dumps(weights).encode()
            elif info.filename == target:
                data = pickle.dumps(_Payload(marker))
            evil.writestr(info, data)
    with pytest.raises(ModelError) as refused:
        load_model(ModelSpec(name="student", path=tmp_path / "evil.pt2"))
    assert not marker.exists(), "loading the .pt2 file ran the pickled payload"
    message = str(refused.value)
    assert str(tmp_path / "evil.pt2") in message and "model 'student'" in message
    assert "use_pickle" in message and "loading a pickle runs code from the file" in message
    assert "set 'trusted = true' in [tool.distill_eval.models.student]" in message
