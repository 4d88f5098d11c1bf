"""Each model's cached per-token summary: a second student is evaluated without running the teacher again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lm_plugin import FACTORY, PYPROJECT, _teacher_samples

from distill_eval.cli import main
from distill_eval.lm.session import model_stats_key
from distill_eval.lm.tokens import token_dataset

#: the teacher of the tiny LM, wrapped to log every forward call to a file
COUNTED = """
import tiny_lm


def build(log, **kwargs):
    model = tiny_lm.build(**kwargs)
    forward = model.forward

    def counted(input_ids, attention_mask):
        with open(log, "a") as f:
            f.write(f"{len(input_ids)}\\n")
        return forward(input_ids, attention_mask)

    model.forward = counted
    return model
"""

MODELS = PYPROJECT.replace(
    '[tool.distill_eval.models.teacher]\nfactory = "tiny_lm:build"',
    '[tool.distill_eval.models.teacher]\nfactory = "counted:build"\nkwargs = { log = "teacher.log" }\n'
    'weights = "teacher.pt"',
) + ('\n[tool.distill_eval.models.student2]\nfactory = "tiny_lm:build"\nkwargs = { noise = 0.3, seed = 2 }\n')

SUITE = """
[suite]
name = "second-student"
dataset = "tokens"
student = "{student}"
bootstrap = 200

[[check]]
id = "agreement"
kind = "agreement"
min = {{ top1 = 0.1 }}{kl}

[[check]]
id = "calibration"
kind = "calibration"

[[check]]
id = "copied"
kind = "copied_errors"

[[check]]
id = "slices"
kind = "slices"
min_support = 1
slices = [
    {{ name = "sure", where = "teacher_margin > quantile(teacher_margin, 0.5)" }},
    {{ name = "start", where = "position < 5" }},
]
"""

DIVERGENCES = ("kl", "reverse_kl", "js", "tvd", "kl_p90", "kl_p99")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    assert "counted:build" in MODELS
    pytester.makepyfile(tiny_lm=FACTORY, counted=COUNTED)
    pytester.makefile(".toml", pyproject=MODELS)
    namespace: dict = {}
    exec(FACTORY, namespace)
    torch.save(namespace["build"]().state_dict(), pytester.path / "teacher.pt")  # files key the teacher's summary
    ids = _teacher_samples(30, 20)
    np.savez(pytester.path / "tokens.npz", input_ids=ids)
    (pytester.path / "suites").mkdir()
    return pytester


def _run(project: pytest.Pytester, student: str, *args: str, kl: bool = False) -> dict[str, dict]:
    suite = SUITE.format(student=student, kl="\nmax = { kl = 100.0 }" if kl else "")
    (project.path / "suites" / "lm.toml").write_text(suite)
    run = project.runpytest("-p", "no:cacheprovider", "--distill", *args)
    run.assert_outcomes(passed=4)
    project.stdout = run.stdout.str()  # type: ignore[attr-defined]
    results = json.loads((project.path / "reports" / "results.json").read_text())
    return {c["id"]: c["metrics"] for s in results["suites"] for c in s["checks"]}


def _teacher_calls(project: pytest.Pytester) -> int:
    log = project.path / "teacher.log"
    return len(log.read_text().split()) if log.is_file() else 0


def test_a_second_student_does_not_run_the_teacher_and_gets_the_exact_pass_s_numbers(
    project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _run(project, "student")
    calls = _teacher_calls(project)
    assert calls == 3  # the loader's probe, then 30 sequences in batches of 16: one pair pass
    assert first["agreement"]["kl"]["value"] is not None  # a cold run runs the pair: nothing is left out

    second = _run(project, "student2")
    assert _teacher_calls(project) == calls  # the teacher's cached summary served every check
    assert "loaded model 'teacher'" not in project.stdout  # type: ignore[attr-defined]
    assert "student2 on tokens: per-token summary" in project.stdout  # type: ignore[attr-defined]
    for name in DIVERGENCES:  # unbound, and not computable from two summaries: undefined, saying why
        assert second["agreement"][name]["value"] is None
        assert "bound it" in second["agreement"][name]["note"]

    # the same checks through the exact pair pass, from scratch: every other number is the same
    exact = _run(project, "student2", "--distill-no-cache", kl=True)
    assert _teacher_calls(project) == 2 * calls
    for check, metrics in exact.items():
        for name, metric in metrics.items():
            if name in DIVERGENCES:
                continue
            got = second[check][name]
            if metric["value"] is None:
                assert got["value"] is None, (check, name)
                continue
            assert math.isclose(got["value"], metric["value"], rel_tol=1e-6, abs_tol=1e-9), (check, name)
            if metric.get("ci"):
                assert np.allclose(got["ci"], metric["ci"], rtol=1e-6, atol=1e-9), (check, name)
    assert exact["agreement"]["kl"]["value"] > 0

    # both kinds of entry are listed, one summary per model
    capsys.readouterr()
    assert main(["cache"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "token-model" in line]
    assert sorted(line.split()[1] for line in lines) == ["student", "student2", "teacher"], lines


def test_another_token_top_k_keys_another_summary_so_the_teacher_runs_again(project: pytest.Pytester) -> None:
    _run(project, "student")
    calls = _teacher_calls(project)
    pyproject = project.path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('device = "cpu"', 'device = "cpu"\ntoken_top_k = 8'))
    _run(project, "student2")
    assert _teacher_calls(project) == 2 * calls


def test_the_summary_key_changes_with_the_model_the_data_and_k() -> None:
    rng = np.random.default_rng(0)
    data = token_dataset([rng.integers(0, 9, size=6) for _ in range(3)], vocab_size=9, name="d")
    other = token_dataset([rng.integers(0, 9, size=6) for _ in range(3)], vocab_size=9, name="d")

    def key(model: str = "a" * 64, d=data, **settings) -> str:
        return model_stats_key(
            model, d, **{"top_k": 32, "device": "cpu", "batch_size": 8, "torch_version": "2.5"} | settings
        )

    base = key()
    assert base == key(device="cpu:0")  # only the device's kind counts
    variants = [
        key("b" * 64),
        key(d=other),
        key(top_k=8),
        key(device="cuda"),
        key(batch_size=4),
        key(torch_version="2.6"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_a_factory_model_s_summary_key_follows_its_weights(tmp_path: Path) -> None:
    from distill_eval.config import ModelSpec
    from distill_eval.lm.models import token_model_fingerprint

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    spec = ModelSpec(name="s", factory="tiny_lm:build", weights=weights)
    before = token_model_fingerprint(spec, vocab_size=None)
    weights.write_bytes(b"two")
    assert token_model_fingerprint(spec, vocab_size=None) != before
