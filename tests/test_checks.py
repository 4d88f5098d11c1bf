"""Check kinds wired to data: values against independent computations on planted models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import planted
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score

from distill_eval import DistillSession, load_project_config, load_suite
from distill_eval.errors import CheckError, DataError


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    planted.write_project(root, student="good")
    return root


def run(project: Path, text: str, student: str = "good", monkeypatch=None):
    path = project / "suites" / "t.toml"
    path.write_text(text.replace("STUDENT", student))
    config = load_project_config(project)
    suite = load_suite(path, config)
    session = DistillSession(config, use_cache=False)
    return [session.run_check(suite, check) for check in suite.checks]


@pytest.fixture(autouse=True)
def _in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # the lookup factory is imported from the working directory
    monkeypatch.syspath_prepend(str(project))


def value(result, name):
    return result.metrics[name].value


def test_agreement_against_sklearn(project: Path) -> None:
    (r,) = run(project, '[[check]]\nkind = "agreement"\nstudent = "copier"\n')
    data = planted.scenario()
    t, s, y = data["teacher"].argmax(1), data["copier"].argmax(1), data["y"]
    assert value(r, "top1") == pytest.approx(np.mean(t == s))
    assert value(r, "kappa") == pytest.approx(cohen_kappa_score(t, s))
    assert value(r, "student_accuracy") == pytest.approx(accuracy_score(y, s))
    assert value(r, "teacher_accuracy") == pytest.approx(0.9)
    assert value(r, "accuracy_gap") == pytest.approx(0.9 - accuracy_score(y, s))
    assert value(r, "accuracy_retention") == pytest.approx(accuracy_score(y, s) / 0.9)


def test_calibration_of_an_overconfident_student(project: Path) -> None:
    good, over = (
        run(project, '[[check]]\nkind = "calibration"\nstudent = "STUDENT"\n', m)[0] for m in ("good", "overconfident")
    )
    data = planted.scenario()
    acc = np.mean(data["good"].argmax(1) == data["y"])
    # good says p = 0.88 everywhere: one bin, ECE = |accuracy - 0.88|
    assert value(good, "student_ece") == pytest.approx(abs(acc - 0.88), abs=1e-6)
    assert value(good, "teacher_ece") == pytest.approx(0.0, abs=1e-6)  # right on exactly 90%, says 0.9
    assert value(good, "ece_gap") == pytest.approx(value(good, "student_ece") - value(good, "teacher_ece"))
    # logits x 4: p = 1 / (1 + 9 * (0.12/9 / 0.88)^4) on the prediction
    p = 1 / (1 + 9 * ((0.12 / 9) / 0.88) ** 4)
    assert value(over, "student_ece") == pytest.approx(abs(acc - p), abs=1e-6)
    # good is calibrated by construction (says 0.88, right with probability 0.88): its interval reaches 0;
    # the overconfident one's interval excludes 0 and holds its true ECE, |0.88 - p|
    assert good.metrics["student_ece"].ci[0] == 0.0
    low, high = over.metrics["student_ece"].ci
    assert 0 < low <= abs(0.88 - p) <= high
    # temperature scaling undoes the x 4: T close to 4, calibration restored
    assert value(over, "student_temperature") == pytest.approx(4.0, rel=0.1)
    assert value(over, "student_ece_after_temperature") < 0.02


def test_copied_errors_against_hand_counts(project: Path, tmp_path: Path) -> None:
    data = planted.scenario()
    y, t = data["y"], data["teacher"].argmax(1)
    known = np.flatnonzero(t != y)[:10]
    (project / "suites" / "known.txt").write_text("\n".join(str(i) for i in known) + "\n")
    text = '[[check]]\nkind = "copied_errors"\nstudent = "STUDENT"\nknown_failures = "known.txt"\ncontrol = "good"\n'
    (copier,) = run(project, text, "copier")
    s = data["copier"].argmax(1)
    wrong = t != y
    assert value(copier, "teacher_errors") == wrong.sum() == 300
    assert value(copier, "copy_rate") == 1.0
    assert value(copier, "copied_share") == pytest.approx(np.sum(wrong) / np.sum(s != y))
    assert value(copier, "known_copied") == 1.0
    good_s = data["good"].argmax(1)
    assert value(copier, "control_copy_rate") == pytest.approx(np.mean(good_s[wrong] == t[wrong]))
    assert value(copier, "copy_lift") > 10 and value(copier, "copy_p_value") < 0.01
    for name, metric in copier.metrics.items():
        if metric.ci is not None:
            assert metric.ci[0] <= metric.value <= metric.ci[1], name
    (good,) = run(project, text, "good")
    assert value(good, "copy_rate") == pytest.approx(np.mean(good_s[wrong] == t[wrong]))
    assert 0.3 < value(good, "copy_lift") < 3  # errs independently of the teacher: about chance
    assert value(good, "copy_p_value") > 0.01
    # same accuracy, told apart by error consistency too: the copier errs where the teacher errs
    assert value(copier, "error_consistency") > 0.5 > 0.1 > abs(value(good, "error_consistency"))
    assert good.metrics["error_consistency"].ci[0] < 0 < good.metrics["error_consistency"].ci[1]


def test_unknown_ids_in_a_known_failures_file_are_an_error(project: Path) -> None:
    (project / "suites" / "known.txt").write_text("0\nnot-an-id\n")
    with pytest.raises(DataError, match=r"names 1 id.s. that are not in dataset 'test', e.g. 'not-an-id'"):
        run(project, '[[check]]\nkind = "copied_errors"\nknown_failures = "known.txt"\n')


def test_ids_slices_and_under_support(project: Path) -> None:
    (project / "suites" / "few.txt").write_text("1\n2\n3\n")
    text = """
[[check]]
kind = "slices"
min_support = 30
slices = [{ name = "few", ids = "few.txt" }, { name = "wrong-teacher", where = "not teacher_correct" }]
min = { student_score = 0.0 }
"""
    (r,) = run(project, text)
    few, wrong = r.slices
    assert few.support == 3 and few.under_supported
    assert wrong.support == 300 and wrong.metrics["teacher_score"].value == 0.0
    assert wrong.metrics["retention"].value is None  # undefined: the teacher scores 0 there
    assert r.outcome == "failed"
    assert "support of slice 'few' = 3 < min 30" in r.message


def test_bounding_an_undefined_slice_metric_is_an_error(project: Path) -> None:
    text = """
[[check]]
kind = "slices"
slices = [{ name = "wrong-teacher", where = "not teacher_correct" }]
min = { retention = 0.5 }
"""
    with pytest.raises(CheckError, match="retention of slice 'wrong-teacher': it is undefined"):
        run(project, text)


def test_agreement_slices(project: Path) -> None:
    text = """
[[check]]
kind = "slices"
student = "STUDENT"
metric = "agreement"
slices = [{ name = "confident", where = "student_conf >= 0.5 and meta.group in ['a', 'b']" }]
"""
    (r,) = run(project, text, "copier")
    (sl,) = r.slices
    data = planted.scenario()
    agree = np.mean(data["teacher"].argmax(1) == data["copier"].argmax(1))
    assert sl.support == planted.N
    assert sl.metrics["student_score"].value == pytest.approx(agree)
    assert sl.metrics["teacher_score"].value == 1.0 and sl.metrics["retention"].value == pytest.approx(agree)


def test_one_slice_interval_is_the_same_whatever_the_other_slice(project: Path) -> None:
    # slice A is fixed; slice B changes: A's intervals must not move (its resamples are its own)
    def slice_a(other: str):
        text = f"""
[[check]]
kind = "slices"
student = "overconfident"
min_support = 1
slices = [{{ name = "a", where = "meta.group == 'a'" }}, {{ name = "b", where = "{other}" }}]
"""
        (r,) = run(project, text)
        a, b = r.slices
        return a.metrics, b.metrics

    a1, b1 = slice_a("student_conf >= 0.5")
    a2, b2 = slice_a("not teacher_correct or meta.group == 'b'")
    assert b1["gap"] != b2["gap"]
    for name in ("retention", "gap"):
        assert a1[name].ci is not None and a1[name] == a2[name]  # bit for bit
