"""Bad data is blamed on the data: non-finite inputs, labels left among the features, no labels for a check."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from distill_eval import DistillSession, load_project_config, load_suite
from distill_eval.config import DatasetSpec
from distill_eval.data import load_dataset
from distill_eval.errors import CheckError, DataError, DistillWarning

TINY = """
import torch

LOADED = []


def build(classes=3):
    torch.manual_seed(0)
    return torch.nn.Linear(4, classes)


def boom():
    raise RuntimeError("the model was loaded")
"""

PYPROJECT = """
[tool.distill_eval]
device = "cpu"

[tool.distill_eval.models.teacher]
factory = "baddata_models:{factory}"

[tool.distill_eval.models.student]
factory = "baddata_models:{factory}"

[tool.distill_eval.datasets.test]
path = "{data}"
"""


def _project(root: Path, data: str, factory: str = "build") -> Path:
    (root / "pyproject.toml").write_text(PYPROJECT.format(factory=factory, data=data))
    (root / "baddata_models.py").write_text(TINY)
    (root / "suites").mkdir()
    return root


def _run(root: Path, suite: str) -> DistillSession:
    path = root / "suites" / "gate.toml"
    path.write_text(suite)
    config = load_project_config(root)
    session = DistillSession(config, use_cache=False)
    (check,) = load_suite(path, config).checks
    session.run_check(load_suite(path, config), check)
    return session


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _arrays(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 4), dtype=np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_a_data_error_naming_file_field_and_ids(project_dir: Path, bad: float) -> None:
    x, y = _arrays()
    rows = [3, 8, 9, 20, 21, 30, 41]
    x[rows, 1] = bad
    np.savez(project_dir / "test.npz", x=x, y=y, ids=np.array([f"ex-{i}" for i in range(len(x))]))
    _project(project_dir, "test.npz", factory="boom")  # loading a model would fail: it must not be needed
    with pytest.raises(DataError) as info:
        _run(project_dir, '[[check]]\nkind = "agreement"\n')
    message = str(info.value)
    assert str(project_dir / "test.npz") in message
    assert "field 'x' holds NaN or infinite values in 7 of 60 example(s)" in message
    assert "ids 'ex-3', 'ex-8', 'ex-9', 'ex-20', 'ex-21' and 2 more" in message
    assert "logits" not in message


def test_finite_inputs_reach_the_model(project_dir: Path) -> None:
    x, y = _arrays()
    np.savez(project_dir / "test.npz", x=x, y=y)
    _project(project_dir, "test.npz")
    session = _run(project_dir, '[[check]]\nkind = "agreement"\n')
    assert session.results == [] and set(session._models) == {"teacher", "student"}


@pytest.mark.parametrize("column", ["target", "y", "class", "label", "labels", "Target"])
def test_a_csv_label_column_left_among_the_features_warns(tmp_path: Path, column: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(f"a,b,{column}\n0.1,0.2,1\n0.3,0.4,0\n")
    label_column = "y_true" if column == "label" else "label"
    with pytest.warns(DistillWarning) as caught:
        data = load_dataset(DatasetSpec(name="d", path=path, label_column=label_column))
    assert data.y is None and data.x.shape == (2, 3)
    (warning,) = caught
    message = str(warning.message)
    assert str(path) in message and f"column '{column}' is read as a feature" in message
    assert f'set label_column = "{column}" in [tool.distill_eval.datasets.d]' in message


def test_a_csv_with_its_labels_configured_or_no_label_like_column_does_not_warn(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,target\n0.1,0.2,1\n0.3,0.4,0\n")
    other = tmp_path / "e.csv"
    other.write_text("a,b,c\n0.1,0.2,1\n0.3,0.4,0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(DatasetSpec(name="d", path=path, label_column="target")).y.tolist() == [1, 0]
        assert load_dataset(DatasetSpec(name="e", path=other)).y is None


@pytest.mark.parametrize(
    "check",
    [
        'kind = "calibration"',
        'kind = "copied_errors"',
        'kind = "slices"\nslices = [{ name = "all", where = "teacher_conf >= 0" }]',
        'kind = "agreement"\nmin = { student_accuracy = 0.5 }',
    ],
)
def test_a_check_that_needs_labels_says_so_before_any_model_loads(project_dir: Path, check: str) -> None:
    x, _ = _arrays()
    np.savez(project_dir / "test.npz", x=x)
    _project(project_dir, "test.npz", factory="boom")  # a model load raises RuntimeError, not CheckError
    with pytest.raises(CheckError) as info:
        _run(project_dir, f"[[check]]\n{check}\n")
    message = str(info.value)
    kind = check.split('"')[1]
    assert f"check '{kind}' ({kind}) needs labels, but dataset 'test' ({project_dir / 'test.npz'}) has none" in message
    assert "label_column" in message


def test_a_csv_with_a_target_column_warns_and_a_check_needing_labels_errors(pytester: pytest.Pytester) -> None:
    x, y = _arrays()
    rows = ["a,b,c,d,target"] + [
        ",".join(f"{v:.4f}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)
    ]
    (pytester.path / "test.csv").write_text("\n".join(rows) + "\n")
    _project(pytester.path, "test.csv")
    (pytester.path / "suites" / "gate.toml").write_text('[[check]]\nkind = "calibration"\n')
    # shown as a warning (this suite's own filterwarnings = error would make it an error)
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill", "-W", "always::distill_eval.DistillWarning")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*calibration check 'calibration' could not be computed: check 'calibration' (calibration) needs labels, "
            "but dataset 'test' (*test.csv) has none*",
            "*DistillWarning: dataset 'test': *test.csv has no column 'label' (label_column), so column 'target' is "
            "read as a feature and the dataset has no labels; if 'target' holds the labels, "
            'set label_column = "target" in [[]tool.distill_eval.datasets.test[]]',
        ]
    )
