"""Language-model students through the user's door: token datasets in real ``pytest --distill`` sessions."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill_eval.checks import KINDS, CheckContext
from distill_eval.checks.tokens import AGREEMENT_METRICS, CALIBRATION_METRICS, token_agreement
from distill_eval.cli import main
from distill_eval.lm.pairstats import TokenStats
from distill_eval.lm.tokens import BYTE_VOCAB_SIZE

#: a tiny bigram language model over bytes: embedding + linear; the student is the teacher plus noise
FACTORY = f"""
import torch

VOCAB = {BYTE_VOCAB_SIZE}


class TinyLM(torch.nn.Module):
    def __init__(self, noise=0.0, seed=1, bad_rows=0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(VOCAB, 16, generator=g))
            self.head.weight.copy_(torch.randn(VOCAB, 16, generator=g))
            self.head.bias.zero_()
            if noise:
                n = torch.Generator().manual_seed(seed)
                self.head.weight.add_(noise * torch.randn(VOCAB, 16, generator=n))
            if bad_rows:  # a planted defect: the inputs below bad_rows are embedded wrongly
                n = torch.Generator().manual_seed(seed)
                self.embed.weight[:bad_rows].add_(2.0 * torch.randn(bad_rows, 16, generator=n))

    def forward(self, input_ids, attention_mask):
        return self.head(self.embed(input_ids))


def build(noise=0.0, seed=1, bad_rows=0):
    return TinyLM(noise, seed, bad_rows)
"""

PYPROJECT = """
[tool.distill_eval]
device = "cpu"
batch_size = 16

[tool.distill_eval.models.teacher]
factory = "tiny_lm:build"

[tool.distill_eval.models.student]
factory = "tiny_lm:build"
kwargs = { noise = 0.1 }

[tool.distill_eval.models.broken]
factory = "tiny_lm:build"
kwargs = { noise = 1.0 }

[tool.distill_eval.datasets.tokens]
path = "tokens.npz"

[tool.distill_eval.datasets.bytes]
source = "builtin:bytes"
seq_len = 64
"""

GATE = """
[suite]
name = "lm-gate"
dataset = "tokens"
bootstrap = 200

[[check]]
id = "good"
kind = "agreement"
min = { top1 = 0.8, retention = 0.8 }
max = { kl = 0.3, perplexity_ratio = 1.2 }

[[check]]
id = "planted"
kind = "agreement"
student = "broken"
min = { top1 = 0.8, retention = 0.8 }
max = { kl = 0.3, perplexity_ratio = 1.2 }

[[check]]
kind = "calibration"
max = { ece_gap = 0.2 }

[[check]]
id = "bytes"
kind = "agreement"
dataset = "bytes"
min = { top1 = 0.5 }
"""


def _teacher_samples(n: int, length: int, seed: int = 0) -> np.ndarray:
    """Sequences sampled from the teacher itself, so that its next-token accuracy is well above chance."""
    namespace: dict = {}
    exec(FACTORY, namespace)
    teacher = namespace["build"]().eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros((n, length), dtype=torch.int64)
    ids[:, 0] = torch.randint(0, BYTE_VOCAB_SIZE, (n,), generator=g)
    with torch.no_grad():
        for t in range(1, length):
            probs = torch.softmax(teacher(ids[:, :t], None)[:, -1], dim=-1)
            ids[:, t] = torch.multinomial(probs, 1, generator=g)[:, 0]
    return ids.numpy()


@pytest.fixture
def lm_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(tiny_lm=FACTORY)
    pytester.makefile(".toml", pyproject=PYPROJECT)
    ids = _teacher_samples(40, 24)
    mask = np.ones_like(ids)
    mask[::5, 18:] = 0  # some padded sequences
    labels = np.where(mask == 1, ids, -100)
    np.savez(pytester.path / "tokens.npz", input_ids=ids, attention_mask=mask, labels=labels)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "lm.toml").write_text(GATE)
    return pytester


def _checks(pytester: pytest.Pytester) -> list[dict]:
    results = json.loads((pytester.path / "reports" / "results.json").read_text())
    return [check for suite in results["suites"] for check in suite["checks"]]


def test_a_token_student_is_gated_end_to_end_and_a_planted_defect_fails(lm_project: pytest.Pytester) -> None:
    result = lm_project.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=3, failed=1)
    by_id = {c["id"]: c for c in _checks(lm_project)}
    assert by_id["good"]["outcome"] == "passed" and by_id["planted"]["outcome"] == "failed"
    assert by_id["calibration"]["outcome"] == "passed" and by_id["bytes"]["outcome"] == "passed"
    for check in ("good", "planted", "bytes"):
        metrics = by_id[check]["metrics"]
        assert set(metrics) == set(AGREEMENT_METRICS)
        for name in AGREEMENT_METRICS:
            low, high = metrics[name]["ci"]
            assert low <= metrics[name]["value"] <= high, (check, name)
    assert set(by_id["calibration"]["metrics"]) == set(CALIBRATION_METRICS)
    good, bad = by_id["good"]["metrics"], by_id["planted"]["metrics"]
    assert bad["kl"]["value"] > 3 * good["kl"]["value"] and bad["top1"]["value"] < good["top1"]["value"]
    assert (
        math.isclose(good["perplexity"]["value"], math.exp(good["nll"]["value"]), rel_tol=1e-9)
        and good["kl_p90"]["value"] <= good["kl_p99"]["value"]
    )
    stdout = result.stdout.str()
    assert "teacher vs student on tokens" in stdout


def test_token_pair_statistics_are_cached_and_listed(
    lm_project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    lm_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=3, failed=1)
    first = _checks(lm_project)
    again = lm_project.runpytest("-p", "no:cacheprovider", "--distill")
    again.assert_outcomes(passed=3, failed=1)
    assert "from cache" in again.stdout.str()
    assert [c["metrics"] for c in _checks(lm_project)] == [c["metrics"] for c in first]
    capsys.readouterr()
    assert main(["cache"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "token-pairs" in line]
    assert len(lines) == 3, lines  # good, planted and bytes pairs
    assert any("teacher+broken" in line and "tokens" in line for line in lines)
    # one column per field: the per-token record's dtype is "record", not its field-by-field spec
    assert all(line.split()[5] == "record" and "('sequence'" not in line for line in lines), lines


def test_a_token_interval_resamples_sequences_not_tokens() -> None:
    # 60 sequences of 50 tokens; within a sequence the student agrees with the teacher everywhere or nowhere.
    # Resampling sequences, the top-1 interval is that of 60 draws; resampling tokens, it would be of 3000.
    rng = np.random.default_rng(0)
    n_seq, length = 60, 50
    agrees = rng.random(n_seq) < 0.5
    stats = _stats(np.repeat(np.arange(n_seq), length), np.repeat(agrees, length))
    metrics = _agreement(stats).metrics
    p = agrees.mean()
    width = metrics["top1"].ci[1] - metrics["top1"].ci[0]
    sequence_width = 2 * 1.96 * math.sqrt(p * (1 - p) / n_seq)
    assert 0.75 * sequence_width < width < 1.25 * sequence_width
    # splitting each sequence into 50 one-token sequences makes the tokens independent: the interval shrinks
    split = _agreement(_stats(np.arange(n_seq * length), np.repeat(agrees, length))).metrics
    assert split["top1"].ci[1] - split["top1"].ci[0] < width / 4


def _stats(sequence: np.ndarray, agree: np.ndarray) -> TokenStats:
    n = sequence.size
    teacher = np.zeros(n, dtype=np.int32)
    student = np.where(agree, 0, 1).astype(np.int32)
    floats = np.full(n, 0.5, dtype=np.float32)
    columns = {
        "sequence": sequence.astype(np.int64),
        "position": np.ones(n, dtype=np.int32),
        "label": teacher,
        "teacher_nll": floats,
        "student_nll": floats,
        "teacher_argmax": teacher,
        "student_argmax": student,
        "teacher_max_prob": floats,
        "student_max_prob": floats,
        "teacher_entropy": floats,
        "student_entropy": floats,
        "kl": agree.astype(np.float32),
        "reverse_kl": floats,
        "js": floats,
        "tvd": floats,
        "teacher_top_ids": np.zeros((n, 1), dtype=np.int32),
        "teacher_top_logprobs": np.zeros((n, 1), dtype=np.float32),
        "top_k_overlap": floats,
        "student_rank": (~agree).astype(np.int32),
    }
    return TokenStats.from_columns(columns)


def _agreement(stats: TokenStats):
    suite = SimpleNamespace(bootstrap=1000, confidence=0.95, seed=0)
    check = SimpleNamespace(id="agreement", kind="agreement", teacher="t", student="s", dataset="d", bounds=())
    source = SimpleNamespace(token_stats=lambda *a, **k: stats, is_token_dataset=lambda name: True)
    return token_agreement(CheckContext(suite, check, source), {"k": 1, "temperature": 1.0})


def test_every_token_metric_may_be_bounded() -> None:
    assert set(AGREEMENT_METRICS) <= set(KINDS["agreement"].bound_metrics)
    assert set(CALIBRATION_METRICS) <= set(KINDS["calibration"].bound_metrics)


SLICED = """
[suite]
name = "lm-slices"
dataset = "mixed"
bootstrap = 200

[[check]]
id = "good"
kind = "slices"
metric = "agreement"
min_support = 20
slices = [
    { name = "low-ids", where = "meta.group == 1" },
    { name = "high-ids", where = "meta.group == 0" },
    { name = "start", where = "position < 5" },
    { name = "unsure", where = "teacher_entropy > quantile(teacher_entropy, 0.5)" },
]
min = { retention = 0.8 }

[[check]]
id = "patchy"
kind = "slices"
metric = "agreement"
student = "patchy"
min_support = 20
slices = [
    { name = "low-ids", where = "meta.group == 1" },
    { name = "high-ids", where = "meta.group == 0" },
]
min = { retention = 0.8 }
"""


def test_token_slices_by_meta_position_and_entropy_find_a_planted_defect(lm_project: pytest.Pytester) -> None:
    # group 1 reads only ids below 50, which the patchy student embeds wrongly; group 0 never does
    rng = np.random.default_rng(1)
    group = np.arange(30) % 2
    ids = np.where(group[:, None] == 1, rng.integers(0, 50, (30, 16)), rng.integers(50, BYTE_VOCAB_SIZE, (30, 16)))
    np.savez(lm_project.path / "mixed.npz", input_ids=ids, meta_group=group)
    pyproject = PYPROJECT + '\n[tool.distill_eval.datasets.mixed]\npath = "mixed.npz"\n'
    pyproject += '\n[tool.distill_eval.models.patchy]\nfactory = "tiny_lm:build"\nkwargs = { bad_rows = 50 }\n'
    lm_project.makefile(".toml", pyproject=pyproject)
    (lm_project.path / "suites" / "lm.toml").unlink()
    (lm_project.path / "suites" / "slices.toml").write_text(SLICED)
    result = lm_project.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=1, failed=1)
    by_id = {c["id"]: c for c in _checks(lm_project)}
    assert by_id["good"]["outcome"] == "passed" and by_id["patchy"]["outcome"] == "failed"
    good = {sl["name"]: sl for sl in by_id["good"]["slices"]}
    patchy = {sl["name"]: sl for sl in by_id["patchy"]["slices"]}
    # supports counted from the arrays: 15 sequences x 15 scored tokens each; positions 1..4 of all 30
    assert good["low-ids"]["support"] == good["high-ids"]["support"] == 15 * 15
    assert good["start"]["support"] == 30 * 4
    assert abs(good["unsure"]["support"] - 30 * 15 / 2) <= 30
    assert patchy["low-ids"]["retention"]["value"] < 0.8 <= patchy["high-ids"]["retention"]["value"]
    assert "retention of slice 'low-ids'" in by_id["patchy"]["message"]
    for sl in good.values():
        low, high = sl["retention"]["ci"]
        assert low <= sl["retention"]["value"] <= high


DISCOVER = """
[suite]
name = "lm-discover"
dataset = "mixed"
bootstrap = 200

[[check]]
id = "discover"
kind = "slices"
metric = "agreement"
student = "patchy"
min_support = 20
discover = true
frequency_data = "tokens"
slices = [
    { name = "rare", where = "frequency_rank > 100" },
    { name = "rarest", where = "token_frequency < quantile(token_frequency, 0.1)" },
]
"""


def test_token_discovery_finds_a_planted_group_and_frequency_slices_count_the_reference(
    lm_project: pytest.Pytester,
) -> None:
    # as above: group 1 reads only ids below 50, which the patchy student embeds wrongly
    rng = np.random.default_rng(2)
    group = np.arange(60) % 2
    ids = np.where(group[:, None] == 1, rng.integers(0, 50, (60, 16)), rng.integers(50, BYTE_VOCAB_SIZE, (60, 16)))
    np.savez(lm_project.path / "mixed.npz", input_ids=ids, meta_group=group)
    pyproject = PYPROJECT + '\n[tool.distill_eval.datasets.mixed]\npath = "mixed.npz"\n'
    pyproject += '\n[tool.distill_eval.models.patchy]\nfactory = "tiny_lm:build"\nkwargs = { bad_rows = 50 }\n'
    lm_project.makefile(".toml", pyproject=pyproject)
    (lm_project.path / "suites" / "lm.toml").unlink()
    (lm_project.path / "suites" / "discover.toml").write_text(DISCOVER)
    result = lm_project.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=1)
    (check,) = _checks(lm_project)

    # the reference: the scored labels of tokens.npz (labels shifted by one, -100 and padding not scored)
    reference = np.load(lm_project.path / "tokens.npz")
    ref_labels, ref_mask = reference["labels"], reference["attention_mask"]
    counts = Counter(
        int(ref_labels[s, t + 1])
        for s in range(ref_labels.shape[0])
        for t in range(ref_labels.shape[1] - 1)
        if ref_mask[s, t] and ref_mask[s, t + 1] and ref_labels[s, t + 1] != -100
    )
    scored = ids[:, 1:].ravel()  # every next token of mixed.npz is scored

    def rank(token: int) -> int:
        return 1 + sum(c > counts[token] for c in counts.values()) if token in counts else len(counts) + 1

    frequency = np.array([counts.get(int(t), 0) / sum(counts.values()) * 1e6 for t in scored])
    slices = {sl["name"]: sl for sl in check["slices"]}
    assert 0 < slices["rare"]["support"] == sum(rank(int(t)) > 100 for t in scored) < scored.size
    assert slices["rarest"]["support"] == int((frequency < np.quantile(frequency, 0.1)).sum())

    found = check["discovered"]
    wheres = [d["where"] for d in found]
    assert "meta.group == 1" in wheres, wheres
    planted = found[wheres.index("meta.group == 1")]
    assert planted["support"] == 30 * 15 and planted["sequences"] == 30 and planted["p_adjusted"] <= 0.05
    for d in found:
        low, high = d["gap_ci"]
        assert low <= d["gap"] <= high and d["teacher_score_ci"] == [1.0, 1.0]
    report = (lm_project.path / "reports" / "report.html").read_text()
    assert "Discovered slices of tokens" in report and "meta.group == 1" in report


COPIES = """
[suite]
name = "lm-copies"
dataset = "tokens"
bootstrap = 200

[[check]]
id = "copycat"
kind = "copied_errors"
max = { copy_rate = 0.5 }

[[check]]
id = "independent"
kind = "copied_errors"
student = "broken"
max = { copy_rate = 0.5 }
"""


def test_token_copied_errors_catch_a_student_that_repeats_the_teacher_s_wrong_tokens(
    lm_project: pytest.Pytester,
) -> None:
    (lm_project.path / "suites" / "lm.toml").write_text(COPIES)
    lm_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=1, failed=1)
    by_id = {c["id"]: c for c in _checks(lm_project)}
    assert by_id["copycat"]["outcome"] == "failed" and by_id["independent"]["outcome"] == "passed"
    copycat, independent = by_id["copycat"]["metrics"], by_id["independent"]["metrics"]
    assert copycat["teacher_errors"]["value"] == independent["teacher_errors"]["value"] > 100
    # the near-copy of the teacher repeats its wrong next tokens far above chance
    assert copycat["copy_lift"]["ci"][0] > 1 and copycat["copy_rate"]["value"] > independent["copy_rate"]["value"]
    for name in ("copy_rate", "copied_share", "error_consistency", "copy_lift"):
        low, high = copycat[name]["ci"]
        assert low <= copycat[name]["value"] <= high, name


def test_token_chance_copy_rate_is_the_student_s_confusion_at_the_teacher_s_wrong_tokens() -> None:
    from distill_eval.checks.copied_errors import _token_chance

    rng = np.random.default_rng(3)
    y, t, s = (rng.integers(0, 7, 400) for _ in range(3))
    expected = []
    for i in np.flatnonzero(t != y):  # by definition, one teacher error at a time
        same_label = y == y[i]
        expected.append(np.mean(s[same_label] == t[i]))
    assert math.isclose(_token_chance(y, t, s), float(np.mean(expected)), rel_tol=1e-12)


REGRESSION = """
[suite]
name = "lm-regression"
dataset = "tokens"
bootstrap = 200

[[check]]
id = "same"
kind = "regression"
baseline = "student"
max = { agreement_drop = 0.02, kl_increase = 0.05 }

[[check]]
id = "worse"
kind = "regression"
student = "broken"
baseline = "student"
max = { agreement_drop = 0.02, kl_increase = 0.05 }

[[check]]
id = "accepted"
kind = "agreement"

[[check]]
id = "candidate"
kind = "agreement"
student = "broken"
"""


def test_token_regression_is_paired_on_the_same_tokens(lm_project: pytest.Pytester) -> None:
    (lm_project.path / "suites" / "lm.toml").write_text(REGRESSION)
    lm_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=3, failed=1)
    by_id = {c["id"]: c for c in _checks(lm_project)}
    assert by_id["same"]["outcome"] == "passed" and by_id["worse"]["outcome"] == "failed"
    same, worse = by_id["same"]["metrics"], by_id["worse"]["metrics"]
    latency = same.pop("p50_ms_increase_ratio")  # no latency check timed them (see tests/lm/test_lm_latency.py)
    assert latency["value"] is None and latency["note"].startswith("latency unknown")
    assert all(same[name]["value"] == 0 and same[name]["ci"] == [0, 0] for name in same)  # a student vs itself
    accepted, candidate = by_id["accepted"]["metrics"], by_id["candidate"]["metrics"]
    # the drops are the differences of what the agreement checks measured on the same tokens
    for drop, metric, sign in (
        ("accuracy_drop", "accuracy", 1),
        ("agreement_drop", "top1", 1),
        ("kl_increase", "kl", -1),
    ):
        expected = sign * (accepted[metric]["value"] - candidate[metric]["value"])
        assert math.isclose(worse[drop]["value"], expected, rel_tol=1e-6, abs_tol=1e-9), drop
        low, high = worse[drop]["ci"]
        assert low <= worse[drop]["value"] <= high and low > 0, drop


def test_a_jsonl_text_dataset_is_tokenized_and_its_prompts_are_not_scored(lm_project: pytest.Pytester) -> None:
    """A .jsonl of prompt/completion pairs with the byte tokenizer: only completion tokens are scored."""
    lines = [{"prompt": f"Question {i}: ", "completion": f"answer number {i}."} for i in range(30)]
    (lm_project.path / "qa.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with (lm_project.path / "pyproject.toml").open("a") as f:
        f.write('\n[tool.distill_eval.datasets.qa]\npath = "qa.jsonl"\ntokenizer = "bytes"\n')
    (lm_project.path / "suites" / "lm.toml").write_text(
        '[suite]\nname = "qa"\ndataset = "qa"\nbootstrap = 100\n\n[[check]]\nkind = "agreement"\n'
    )
    lm_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=1)
    (check,) = _checks(lm_project)
    # the byte tokenizer scores every completion byte (each is predicted from the token before it)
    scored = sum(len(line["completion"].encode()) for line in lines)
    assert check["tokens"] == scored and check["sequences"] == len(lines)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('path = "qa.jsonl"', "a .jsonl text file needs 'tokenizer'"),
        ('path = "tokens.npz"\ntokenizer = "bytes"', "'tokenizer' applies only to a .jsonl text file"),
        ('path = "qa.jsonl"\ntokenizer = "bytes"\nmax_length = 1', "'max_length' must be an integer >= 2"),
    ],
)
def test_jsonl_dataset_keys_are_checked(tmp_path, table: str, message: str) -> None:
    from distill_eval import ConfigError, load_project_config

    (tmp_path / "pyproject.toml").write_text(f"[tool.distill_eval.datasets.qa]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_project_config(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "pyproject.toml"))
    assert "[tool.distill_eval.datasets.qa]" in str(info.value) and message in str(info.value)


def test_the_report_says_how_token_checks_count_and_resample(lm_project: pytest.Pytester) -> None:
    """report.html and its data: a token check names its scored tokens and sequences; a digits check does not."""
    from distill_eval.report.data import build_report_data

    lm_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=3, failed=1)
    doc = json.loads((lm_project.path / "reports" / "results.json").read_text())
    good = next(c for s in doc["suites"] for c in s["checks"] if c["id"] == "good")
    data = build_report_data(doc)
    section = next(s for s in data.sections if s.check_id == "good")
    assert f"{good['tokens']:,} scored tokens in {good['sequences']:,} sequences" in section.facts
    notes = [b.text for b in section.blocks if getattr(b, "kind", "") == "note"]
    assert any("resamples whole sequences" in n for n in notes), notes
    html = (lm_project.path / "reports" / "report.html").read_text()
    assert "resamples whole sequences" in html
    # a classification check's section carries no token note
    classification = dict(good, tokens=None, sequences=None)
    plain = build_report_data(dict(doc, suites=[dict(doc["suites"][0], checks=[classification])]))
    assert not any("Token-level" in getattr(b, "text", "") for s in plain.sections for b in s.blocks)


LEAKAGE = """
[suite]
name = "lm-leakage"
dataset = "tokens"
gate = "strict"

[[check]]
id = "planted"
kind = "leakage"
train = "leaky_train"
max = { duplicate_rate = 0 }

[[check]]
id = "clean"
kind = "leakage"
train = "clean_train"
max = { duplicate_rate = 0 }
"""


def test_token_leakage_fails_a_planted_leak_under_strict_and_passes_clean_data(
    lm_project: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    from distill_eval.checks.leakage import TOKEN_METRICS

    evaluation = np.load(lm_project.path / "tokens.npz")
    ids, mask = evaluation["input_ids"], evaluation["attention_mask"]
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 256, size=(30, 24))  # random bytes: no 13-gram in common with the teacher's samples
    leaky = clean.copy()
    leaky[4] = ids[3]  # a copy of evaluation sequence 3 (fully attended)
    leaky[9, 5:18] = ids[11, 2:15]  # a 13-gram of evaluation sequence 11
    np.savez(lm_project.path / "clean.npz", input_ids=clean)
    np.savez(lm_project.path / "leaky.npz", input_ids=leaky)
    assert mask[3].all() and mask[11, :15].all()
    pyproject = lm_project.path / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + '\n[tool.distill_eval.datasets.leaky_train]\npath = "leaky.npz"\n'
        + '\n[tool.distill_eval.datasets.clean_train]\npath = "clean.npz"\n'
    )
    (lm_project.path / "suites" / "lm.toml").write_text(LEAKAGE)
    result = lm_project.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=1, failed=1)
    by_id = {c["id"]: c for c in _checks(lm_project)}
    assert by_id["clean"]["outcome"] == "passed" and by_id["planted"]["outcome"] == "failed"
    planted, clean_metrics = by_id["planted"]["metrics"], by_id["clean"]["metrics"]
    assert set(planted) == set(TOKEN_METRICS)
    assert planted["exact_duplicates"]["value"] == 1
    n = len(ids)
    assert planted["ngram_overlap"]["value"] == pytest.approx(2 / n)
    assert planted["duplicate_rate"]["value"] == pytest.approx(2 / n)
    assert planted["duplicate_rate"]["ci"] == [2 / n, 2 / n]  # a census: its interval is the value
    assert all(clean_metrics[name]["value"] == 0 for name in TOKEN_METRICS)
    leaked = by_id["planted"]["duplicates"]
    assert [(d["id"], d["train_id"], d["match"]) for d in leaked] == [("3", "4", "exact"), ("11", "9", "ngram")]
    assert "a shared run of 13 tokens" in (lm_project.path / "reports" / "report.html").read_text()
    again = lm_project.runpytest("-p", "no:cacheprovider", "--distill")
    again.assert_outcomes(passed=1, failed=1)
    assert "from cache" in again.stdout.str()
    assert [c["metrics"] for c in _checks(lm_project)] == [by_id["planted"]["metrics"], by_id["clean"]["metrics"]]
    capsys.readouterr()
    assert main(["cache"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "leakage-tokens" in line]
    assert len(lines) == 2, lines  # one search per training set


def test_results_name_the_byte_corpus_as_its_table_does(lm_project: pytest.Pytester) -> None:
    """results.json's dataset provenance says source "builtin:bytes", what the user wrote, with sequences and tokens."""
    lm_project.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=3, failed=1)
    doc = json.loads((lm_project.path / "reports" / "results.json").read_text())
    corpus = doc["datasets"]["bytes"]
    assert corpus["source"] == "builtin:bytes"
    bytes_check = next(c for s in doc["suites"] for c in s["checks"] if c["id"] == "bytes")
    assert (corpus["n"], corpus["tokens"]) == (bytes_check["sequences"], bytes_check["tokens"])
