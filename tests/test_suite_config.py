"""Suite files and the project table are validated before anything loads, with sentences."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_eval import ConfigError, ExpressionError, load_suite
from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig, load_project_config

PROJECT = ProjectConfig(
    rootdir=Path("."),
    models={"teacher": ModelSpec("teacher"), "student": ModelSpec("student"), "control": ModelSpec("control")},
    datasets={"test": DatasetSpec("test"), "train": DatasetSpec("train")},
)


def suite(tmp_path: Path, text: str, name: str = "gate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(suite(tmp_path, text), PROJECT)
    return str(info.value)


def test_defaults_and_ids(tmp_path: Path) -> None:
    spec = load_suite(
        suite(
            tmp_path,
            '[[check]]\nkind = "agreement"\n[[check]]\nkind = "agreement"\n[[check]]\nkind = "calibration"\n'
            '[[check]]\nkind = "agreement"\n',
        ),
        PROJECT,
    )
    assert spec.name == "gate" and spec.gate == "estimate" and spec.confidence == 0.95
    assert spec.bootstrap == 1000 and spec.seed == 0
    assert [c.id for c in spec.checks] == ["agreement", "agreement-2", "calibration", "agreement-3"]
    assert all(c.teacher == "teacher" and c.student == "student" and c.dataset == "test" for c in spec.checks)
    assert spec.checks[2].params == {"bins": 15, "binning": "uniform"}
    assert spec.checks[0].params == {"k": 5, "temperature": 1.0}


def test_bounds_are_read(tmp_path: Path) -> None:
    spec = load_suite(
        suite(tmp_path, '[[check]]\nkind = "agreement"\nmin = { top1 = 0.95 }\nmax = { kl = 1 }\n'), PROJECT
    )
    (check,) = spec.checks
    assert [(b.metric, b.op, b.value) for b in check.bounds] == [("top1", "min", 0.95), ("kl", "max", 1.0)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[check]]\nkind = "calibraton"\n',
            "check #1: unknown kind 'calibraton' (did you mean 'calibration'?); expected one of",
        ),
        (
            '[[check]]\nkind = "calibration"\nbinz = 10\n',
            "check 'calibration': unknown key 'binz' (did you mean 'bins'?)",
        ),
        (
            '[[check]]\nkind = "calibration"\nmax = { student_ec = 0.1 }\n',
            "check 'calibration': unknown metric 'student_ec' in 'max' (did you mean 'student_ece'?)",
        ),
        (
            '[[check]]\nkind = "calibration"\nbins = "15"\n',
            "check 'calibration': 'bins' must be an integer >= 1, got a string ('15')",
        ),
        ('[[check]]\nkind = "calibration"\nbins = 0\n', "'bins' must be an integer >= 1, got an integer (0)"),
        ('[[check]]\nkind = "calibration"\nbins = true\n', "'bins' must be an integer >= 1, got a boolean (true)"),
        (
            '[[check]]\nkind = "calibration"\nbinning = "quantil"\n',
            "'binning' must be one of 'quantile' or 'uniform', got 'quantil' (did you mean 'quantile'?)",
        ),
        (
            '[[check]]\nkind = "agreement"\nmin = { top1 = "high" }\n',
            "'min.top1' must be a finite number, got a string ('high')",
        ),
        ('[[check]]\nkind = "agreement"\nmin = { top1 = nan }\n', "'min.top1' must be a finite number, got a number"),
        ('[[check]]\nkind = "agreement"\nmax = { kl = inf }\n', "'max.kl' must be a finite number, got a number (inf)"),
        ('[[check]]\nkind = "agreement"\nmax = { kl = -inf }\n', "'max.kl' must be a finite number, got a number (-"),
        (
            '[[check]]\nkind = "agreement"\nid = "a"\n[[check]]\nkind = "calibration"\nid = "a"\n',
            "check 'a': duplicate check id 'a' (also check #1)",
        ),
        (
            '[suite]\ngate = "strickt"\n[[check]]\nkind = "agreement"\n',
            "[suite]: 'gate' must be one of 'estimate', 'lenient' or 'strict', got 'strickt' (did you mean 'strict'?)",
        ),
        (
            '[suite]\nconfidence = 1.5\n[[check]]\nkind = "agreement"\n',
            "'confidence' must be a number in (0, 1), got a number (1.5)",
        ),
        (
            '[suite]\nconfidence = 1\n[[check]]\nkind = "agreement"\n',
            "'confidence' must be a number in (0, 1), got an integer (1)",
        ),
        ('[suite]\nnmae = "x"\n[[check]]\nkind = "agreement"\n', "[suite]: unknown key 'nmae' (did you mean 'name'?)"),
        ('[suite]\nname = "x"\n', "has no [[check]] tables"),
        ('[suite]\nname = "a::b"\n[[check]]\nkind = "agreement"\n', "'name' must be a non-empty name without '::'"),
        ('[[check]]\nkind = "agreement"\nid = "a::b"\n', "'id' must be a non-empty name without '::' or '/'"),
        ('[[checks]]\nkind = "agreement"\n', "unknown key 'checks' (did you mean 'check'?)"),
        (
            '[[check]]\nkind = "agreement"\nstudent = "studnet"\n',
            "check 'agreement': 'student' names model 'studnet', which [tool.distill_eval.models] does not define "
            "(did you mean 'student'?)",
        ),
        ('[[check]]\nkind = "agreement"\ndataset = "tset"\n', "'dataset' names dataset 'tset'"),
        ('[[check]]\nkind = "copied_errors"\ncontrol = "contrl"\n', "'control' names model 'contrl'"),
        (
            '[[check]]\nkind = "copied_errors"\nmax = { known_copied = 0.1 }\n',
            "a bound on 'known_copied' needs 'known_failures'",
        ),
        ('[[check]]\nkind = "slices"\n', "'slices' must list at least one slice"),
        ('[[check]]\nkind = "slices"\nslices = [{ name = "a", where = "label = 1" }]\n', "slice 'a': 'where':"),
        ('[[check]]\nkind = "slices"\nslices = [{ name = "a" }]\n', "give exactly one of 'where'"),
        (
            '[[check]]\nkind = "slices"\nslices = [{ name = "a", where = "label == 1" }, { name = "a", ids = "f" }]\n',
            "duplicate slice name 'a'",
        ),
        ('[[check]]\nkind = "slices"\nslices = [{ name = "a", where = "lable == 1" }]\n', "did you mean 'label'?"),
        ('[[check]]\nkind = "agreement"\nseverity = "fatal"\n', "'severity' must be one of 'error' or 'warn'"),
    ],
)
def test_mistakes_read_as_sentences(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "gate.toml") + ": ")
    assert expected in message


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[[check]]\nkind = "agreement"\nmin = { top1 = }\n')
    assert "not valid TOML" in message and "line 3" in message


def test_expression_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ExpressionError):
        raise ExpressionError("x")
    assert issubclass(ExpressionError, ConfigError)


def test_files_in_params_are_relative_to_the_suite(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    spec = load_suite(
        suite(tmp_path, '[[check]]\nkind = "copied_errors"\nknown_failures = "known.txt"\n', "sub/gate.toml"),
        PROJECT,
    )
    assert spec.checks[0].params["known_failures"] == (tmp_path / "sub" / "known.txt").resolve()


def pyproject(tmp_path: Path, text: str) -> ProjectConfig:
    (tmp_path / "pyproject.toml").write_text(text)
    return load_project_config(tmp_path)


def test_project_config_defaults(tmp_path: Path) -> None:
    config = pyproject(tmp_path, "[project]\nname = 'x'\n")
    assert config.suites == tmp_path / "suites" and config.reports == tmp_path / "reports"
    assert config.cache_dir == tmp_path / ".distill_cache" and config.device == "auto" and config.batch_size == 256
    assert load_project_config(tmp_path / "nowhere").suites == tmp_path / "nowhere" / "suites"


def test_project_config_reads_models_and_datasets(tmp_path: Path) -> None:
    config = pyproject(
        tmp_path,
        """
[tool.distill_eval]
batch_size = 32
[tool.distill_eval.models.teacher]
path = "m/teacher.pt2"
[tool.distill_eval.models.student]
factory = "pkg.mod:build"
weights = "w.pt"
kwargs = { width = 8 }
[tool.distill_eval.datasets.test]
source = "sklearn:iris"
[tool.distill_eval.datasets.csv]
path = "d.csv"
label_column = "target"
""",
    )
    assert config.batch_size == 32
    assert config.models["teacher"].path == tmp_path / "m" / "teacher.pt2"
    assert config.models["student"].weights == tmp_path / "w.pt" and config.models["student"].kwargs == {"width": 8}
    assert config.datasets["test"].source == "sklearn:iris" and config.datasets["test"].split == "test"
    assert config.datasets["csv"].label_column == "target"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[tool.distill_eval]\nbatch_size = 0\n", "[tool.distill_eval]: 'batch_size' must be an integer >= 1"),
        (
            '[tool.distill_eval]\ndevice = "gpu"\n',
            "'device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'",
        ),
        (
            '[tool.distill_eval.models.teacher]\npaht = "x"\n',
            "[tool.distill_eval.models.teacher]: unknown key 'paht' (did you mean 'path'?)",
        ),
        ('[tool.distill_eval.models.teacher]\npath = "a"\nfactory = "m:f"\n', "set either 'path' or 'factory'"),
        ('[tool.distill_eval.models.teacher]\nweights = "w.pt"\n', "'weights' needs a 'factory'"),
        (
            '[tool.distill_eval.models.teacher]\nfactory = "nocolon"\n',
            "'factory' must look like 'package.module:callable'",
        ),
        (
            '[tool.distill_eval.models.teacher]\ntrusted = "yes"\n',
            "'trusted' must be true or false, got a string ('yes')",
        ),
        ('[tool.distill_eval.datasets.test]\nsource = "sklearn:digit"\n', "(did you mean 'sklearn:digits'?)"),
        ('[tool.distill_eval.datasets.test]\npath = "a.npz"\nsplit = "train"\n', "'split' applies only to a built-in"),
        ('[tool.distill_eval.datasets.test]\nsource = "sklearn:iris"\nsplit = "val"\n', "'split' must be one of"),
    ],
)
def test_project_mistakes_read_as_sentences(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        pyproject(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "pyproject.toml"))
    assert expected in str(info.value)
