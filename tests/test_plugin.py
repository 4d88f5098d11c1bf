"""The plugin through the user's door: real pytest sessions over real suite files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import digits
import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from distill_eval.data import load_builtin
from distill_eval.models import torchscript_deprecation_ignored
from distill_eval.train import zoo

WEIGHTS = digits.WEIGHTS

PYPROJECT = digits.pyproject(dataset='source = "sklearn:digits"')

GATE = """
[suite]
name = "release-gate"

[[check]]
kind = "calibration"
max = { student_ece = 0.05 }

[[check]]
kind = "agreement"
min = { top1 = 0.95 }
"""


def write(pytester: pytest.Pytester, suites: dict[str, str], pyproject: str = PYPROJECT) -> None:
    pytester.makefile(".toml", pyproject=pyproject)
    (pytester.path / "suites").mkdir(exist_ok=True)
    for name, text in suites.items():
        (pytester.path / "suites" / f"{name}.toml").write_text(text)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def results(pytester: pytest.Pytester, folder: str = "reports") -> dict:
    return json.loads((pytester.path / folder / "results.json").read_text())


def test_without_distill_the_plugin_changes_nothing(pytester: pytest.Pytester) -> None:
    write(pytester, {"broken": "this is [not toml"})
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


def test_no_paths_collects_the_suites_folder_not_testpaths(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE}, PYPROJECT + '\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    result = run(pytester, "--distill", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        ["suites/gate.toml::release-gate::calibration", "suites/gate.toml::release-gate::agreement"]
    )
    result.stdout.no_fnmatch_line("*test_x*")


def test_end_to_end_passes_and_writes_reports(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    result = run(pytester, "--distill")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "distill_eval: teacher on test: 540 examples in * s (cpu)",
            "distill_eval: student on test: 540 examples in * s (cpu)",
            "verdict: passed; reports written to reports/ (results.json, summary.md, report.html)",
        ]
    )
    doc = results(pytester)
    assert doc["schema"] == 1 and doc["verdict"] == "passed"
    assert set(doc["models"]) == {"teacher", "student"}
    assert doc["models"]["teacher"]["params"] == sum(p.numel() for p in zoo.digits_teacher().parameters())
    assert len(doc["models"]["student"]["sha256"]) == 64
    assert doc["datasets"]["test"] == {
        "source": "sklearn:digits",
        "sha256": doc["datasets"]["test"]["sha256"],
        "n": 540,
    }
    (suite,) = doc["suites"]
    assert suite["name"] == "release-gate" and suite["gate"] == "estimate"
    assert [c["id"] for c in suite["checks"]] == ["calibration", "agreement"]
    for check in suite["checks"]:
        assert all(set(m) >= {"value", "ci"} for m in check["metrics"].values())
        assert all(set(b) >= {"metric", "op", "bound", "ok"} for b in check["bounds"])
    summary = (pytester.path / "reports" / "summary.md").read_text()
    assert "| release-gate | calibration | calibration |" in summary
    assert "<html" in (pytester.path / "reports" / "report.html").read_text()


def test_second_run_reads_the_cache_and_agrees(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    run(pytester, "--distill").assert_outcomes(passed=2)
    first = results(pytester)
    result = run(pytester, "--distill")
    result.stdout.fnmatch_lines(["distill_eval: teacher on test: 540 examples from cache"])
    second = results(pytester)
    assert first["suites"][0]["checks"][0]["metrics"] == second["suites"][0]["checks"][0]["metrics"]
    result = run(pytester, "--distill", "--distill-no-cache")
    result.stdout.fnmatch_lines(["distill_eval: teacher on test: 540 examples in * s (cpu)"])


def test_quiet_run_prints_no_progress(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    result = run(pytester, "--distill", "-q")
    result.stdout.no_fnmatch_line("*distill_eval: teacher*")


def test_k_selects_checks_and_explicit_paths_work(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE, "other": GATE.replace("release-gate", "other")})
    run(pytester, "--distill", "-k", "agreement").assert_outcomes(passed=2)
    run(pytester, "--distill", "suites/other.toml").assert_outcomes(passed=2)
    result = run(pytester, "--distill", "suites/other.toml::other::calibration")
    result.assert_outcomes(passed=1)


def test_k_matches_the_kind_even_with_a_custom_id(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE.replace('kind = "calibration"', 'kind = "calibration"\nid = "ece"')})
    result = run(pytester, "--distill", "-k", "calibration", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["suites/gate.toml::release-gate::ece"])


def test_a_toml_outside_the_suites_folder_is_a_suite_only_when_named(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    (pytester.path / "elsewhere.toml").write_text(GATE.replace("release-gate", "elsewhere"))
    result = run(pytester, "--distill", ".", "--collect-only", "-q")
    result.stdout.no_fnmatch_line("*elsewhere*")
    result.stdout.no_fnmatch_line("*pyproject*")
    run(pytester, "--distill", "elsewhere.toml").assert_outcomes(passed=2)


def test_junitxml_names_each_check(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE.replace("student_ece = 0.05", "student_ece = 0.001")})
    run(pytester, "--distill", "--junitxml=junit.xml").assert_outcomes(passed=1, failed=1)
    xml = (pytester.path / "junit.xml").read_text()
    assert 'name="calibration"' in xml and 'name="agreement"' in xml
    assert "student_ece = " in xml and "&gt; max 0.001 (gate: estimate)" in xml


def test_broken_bound_fails_with_a_sentence(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE.replace("top1 = 0.95", "top1 = 0.999")})
    result = run(pytester, "--distill")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*agreement check 'agreement' of suite 'release-gate' failed: "
            "top1 = 0.99* [[]0.9*, *[]] < min 0.999 (gate: estimate)*"
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert result.ret == 1
    doc = results(pytester)
    assert doc["verdict"] == "failed"
    (bound,) = [b for c in doc["suites"][0]["checks"] for b in c["bounds"] if not b["ok"]]
    assert {k: bound[k] for k in ("metric", "op", "bound", "ok")} == {
        "metric": "top1",
        "op": "min",
        "bound": 0.999,
        "ok": False,
    }
    # top-1 agreement is a proportion: its interval is Wilson's
    agree = round(bound["value"] * 540)
    expected = binomtest(agree, 540).proportion_ci(confidence_level=0.95, method="wilson")
    assert bound["ci"] == pytest.approx([expected.low, expected.high])


def test_severity_warn_warns_and_does_not_fail(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        {
            "gate": GATE.replace("top1 = 0.95", "top1 = 0.999").replace(
                'kind = "agreement"', 'kind = "agreement"\nseverity = "warn"'
            )
        },
    )
    # `-W default`: our own test config turns warnings into errors; a user's usually does not
    result = run(pytester, "--distill", "-W", "default")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*DistillWarning: agreement: top1 = * < min 0.999*"])
    assert result.ret == 0
    doc = results(pytester)
    assert [c["outcome"] for c in doc["suites"][0]["checks"]] == ["passed", "warned"]
    assert doc["verdict"] == "passed"


def test_a_check_that_cannot_be_computed_is_an_error_not_a_failure(pytester: pytest.Pytester) -> None:
    (pytester.path / "corrupt.pt").write_bytes(b"these are not weights")
    write(pytester, {"gate": GATE}, PYPROJECT.replace(str(WEIGHTS / "digits_student.pt"), "corrupt.pt"))
    result = run(pytester, "--distill")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*could not be computed: model 'student': *corrupt.pt*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    doc = results(pytester)
    assert doc["verdict"] == "error"
    assert {c["outcome"] for c in doc["suites"][0]["checks"]} == {"error"}


def test_labels_outside_the_class_count_are_an_error(pytester: pytest.Pytester) -> None:
    data = load_builtin("sklearn:digits")
    np.savez(pytester.path / "bad.npz", x=data.x, y=data.y + 5)
    write(pytester, {"gate": GATE}, PYPROJECT.replace('source = "sklearn:digits"', 'path = "bad.npz"'))
    result = run(pytester, "--distill")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*dataset 'test' (*) has label 14, but model 'teacher' outputs only 10 classes*"])


def test_class_count_mismatch_names_both_models_and_shapes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(narrow="from distill_eval.train.zoo import mlp\n\ndef build():\n    return mlp(64, (8,), 7)\n")
    pyproject = PYPROJECT.replace(
        f'factory = "distill_eval.train.zoo:digits_student"\nweights = "{WEIGHTS / "digits_student.pt"}"',
        'factory = "narrow:build"',
    )
    write(pytester, {"gate": GATE.replace("max = { student_ece = 0.05 }", "")}, pyproject)
    result = run(pytester, "--distill")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*models 'teacher' and 'student' disagree on the number of classes: 'teacher' outputs shape (540, 10), "
            "'student' outputs shape (540, 7)*"
        ]
    )


def test_suite_mistakes_are_collection_errors_with_a_suggestion(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE.replace("student_ece", "student_ec")})
    result = run(pytester, "--distill")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*suites/gate.toml: check 'calibration': unknown metric 'student_ec' in 'max' (did you mean 'student_ece'?)*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_pyproject_mistakes_are_usage_errors(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE}, PYPROJECT.replace('device = "cpu"', 'devise = "cpu"'))
    result = run(pytester, "--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]tool.distill_eval[]]: unknown key 'devise' (did you mean 'device'?)*"])


def test_options_are_validated(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    result = run(pytester, "--distill", "--distill-model", "student")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--distill-model expects NAME=PATH, got 'student'*"])
    result = run(pytester, "--distill", "--distill-student", "a.pt", "--distill-model", "student=b.pt")
    result.stderr.fnmatch_lines(["*--distill-student and --distill-model student=... both set model 'student'*"])
    result = run(pytester, "--distill", "--distill-gate", "sloppy")
    result.stderr.fnmatch_lines(["*--distill-gate: invalid choice: 'sloppy'*"])


def test_missing_suites_folder_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    result = run(pytester, "--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the suites folder * does not exist*"])


def _save_torchscript(module: torch.nn.Module, path: Path) -> None:
    with torchscript_deprecation_ignored():
        torch.jit.script(module.eval()).save(str(path))


def _digits_module(role: str) -> torch.nn.Module:
    module = {"teacher": zoo.digits_teacher, "student": zoo.digits_student}[role]()
    module.load_state_dict(torch.load(WEIGHTS / f"digits_{role}.pt", weights_only=True))
    return module


def test_users_own_torchscript_models_and_npz(pytester: pytest.Pytester) -> None:
    for role in ("teacher", "student"):
        _save_torchscript(_digits_module(role), pytester.path / f"{role}.pt")
    data = load_builtin("sklearn:digits")
    np.savez(pytester.path / "test.npz", x=data.x, y=data.y, ids=data.ids)
    pyproject = """
[tool.distill_eval.models.teacher]
path = "teacher.pt"
[tool.distill_eval.models.student]
path = "student.pt"
[tool.distill_eval.datasets.test]
path = "test.npz"
"""
    write(pytester, {"gate": GATE}, pyproject)
    # torch 2.13 says TorchScript is deprecated with a DeprecationWarning, 2.14 with a FutureWarning
    result = run(pytester, "--distill", "-W", "error::DeprecationWarning", "-W", "error::FutureWarning")
    result.assert_outcomes(passed=2)
    doc = results(pytester)
    assert doc["models"]["teacher"]["format"] == "torchscript"
    # The same numbers as the factory-loaded models of the built-in default.
    write(pytester, {"gate": GATE})
    run(pytester, "--distill", "--distill-reports", "factory").assert_outcomes(passed=2)
    for mine, builtin in zip(
        doc["suites"][0]["checks"], results(pytester, "factory")["suites"][0]["checks"], strict=True
    ):
        for name, metric in mine["metrics"].items():
            assert metric["value"] == pytest.approx(builtin["metrics"][name]["value"], rel=1e-5, abs=1e-7), name


def test_command_line_overrides_a_model(pytester: pytest.Pytester) -> None:
    _save_torchscript(_digits_module("teacher"), pytester.path / "teacher_as_student.pt")
    write(pytester, {"gate": GATE})
    run(pytester, "--distill", "--distill-student", "teacher_as_student.pt").assert_outcomes(passed=2)
    doc = results(pytester)
    assert doc["models"]["student"]["path"].endswith("teacher_as_student.pt")
    agreement = doc["suites"][0]["checks"][1]["metrics"]
    assert agreement["top1"]["value"] == 1.0
    assert agreement["kl"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_conftest_hook_loads_a_model(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        f"""
import torch
from distill_eval.train import zoo

LOADED = []

def pytest_distill_load_model(name, spec, config):
    if name != "student":
        return None
    LOADED.append(spec.table["options"]["tag"])
    model = zoo.digits_student()
    model.load_state_dict(torch.load(r"{WEIGHTS / "digits_student.pt"}", weights_only=True))
    return model

def pytest_sessionfinish(session):
    assert LOADED == ["custom"], LOADED
"""
    )
    pyproject = PYPROJECT.replace(
        f'factory = "distill_eval.train.zoo:digits_student"\nweights = "{WEIGHTS / "digits_student.pt"}"',
        'options = { tag = "custom" }',
    )
    write(pytester, {"gate": GATE}, pyproject)
    result = run(pytester, "--distill")
    result.assert_outcomes(passed=2)
    assert results(pytester)["models"]["student"]["format"] == "hook"


def test_a_model_no_selected_check_uses_is_never_loaded(pytester: pytest.Pytester) -> None:
    (pytester.path / "control.pt").write_bytes(b"not a model")
    pyproject = PYPROJECT + '\n[tool.distill_eval.models.control]\npath = "control.pt"\n'
    suite = GATE + '\n[[check]]\nkind = "copied_errors"\ncontrol = "control"\n'
    write(pytester, {"gate": suite}, pyproject)
    run(pytester, "--distill", "-k", "not copied_errors").assert_outcomes(passed=2)
    result = run(pytester, "--distill", "-k", "copied_errors")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*model 'control'*control.pt*"])


def test_github_step_summary_is_appended(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = pytester.path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write(pytester, {"gate": GATE})
    run(pytester, "--distill").assert_outcomes(passed=2)
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "| release-gate | agreement | agreement |" in text


def test_conftest_hook_loads_a_dataset(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
from distill_eval.data import load_builtin

def pytest_distill_load_dataset(name, spec, config):
    data = load_builtin("sklearn:digits", split="test", name=name)
    keep = data.y < 5  # only digits 0-4: the hook decides what the data is
    return type(data)(name=name, x=data.x[keep], y=data.y[keep], ids=data.ids[keep], source="hook", sha256="h")
"""
    )
    write(pytester, {"gate": GATE}, PYPROJECT.replace('source = "sklearn:digits"', 'options = { from = "hook" }'))
    run(pytester, "--distill").assert_outcomes(passed=2)
    digits = load_builtin("sklearn:digits")
    assert results(pytester)["datasets"]["test"]["n"] == int((digits.y < 5).sum())


def test_a_hook_returning_the_wrong_type_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("def pytest_distill_load_dataset(name, spec, config):\n    return [1, 2, 3]\n")
    write(pytester, {"gate": GATE})
    result = run(pytester, "--distill")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*pytest_distill_load_dataset returned list for dataset 'test'; expected*"])


def test_a_student_outside_the_project_given_with_a_space(pytester: pytest.Pytester) -> None:
    # pytest decides its rootdir before our options exist, so the value of `--distill-student PATH`
    # looks like a path to it; the project config must still be found.
    outside = pytester.path.parent / f"{pytester.path.name}-artifacts"
    outside.mkdir()
    _save_torchscript(_digits_module("student"), outside / "student.pt")
    write(pytester, {"gate": GATE})
    result = run(pytester, "--distill", "--distill-student", str(outside / "student.pt"))
    result.assert_outcomes(passed=2)
    assert results(pytester)["models"]["student"]["format"] == "torchscript"


def test_a_warm_run_reports_the_models_format_and_size_from_the_cache(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    run(pytester, "--distill").assert_outcomes(passed=2)
    cold = results(pytester)["models"]
    run(pytester, "--distill").assert_outcomes(passed=2)
    warm = results(pytester)["models"]
    assert warm["student"]["loaded"] is False
    assert warm["student"]["format"] == cold["student"]["format"] == "factory"
    assert warm["teacher"]["params"] == cold["teacher"]["params"] == 85002


def test_an_override_of_an_unknown_model_or_dataset_is_a_usage_error(pytester: pytest.Pytester) -> None:
    # a misspelt name must not leave the configured student in place, gated as if it were the candidate
    _save_torchscript(_digits_module("teacher"), pytester.path / "candidate.pt")
    write(pytester, {"gate": GATE})
    result = run(pytester, "--distill", "--distill-model", "studnet=candidate.pt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--distill-model studnet=... names model 'studnet'*(did you mean 'student'?); defined: 'student' or *"]
    )
    assert not (pytester.path / "reports").exists()
    result = run(pytester, "--distill", "--distill-dataset", "tset=sklearn:iris")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--distill-dataset tset=... names dataset 'tset'*(did you mean 'test'?)*"])


SEVERITY_WARN = GATE.replace("top1 = 0.95", "top1 = 0.999").replace(
    'kind = "agreement"', 'kind = "agreement"\nseverity = "warn"'
)


@pytest.mark.parametrize("how", [("-W", "error"), ("-o", "filterwarnings=error")])
def test_a_warn_check_a_warnings_filter_fails_is_recorded_failed(
    pytester: pytest.Pytester, how: tuple[str, str]
) -> None:
    write(pytester, {"gate": SEVERITY_WARN})
    result = run(pytester, "--distill", *how)
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*verdict: failed;*"])
    doc = results(pytester)
    assert doc["verdict"] == "failed"
    assert [c["outcome"] for c in doc["suites"][0]["checks"]] == ["passed", "failed"]
    assert "warnings filter" in doc["suites"][0]["checks"][1]["message"]
    assert doc["counts"]["failed"] == 1 and doc["counts"]["warned"] == 0


def test_run_from_a_subdirectory_imports_the_project_and_keeps_ids(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the student's factory is a module in the project root, which `cd suites` takes off sys.path
    (pytester.path / "mymodels.py").write_text(
        "from distill_eval.train.zoo import digits_student\n\ndef student(**kw):\n    return digits_student(**kw)\n"
    )
    write(pytester, {"gate": GATE}, PYPROJECT.replace("distill_eval.train.zoo:digits_student", "mymodels:student"))
    (pytester.path / "suites" / "conftest.py").write_text(
        "import sys\n\ndef pytest_sessionfinish(session):\n"
        "    with open(session.config.rootpath / 'path.txt', 'w') as f:\n"
        "        f.write(repr(sys.path))\n"
    )
    from_root = run(pytester, "--distill", "--distill-no-cache", "--junitxml=root.xml")
    from_root.assert_outcomes(passed=2)
    root_doc = results(pytester)
    monkeypatch.chdir(pytester.path / "suites")
    before = list(sys.path)
    result = run(pytester, "--distill", "--distill-no-cache", "--junitxml=../sub.xml")
    after = list(sys.path)
    result.assert_outcomes(passed=2)
    assert after == before  # the project root came off sys.path again
    assert str(pytester.path) in (pytester.path / "path.txt").read_text()
    doc = results(pytester)
    assert [s["file"] for s in doc["suites"]] == [s["file"] for s in root_doc["suites"]] == ["suites/gate.toml"]
    assert doc["suites"][0]["checks"][1]["metrics"] == root_doc["suites"][0]["checks"][1]["metrics"]
    for xml in ("root.xml", "sub.xml"):
        assert 'classname="suites.gate.toml.release-gate"' in (pytester.path / xml).read_text()


def test_missing_files_are_reported_together_before_any_check_runs(pytester: pytest.Pytester) -> None:
    pyproject = PYPROJECT.replace("digits_student.pt", "gone.pt").replace(
        'source = "sklearn:digits"', 'path = "no.npz"'
    )
    pyproject += '\n[tool.distill_eval.models.unused]\npath = "also-gone.pt"\n'
    write(pytester, {"gate": GATE}, pyproject)
    result = run(pytester, "--distill")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: 2 file(s) the selected checks need do not exist; no check ran:",
            "  model 'student': weights file not found: *gone.pt",
            "  dataset 'test': file not found: *no.npz",
            "fix the paths in [[]tool.distill_eval[]] of pyproject.toml or on the command line",
        ]
    )
    assert "also-gone" not in result.stderr.str()  # a model no selected check uses is not needed
    assert not (pytester.path / "reports").exists()


def test_a_suite_named_without_distill_hints_the_flag(pytester: pytest.Pytester) -> None:
    write(pytester, {"gate": GATE})
    for target in ("suites/gate.toml", "suites/gate.toml::release-gate::agreement"):
        result = run(pytester, target)
        # a collection error (a usage error when node names follow): never a pass, never "no tests ran"
        assert result.ret in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR)
        result.stdout.fnmatch_lines(
            [
                "suites/gate.toml is a distill_eval suite; its checks run only with --distill: "
                "python -m pytest --distill suites/gate.toml"
            ]
        )
    assert not (pytester.path / "reports").exists()
