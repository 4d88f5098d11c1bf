"""Kind ``generation``: free-running continuations, checked against hand computations and brute force."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from distill_eval.cli import main
from distill_eval.config import ModelSpec
from distill_eval.lm.generation import (
    cut_at_eos,
    cut_lengths,
    first_divergence,
    generate_pair,
    has_prompts,
    lcs_length,
    lcs_lengths,
    rouge_l,
    rouge_l_scores,
    select_prompts,
    teacher_nll,
)
from distill_eval.lm.models import load_token_model
from distill_eval.lm.tokens import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, load_jsonl_tokens, token_dataset
from distill_eval.report.html import render_html

pytestmark = pytest.mark.usefixtures("one_thread")

V = BYTE_VOCAB_SIZE
#: the planted models put this logit on their one chosen token and 0 on every other
PEAK = 5.0
#: the NLL of a token a planted model does not choose: log(e^PEAK + V - 1)
MISS = math.log(math.exp(PEAK) + V - 1)


class Successor(torch.nn.Module):
    """Always predicts the next id: after token x comes x + 1 (mod V)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return PEAK * torch.nn.functional.one_hot((input_ids + 1) % V, V).float()


class Constant(torch.nn.Module):
    """Always predicts token ``c``."""

    def __init__(self, c: int = 20):
        super().__init__()
        self.c = c
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return PEAK * torch.nn.functional.one_hot(torch.full_like(input_ids, self.c), V).float()


def successor() -> Successor:
    return Successor()


def constant(c: int = 20) -> Constant:
    return Constant(c)


def model(fn: str, **kwargs):
    return load_token_model(ModelSpec(name=fn, factory=f"{__name__}:{fn}", kwargs=kwargs))


# -- plain functions against brute force and hand examples ---------------------------------


def brute_lcs(a: list[int], b: list[int]) -> int:
    """The longest subsequence of ``a`` (tried longest first) that is also a subsequence of ``b``."""

    def is_subsequence(sub: tuple[int, ...], seq: list[int]) -> bool:
        it = iter(seq)
        return all(x in it for x in sub)

    for size in range(len(a), 0, -1):
        if any(is_subsequence(sub, b) for sub in itertools.combinations(a, size)):
            return size
    return 0


def test_lcs_equals_brute_force_on_random_short_sequences():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(300):
        a = rng.integers(0, 4, size=int(rng.integers(0, 9))).tolist()
        b = rng.integers(0, 4, size=int(rng.integers(0, 9))).tolist()
        assert lcs_length(a, b) == lcs_length(b, a) == brute_lcs(a, b), (a, b)
        pairs.append((a, b))
    # all pairs at once, padded to the longest: the padding matches nothing
    together = lcs_lengths(
        [np.array(a, dtype=np.int64) for a, _ in pairs], [np.array(b, dtype=np.int64) for _, b in pairs]
    )
    assert together.tolist() == [brute_lcs(a, b) for a, b in pairs]
    scores = rouge_l_scores(
        [np.array(a, dtype=np.int64) for a, _ in pairs], [np.array(b, dtype=np.int64) for _, b in pairs]
    )
    np.testing.assert_allclose(scores, [rouge_l(a, b) for a, b in pairs])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], 1.0),
        ([1, 2, 3], [4, 5], 0.0),
        ([1, 2, 3, 4], [2, 4, 3], 2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3)),  # LCS 2: P = 2/4, R = 2/3
        ([7, 7, 7, 7], [7], 2 * (1 / 4) * 1 / (1 / 4 + 1)),
        ([], [1], 0.0),
    ],
)
def test_rouge_l_by_hand(a, b, expected):
    assert rouge_l(a, b) == pytest.approx(expected) and rouge_l(b, a) == pytest.approx(expected)


def test_first_divergence_by_hand_and_by_a_loop():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert first_divergence([1, 2, 3], [9, 2, 3]) == 0
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # one ended where the other goes on
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = rng.integers(0, 2, size=int(rng.integers(1, 6))), rng.integers(0, 2, size=int(rng.integers(1, 6)))
        i = 0
        while i < len(a) and i < len(b) and a[i] == b[i]:
            i += 1
        assert first_divergence(a, b) == i


def test_continuations_are_cut_just_after_the_first_eos():
    tokens = np.array([[4, 9, 5, 9], [1, 2, 3, 4], [9, 9, 9, 9]])
    np.testing.assert_array_equal(cut_lengths(tokens, 9), [2, 4, 1])
    np.testing.assert_array_equal(cut_lengths(tokens, None), [4, 4, 4])
    assert cut_at_eos(tokens[0], 9).tolist() == [4, 9] and cut_at_eos(tokens[1], 9).tolist() == [1, 2, 3, 4]


# -- prompts -------------------------------------------------------------------------------


def test_prompts_of_prompt_completion_text_are_the_unscored_prefix(tmp_path):
    lines = [{"prompt": "ab", "completion": "cd"}, {"prompt": "xyz", "completion": "!"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    data = load_jsonl_tokens(path, "bytes")
    assert has_prompts(data) and data.eos_id == EOS_ID
    prompts = select_prompts(data, prompt_tokens=None, max_prompts=10)
    assert prompts.from_labels and prompts.skipped == 0
    assert [p.tolist() for p in prompts.tokens] == [[BOS_ID, *b"ab"], [BOS_ID, *b"xyz"]]
    assert [r.tolist() for r in prompts.references] == [list(b"cd"), list(b"!")]
    with pytest.raises(ValueError, match="prompt_tokens"):
        select_prompts(data, prompt_tokens=2, max_prompts=10)


def test_prompts_without_labels_are_the_first_tokens_padding_dropped_short_ones_skipped():
    ids = [[0, 0, 5, 6, 7, 8], [1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9]]
    mask = [[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]  # left padding, right padding, none
    data = token_dataset(ids, mask)
    assert not has_prompts(data)
    prompts = select_prompts(data, prompt_tokens=3, max_prompts=10)
    assert prompts.skipped == 1 and prompts.rows.tolist() == [0, 2]  # [1, 2, 3] has no token after 3
    assert [p.tolist() for p in prompts.tokens] == [[5, 6, 7], [4, 5, 6]]
    assert [r.tolist() for r in prompts.references] == [[8], [7, 8, 9]]


def test_max_prompts_takes_evenly_spaced_sequences_the_first_included():
    data = token_dataset(np.arange(40).reshape(10, 4))
    prompts = select_prompts(data, prompt_tokens=2, max_prompts=4)
    assert prompts.rows.tolist() == [0, 3, 6, 9] and prompts.usable == 10 and prompts.skipped == 0


# -- teacher NLL and a planted pair --------------------------------------------------------


def test_teacher_nll_equals_a_direct_log_softmax_loop():
    torch.manual_seed(0)
    teacher = load_token_model(
        ModelSpec(name="t", factory="distill_eval.train.zoo:bytes_student", kwargs={"d_model": 32, "d_ff": 64})
    )
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 256, size=int(n)) for n in (1, 4, 7)]
    conts = [rng.integers(0, 256, size=int(n)) for n in (5, 1, 3)]
    got = teacher_nll(teacher, prompts, conts, batch_size=2)
    for value, p, c in zip(got, prompts, conts, strict=True):
        ids = torch.as_tensor(np.concatenate([p, c]))[None]
        with torch.no_grad():
            logp = torch.log_softmax(teacher.module(ids, torch.ones_like(ids))[0].double(), dim=-1)
        expected = -np.mean([float(logp[len(p) - 1 + j, int(c[j])]) for j in range(len(c))])
        assert value == pytest.approx(expected, rel=1e-5)


def test_a_constant_student_against_a_successor_teacher_by_hand():
    prompts = [np.array([3, 19]), np.array([40]), np.array([7, 8, 9])]
    gen = generate_pair(model("successor"), model("constant", c=20), prompts, max_new_tokens=5, eos=22)
    # the teacher counts up from the last prompt token; eos 22 cuts the first prompt's continuation after it
    assert [gen.cut("teacher", i).tolist() for i in range(3)] == [
        [20, 21, 22],
        [41, 42, 43, 44, 45],
        [10, 11, 12, 13, 14],
    ]
    assert all(gen.cut("student", i).tolist() == [20] * 5 for i in range(3))
    assert [first_divergence(gen.cut("teacher", i), gen.cut("student", i)) for i in range(3)] == [1, 0, 0]
    # every teacher token is its own argmax; of the student's, only the first of prompt 0 (20 after 19) is
    np.testing.assert_allclose(gen.teacher_nll_self, MISS - PEAK)
    np.testing.assert_allclose(gen.teacher_nll, [MISS - PEAK / 5, MISS, MISS])
    assert gen.kv_cache == {"teacher": False, "student": False}


# -- through the user's door ---------------------------------------------------------------

FACTORY = f"""
import os
import torch

V = {V}


class Planted(torch.nn.Module):
    def __init__(self, c=None):
        super().__init__()
        self.c = c
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        with open(os.environ["GEN_CALLS"], "a") as f:  # one character per forward call: torch's thread count
            f.write(str(torch.get_num_threads()))
        target = (input_ids + 1) % V if self.c is None else torch.full_like(input_ids, self.c)
        return {PEAK} * torch.nn.functional.one_hot(target, V).float()


def successor():
    return Planted()


def constant(c):
    return Planted(c)
"""

PYPROJECT = """
[tool.distill_eval]
device = "cpu"

# weights files key the cache by their content: a warm run loads no model
[tool.distill_eval.models.teacher]
factory = "planted_lm:successor"
weights = "planted.pt"

[tool.distill_eval.models.twin]
factory = "planted_lm:successor"
weights = "planted.pt"

[tool.distill_eval.models.student]
factory = "planted_lm:constant"
kwargs = { c = 20 }
weights = "planted.pt"

[tool.distill_eval.datasets.tokens]
path = "tokens.npz"

[tool.distill_eval.datasets.pairs]
path = "pairs.jsonl"
tokenizer = "bytes"

[tool.distill_eval.datasets.classes]
path = "classes.npz"
"""

GATE = """
[suite]
name = "gen"
dataset = "tokens"
bootstrap = 200

[[check]]
id = "constant"
kind = "generation"
prompt_tokens = 4
max_new_tokens = 6
max_prompts = 12
min = { exact_match = 0.5 }   # a planted defect: this student never says what the teacher says

[[check]]
id = "twin"
kind = "generation"
student = "twin"
prompt_tokens = 4
max_new_tokens = 6
max_prompts = 12
min = { exact_match = 1 }
max = { teacher_nll_gap = 0 }

[[check]]
id = "pairs"
kind = "generation"
dataset = "pairs"
max_new_tokens = 4
threads = 1

[[check]]
id = "longer-prompts"   # the same sequences, other prompts: other continuations
kind = "generation"
prompt_tokens = 5
max_new_tokens = 6
max_prompts = 12
"""


@pytest.fixture
def gen_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("GEN_CALLS", str(pytester.path / "calls.txt"))
    pytester.makepyfile(planted_lm=FACTORY)
    pytester.makefile(".toml", pyproject=PYPROJECT)
    torch.save({"unused": torch.zeros(1)}, pytester.path / "planted.pt")
    rng = np.random.default_rng(0)
    np.savez(pytester.path / "tokens.npz", input_ids=rng.integers(0, 40, size=(16, 10)))
    lines = [{"prompt": "ab", "completion": "cd"}, {"prompt": "<b>&", "completion": "x"}]
    (pytester.path / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    np.savez(pytester.path / "classes.npz", x=rng.normal(size=(20, 3)).astype(np.float32), y=np.arange(20) % 2)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "gen.toml").write_text(GATE)
    return pytester


def _checks(pytester: pytest.Pytester) -> dict[str, dict]:
    results = json.loads((pytester.path / "reports" / "results.json").read_text())
    return {check["id"]: check for suite in results["suites"] for check in suite["checks"]}


def test_a_generation_suite_runs_end_to_end_against_hand_computed_metrics(gen_project: pytest.Pytester) -> None:
    torch.set_num_threads(2)  # one_thread restores 1 afterwards
    gen_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=3, failed=1)
    assert torch.get_num_threads() == 2  # 'threads = 1' of check 'pairs' held only while it generated
    checks = _checks(gen_project)
    assert checks["pairs"]["threads"] == 1 and checks["constant"]["threads"] == 2
    assert set((gen_project.path / "calls.txt").read_text()) == {"1", "2"}  # the pairs check decoded on one
    ids = np.load(gen_project.path / "tokens.npz")["input_ids"]
    rows = np.unique(np.linspace(0, 15, 12).round().astype(int))  # evenly spaced, the first included
    last = ids[rows, 3]  # each prompt's last token
    teacher = [[(x + k) % V for k in range(1, 7)] for x in last]
    hit = last + 1 == 20  # the student's first token, 20, is the teacher's choice too
    c = checks["constant"]
    assert c["outcome"] == "failed" and "exact_match" in c["message"]
    assert c["prompts"] == 12 and c["skipped"] == 0 and c["eos"] is None  # a file of ids has no EOS
    metrics = {name: m["value"] for name, m in c["metrics"].items()}
    assert metrics["exact_match"] == 0
    assert metrics["first_divergence"] == pytest.approx(hit.mean())
    lcs = np.array([brute_lcs(t, [20] * 6) for t in teacher])
    assert metrics["rouge_l"] == pytest.approx(np.mean(2 * lcs / 12))
    assert metrics["teacher_nll"] == pytest.approx(MISS - PEAK * hit.mean() / 6)
    assert metrics["teacher_nll_self"] == pytest.approx(MISS - PEAK)
    assert metrics["teacher_nll_gap"] == pytest.approx(PEAK - PEAK * hit.mean() / 6)
    refs = ids[rows, 4:10].tolist()  # the sequence's own next tokens
    t_ref = [2 * brute_lcs(t, r) / 12 for t, r in zip(teacher, refs, strict=True)]
    assert metrics["teacher_rouge_l_ref"] == pytest.approx(np.mean(t_ref))
    for m in c["metrics"].values():
        assert m["ci"][0] <= m["value"] <= m["ci"][1]
    assert c["examples"][0]["first_divergence"] == 0 and "teacher" not in c["examples"][0]  # ids, no text

    twin = {name: m["value"] for name, m in checks["twin"]["metrics"].items()}
    assert twin["exact_match"] == 1 and twin["first_divergence"] == 6 and twin["first_divergence_fraction"] == 1
    assert twin["rouge_l"] == 1 and twin["teacher_nll_gap"] == 0

    pairs = checks["pairs"]
    assert pairs["prompt_source"] == "unscored prefix" and pairs["eos"] == EOS_ID and pairs["prompts"] == 2
    # after "ab" the teacher writes "cdef": the reference "cd" is its first half
    assert pairs["metrics"]["teacher_rouge_l_ref"]["value"] == pytest.approx((4 / 6 + 0) / 2)
    longer = checks["longer-prompts"]["metrics"]["first_divergence"]["value"]
    assert longer == pytest.approx((ids[rows, 4] + 1 == 20).mean()) and longer != pytest.approx(hit.mean())
    texts = {ex["id"]: ex for ex in pairs["examples"]}
    assert texts["line-2"]["prompt"] == "<b>&" and texts["line-1"]["teacher"] == "cdef"


def test_examples_are_escaped_in_the_html_report(gen_project: pytest.Pytester) -> None:
    gen_project.runpytest("-p", "no:cacheprovider", "--distill", "-k", "pairs").assert_outcomes(passed=1)
    html = (gen_project.path / "reports" / "report.html").read_text()
    assert "&lt;b&gt;&amp;" in html and "<b>&" not in html
    doc = json.loads((gen_project.path / "reports" / "results.json").read_text())
    again = render_html(doc)  # distill-eval report re-renders the same table
    assert "diverges at" in again and "&lt;b&gt;&amp;" in again


def test_a_second_run_reads_the_continuations_from_the_cache(
    gen_project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    gen_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=3, failed=1)
    first = _checks(gen_project)
    calls = (gen_project.path / "calls.txt").read_text()
    assert calls  # the planted models ran
    again = gen_project.runpytest("-p", "no:cacheprovider", "--distill")
    again.assert_outcomes(passed=3, failed=1)
    assert (gen_project.path / "calls.txt").read_text() == calls  # no forward call at all
    assert "from cache" in again.stdout.str()
    second = _checks(gen_project)
    assert [c["metrics"] for c in second.values()] == [c["metrics"] for c in first.values()]
    capsys.readouterr()
    assert main(["cache"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " generation " in f" {line} "]
    assert len(lines) == 4, lines  # one per check: each reads other prompts or models


BAD = """
[suite]
name = "bad"
dataset = "tokens"

[[check]]
id = "classes"
kind = "generation"
dataset = "classes"

[[check]]
id = "too-short"
kind = "generation"
prompt_tokens = 10

[[check]]
id = "prompted"
kind = "generation"
dataset = "pairs"
prompt_tokens = 2

[[check]]
id = "eos-outside"
kind = "generation"
dataset = "pairs"
eos = 5000
"""


def test_bad_input_is_a_clear_error(gen_project: pytest.Pytester) -> None:
    (gen_project.path / "suites" / "gen.toml").write_text(BAD)
    result = gen_project.runpytest("-p", "no:cacheprovider", "--distill")
    checks = _checks(gen_project)
    assert {c["outcome"] for c in checks.values()} == {"error"}
    assert "evaluates only token data" in checks["classes"]["message"]
    assert "dataset 'classes' holds classification examples" in checks["classes"]["message"]
    assert "no sequence of dataset 'tokens' is long enough" in checks["too-short"]["message"]
    assert "lower 'prompt_tokens'" in checks["too-short"]["message"]
    assert "'prompt_tokens' does not apply" in checks["prompted"]["message"]
    assert "'eos' = 5000 is outside the vocabulary" in checks["eos-outside"]["message"]
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_new_tokens = 0", "'max_new_tokens' must be an integer >= 1"),
        ("eos = true", "'eos' must be a token id (an integer >= 0) or false"),
        ("max_prompt = 3", "unknown key 'max_prompt'"),
        ("min = { bleu = 1 }", "unknown metric 'bleu'"),
    ],
)
def test_bad_parameters_are_rejected_before_any_model_loads(gen_project: pytest.Pytester, line, message) -> None:
    (gen_project.path / "suites" / "gen.toml").write_text(
        f'[suite]\ndataset = "tokens"\n[[check]]\nkind = "generation"\n{line}\n'
    )
    result = gen_project.runpytest("-p", "no:cacheprovider", "--distill")
    assert message in result.stdout.str()
    assert not (gen_project.path / "calls.txt").exists()
