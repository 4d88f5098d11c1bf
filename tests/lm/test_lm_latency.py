"""Kind ``latency`` on token data: language models timed on fixed-shape greedy generation episodes.

The metric arithmetic is checked exactly with a fake clock that only the models' forward passes
advance (by costs the test draws, so every expected value is a numpy computation on them);
timing itself with a planted slow decoder far from the real one, so a busy 2-core machine
cannot flip the verdict; and the kind through a real ``pytest --distill`` session.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_eval import latency as L
from distill_eval import load_suite
from distill_eval.checks import KINDS, CheckContext
from distill_eval.checks.latency import TOKEN_METRICS
from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig
from distill_eval.errors import CheckError, ConfigError
from distill_eval.lm.models import TokenModel, load_token_model
from distill_eval.lm.tokens import TokenDataset, token_dataset
from distill_eval.models import wrap_model

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = "distill_eval.train.zoo"


def zoo_model(name: str, seed: int = 0, **sizes: int) -> TokenModel:
    torch.manual_seed(seed)  # untrained weights, seeded
    sizes = sizes or {"d_model": 32, "d_ff": 64}
    return load_token_model(ModelSpec(name=name, factory=f"{ZOO}:bytes_student", kwargs=sizes))


def uncached(model: TokenModel) -> TokenModel:
    """The same module without its key-value cache: every decode step recomputes the sequence (as a .pt2 does)."""
    return dataclasses.replace(model, _cached=None, format="torch.export")


def wrap_forward(model: TokenModel, before) -> list[tuple[int, bool]]:
    """Call ``before(length, cached_step)`` ahead of every forward pass of ``model``; return the log of calls."""
    module, log = model.module, []
    inner = module.forward

    def forward(input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        step = past_key_values is not None
        log.append((int(input_ids.shape[1]), step))
        before(int(input_ids.shape[1]), step)
        return inner(input_ids, attention_mask, past_key_values=past_key_values, use_cache=use_cache)

    module.forward = forward
    return log


def sequences(n: int = 6, length: int = 24, seed: int = 0) -> TokenDataset:
    rng = np.random.default_rng(seed)
    return token_dataset(rng.integers(0, 256, size=(n, length)), name="test")


class Source:
    """A context source with loaded language models and one token dataset."""

    def __init__(self, models: dict[str, TokenModel], data: TokenDataset):
        self.models, self.data, self.results = models, data, []
        self.project = ProjectConfig(
            rootdir=Path("."),
            models={name: ModelSpec(name) for name in models},
            datasets={"test": DatasetSpec("test")},
        )

    def is_token_dataset(self, name: str) -> bool:
        return True

    def token_dataset(self, name: str) -> TokenDataset:
        return self.data

    def token_model(self, name: str, dataset: str) -> TokenModel:
        return self.models[name]

    def model(self, name: str):
        raise AssertionError("a token latency check loaded a classification model")


def measure(tmp_path: Path, check: str, teacher: TokenModel, student: TokenModel, data: TokenDataset):
    path = tmp_path / "latency.toml"
    path.write_text(f'[[check]]\nkind = "latency"\n{check}\n')
    source = Source({"teacher": teacher, "student": student}, data)
    suite = load_suite(path, source.project)
    return KINDS["latency"].compute(CheckContext(suite, suite.checks[0], source), suite.checks[0].params)


# --- the engine: calls timed in phases ------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def test_phases_are_timed_at_each_mark_and_sum_to_the_call() -> None:
    clock = FakeClock()

    def episode(cost: tuple[int, int]):
        def call(mark):
            clock.now += cost[0]
            mark()
            clock.now += cost[1]

        return L.TimedCall(call, None, "fake", ("prefill", "decode"))

    timings = L.time_interleaved(
        episode((5, 70)), episode((2, 30)), rng=np.random.default_rng(0), warmup=1, min_time_s=0, clock=clock
    )
    assert timings.pairs == L.MIN_PAIRS and timings.phases == ("prefill", "decode")
    assert (timings.teacher_phase_ns == [5, 70]).all() and (timings.student_phase_ns == [2, 30]).all()
    assert (timings.teacher_ns == 75).all() and (timings.student_ns == 32).all()
    # calls not timed in phases keep no phase table
    whole = L.TimedCall(lambda: None)
    plain = L.time_interleaved(whole, whole, rng=np.random.default_rng(0), warmup=0, min_time_s=0, clock=clock)
    assert plain.teacher_phase_ns is None and plain.phases == ()


def test_a_call_that_marks_the_wrong_number_of_phases_is_refused() -> None:
    twice = L.TimedCall(lambda mark: (mark(), mark()), None, "bad", ("prefill", "decode"))
    with pytest.raises(RuntimeError, match="marked 2 phase ends"):
        L.time_interleaved(twice, twice, rng=np.random.default_rng(0), warmup=0, max_pairs=1)
    plain = L.TimedCall(lambda: None)
    with pytest.raises(ValueError, match="different phases"):
        L.time_interleaved(twice, plain, rng=np.random.default_rng(0))


def test_each_phase_ends_after_the_device_sync_the_classification_calls_use(monkeypatch) -> None:
    """On CUDA the clock must stop after the queued kernels finish: a fake sync that takes 1000 ns shows it."""
    clock, synced = FakeClock(), []

    def fake_sync(device: str):
        def sync() -> None:
            synced.append(device)
            clock.now += 1000

        return sync

    monkeypatch.setattr(L, "device_sync", fake_sync)
    model = zoo_model("student")
    wrap_forward(model, lambda length, step: setattr(clock, "now", clock.now + (50 if step else 300)))
    episode = L.generation_call(model, np.zeros((1, 5), dtype=np.int64), 3)
    timings = L.time_interleaved(episode, episode, rng=np.random.default_rng(0), warmup=0, max_pairs=1, clock=clock)
    # prefill: 300 + the sync at its mark; decode: two steps of 50 + the sync at the end
    assert timings.teacher_phase_ns.tolist() == [[1300, 1100]] == timings.student_phase_ns.tolist()
    assert synced == ["cpu"] * 4
    # a classification model is timed through the same helper
    call = L.timed_call(wrap_model("m", torch.nn.Identity(), format="factory"), np.zeros((1, 2), dtype=np.float32))
    assert call.sync is not None and call.sync() is None and synced[-1] == "cpu"


def test_cached_and_recomputed_episodes_generate_the_same_tokens() -> None:
    cached = zoo_model("student")
    recompute = uncached(zoo_model("student"))
    prompts = np.random.default_rng(1).integers(0, 256, size=(2, 7))
    marks: dict[str, int] = {}
    tokens = {}
    for label, model in (("cached", cached), ("recompute", recompute)):
        log = wrap_forward(model, lambda length, step: None)
        call = L.generation_call(model, prompts, 5)
        assert call.phases == ("prefill", "decode")
        with torch.inference_mode():
            out = call.call(lambda label=label, log=log: marks.update({label: len(log)}))
        tokens[label] = torch.stack(out, dim=1).numpy()
        if label == "cached":  # the prompt once, then only each new token
            assert log == [(7, False)] + [(1, True)] * 4 and "key-value cache" in call.how
        else:  # the whole sequence at every step
            assert log == [(7 + i, False) for i in range(5)] and "recomputing" in call.how
    assert marks == {"cached": 1, "recompute": 1}  # time to first token: after the prefill pass only
    # the reference: each prompt alone, its whole sequence re-run by hand at every step
    module = cached.module
    for row, prompt in enumerate(prompts):
        ids = torch.as_tensor(prompt)[None]
        expected = []
        with torch.no_grad():
            for _ in range(5):
                token = int(module(ids, torch.ones_like(ids))[0, -1, :259].argmax())
                expected.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert tokens["cached"][row].tolist() == expected == tokens["recompute"][row].tolist()
    with pytest.raises(ValueError, match="new_tokens must be >= 2"):
        L.generation_call(cached, prompts, 1)


# --- the kind, on a context ------------------------------------------------------------


def test_every_metric_by_hand_on_a_fake_clock(tmp_path: Path, monkeypatch) -> None:
    clock = FakeClock()
    rng = np.random.default_rng(7)
    costs: dict[str, list[tuple[int, bool, int]]] = {"teacher": [], "student": []}

    def advance(who: str, scale: int):
        def before(length: int, step: bool) -> None:
            cost = int(rng.integers(scale, 2 * scale)) * (1 if step else 8)  # a prefill costs ~8 steps
            clock.now += cost
            costs[who].append((length, step, cost))

        return before

    teacher, student = zoo_model("teacher", 1), zoo_model("student", 2)
    wrap_forward(teacher, advance("teacher", 400_000))  # ~0.6 ms per step
    wrap_forward(student, advance("student", 100_000))  # ~0.15 ms per step
    monkeypatch.setattr(L, "time_interleaved", functools.partial(L.time_interleaved, clock=clock))
    check = "batch_size = 2\nprompt_length = 6\nnew_tokens = 5\nwarmup = 3\nmin_time_s = 0.2\nhourly_cost = 7.2"
    m = measure(tmp_path, check, teacher, student, sequences())
    metrics, extras = m.metrics, m.extras
    assert list(metrics) == list(TOKEN_METRICS)

    per_call = {}
    for who, log in costs.items():
        prefills = [i for i, (_, step, _) in enumerate(log) if not step]
        assert len(prefills) == 1 + 3 + extras["pairs"]  # the untimed trial, the warmup, the timed calls
        assert all(log[i][0] == 6 for i in prefills)  # every prompt is prompt_length tokens
        episodes = [log[i : i + 5] for i in prefills[4:]]  # timed only
        assert all([s for _, s, _ in e] == [False, True, True, True, True] for e in episodes)
        ttft = np.array([e[0][2] for e in episodes]) / 1e6
        decode = np.array([sum(c for _, _, c in e[1:]) for e in episodes]) / 1e6
        per_call[who] = {"ttft": ttft, "decode": decode, "e2e": ttft + decode, "tpot": decode / 4}
    for who, calls in per_call.items():
        for what in ("ttft", "tpot", "e2e"):
            for level in (50, 95):
                metric = metrics[f"{who}_{what}_p{level}_ms"]
                assert metric.value == pytest.approx(np.quantile(calls[what], level / 100), rel=1e-12)
        # 2 prompts x 6 tokens per prefill, 2 x 4 tokens per decode phase, over the summed seconds
        n = extras["pairs"]
        prefill_rate = metrics[f"{who}_prefill_tokens_per_s"]
        assert prefill_rate.value == pytest.approx(2 * 6 * n / (calls["ttft"].sum() / 1e3), rel=1e-12)
        decode_rate = metrics[f"{who}_decode_tokens_per_s"]
        assert decode_rate.value == pytest.approx(2 * 4 * n / (calls["decode"].sum() / 1e3), rel=1e-12)
        for rate in (prefill_rate, decode_rate):
            assert rate.ci[0] <= rate.value <= rate.ci[1]
        # 7.2 per hour = 0.002 per second; an episode of e2e p50 ms generates 2 x 5 tokens
        cost = metrics[f"{who}_cost_per_1m_tokens"]
        assert cost.value == pytest.approx(0.002 * np.median(calls["e2e"]) / 1e3 / 10 * 1e6, rel=1e-12)
    t, s = per_call["teacher"], per_call["student"]
    for name, what in (("speedup", "e2e"), ("ttft_speedup", "ttft"), ("decode_speedup", "decode")):
        assert metrics[name].value == pytest.approx(np.median(t[what]) / np.median(s[what]), rel=1e-12)
        lo, hi = metrics[name].ci
        assert 1 < lo <= metrics[name].value <= hi  # the student's costs are drawn 4x smaller
    assert metrics["teacher_params"].value == sum(p.numel() for p in teacher.module.parameters())
    assert metrics["param_ratio"].value == pytest.approx(1.0)  # the same architecture
    assert extras["measured_s"] == pytest.approx(sum(c["e2e"].sum() for c in per_call.values()) / 1e3, abs=1e-6)
    assert extras["prompt_length"] == 6 and extras["new_tokens"] == 5 and extras["batch_size"] == 2
    assert extras["kv_cache"] == {"teacher": True, "student": True} and "note" not in extras
    assert extras["warmup"] == 3 and extras["threads"] == 1 and extras["device"] == "cpu"
    hist = extras["histogram"]["student"]
    assert sum(hist["counts"]) + hist["above"] == extras["pairs"] == m.n
    assert json.loads(json.dumps(extras)) == extras


def test_a_planted_slow_decoder_loses_decode_speed_but_not_time_to_first_token(tmp_path: Path) -> None:
    teacher, student = zoo_model("teacher"), zoo_model("student")
    # the same network, but the student sleeps 3 ms in every decode step (and never in the prefill):
    # ~6x its compute per step, so no busy spell of the machine can flip decode_speedup
    wrap_forward(student, lambda length, step: time.sleep(0.003) if step else None)
    check = "prompt_length = 8\nnew_tokens = 4\nwarmup = 2\nmin_time_s = 0.3\nthreads = 1"
    m = measure(tmp_path, check, teacher, student, sequences()).metrics
    assert m["decode_speedup"].value < 0.6 and m["decode_speedup"].ci[1] < 1
    assert m["speedup"].value < 1
    assert 0.5 < m["ttft_speedup"].value < 2  # the prefills are the same work
    assert m["student_tpot_p50_ms"].value > 3 > m["teacher_tpot_p50_ms"].value
    assert m["student_decode_tokens_per_s"].value < m["teacher_decode_tokens_per_s"].value


def test_a_model_without_a_cache_is_timed_by_recompute_and_said(tmp_path: Path) -> None:
    teacher, student = zoo_model("teacher"), uncached(zoo_model("student"))
    m = measure(
        tmp_path, "prompt_length = 4\nnew_tokens = 3\nwarmup = 0\nmin_time_s = 0.01", teacher, student, sequences()
    )
    assert m.extras["kv_cache"] == {"teacher": True, "student": False}
    assert "recomputing" in m.extras["timed"]["student"] and "key-value cache" in m.extras["timed"]["teacher"]
    assert m.extras["note"].startswith("model 'student' (torch.export) has no key-value cache")
    assert m.metrics["decode_speedup"].value is not None  # a note, not an error


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            "prompt_length = 30",
            "'prompt_length' = 30 is longer than every sequence of dataset 'test' (the longest "
            "has 24 tokens); set prompt_length to at most 24",
        ),
        ("", "'prompt_length' = 64 is longer than every sequence"),  # the default
        (
            "prompt_length = 20\nbatch_size = 7",
            "'batch_size' = 7 needs 7 sequences of at least 'prompt_length' = 20 "
            "tokens, but dataset 'test' has 6 (the longest has 24 tokens); lower batch_size or prompt_length",
        ),
    ],
)
def test_prompts_the_dataset_cannot_give_are_a_clear_error(tmp_path: Path, check: str, message: str) -> None:
    model = zoo_model("teacher")
    with pytest.raises(CheckError, match="check 'latency' ") as info:
        measure(tmp_path, check, model, model, sequences())
    assert message in str(info.value)


def test_prompts_are_the_attended_tokens_of_long_enough_sequences(tmp_path: Path, monkeypatch) -> None:
    # sequence 0 is too short; sequence 1 is left-padded: its prompt starts at its first attended token
    ids = np.array([[1, 2, 3, 0, 0, 0], [0, 0, 7, 8, 9, 10], [4, 5, 6, 7, 8, 9]])
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    seen = []
    real = L.generation_call
    monkeypatch.setattr(L, "generation_call", lambda model, prompts, n: seen.append(prompts) or real(model, prompts, n))
    model = zoo_model("teacher")
    data = token_dataset(ids, mask, name="test")
    measure(
        tmp_path, "batch_size = 2\nprompt_length = 4\nnew_tokens = 2\nwarmup = 0\nmax_pairs = 1", model, model, data
    )
    assert [p.tolist() for p in seen] == [[[7, 8, 9, 10], [4, 5, 6, 7]]] * 2


def test_token_keys_are_refused_on_classification_data_and_new_tokens_needs_two(tmp_path: Path) -> None:
    path = tmp_path / "latency.toml"
    path.write_text('[[check]]\nkind = "latency"\nnew_tokens = 1\n')
    with pytest.raises(ConfigError, match="'new_tokens' must be an integer >= 2"):
        load_suite(path)
    path.write_text('[[check]]\nkind = "latency"\nmin = { student_cost_per_1m_tokens = 1 }\n')
    with pytest.raises(ConfigError, match="needs 'hourly_cost'"):
        load_suite(path)


# --- through pytest ---------------------------------------------------------------------

PYPROJECT = f"""
[tool.distill_eval]
device = "cpu"

[tool.distill_eval.models.teacher]
factory = "{ZOO}:causal_lm"
kwargs = {{ d_model = 64, n_layers = 2, d_ff = 128 }}

[tool.distill_eval.models.student]
factory = "{ZOO}:causal_lm"
kwargs = {{ d_model = 16, n_layers = 1, n_heads = 2, d_ff = 32 }}

[tool.distill_eval.models.accepted]
factory = "{ZOO}:causal_lm"
kwargs = {{ d_model = 32, n_layers = 1, n_heads = 2, d_ff = 64 }}

[tool.distill_eval.models.digits]
factory = "distill_eval.train.zoo:digits_student"

[tool.distill_eval.datasets.bytes]
source = "builtin:bytes"
seq_len = 32

[tool.distill_eval.datasets.digits]
source = "sklearn:digits"
split = "test"
"""

SUITE = """
[suite]
name = "lm-speed"
dataset = "bytes"

[[check]]
kind = "latency"
id = "generation"
prompt_length = 16
new_tokens = 4
warmup = 2
min_time_s = 0.2
threads = 1
hourly_cost = 3.6
min = { speedup = 0.001, param_ratio = 2 }

[[check]]
kind = "latency"
id = "prompt-too-long"
prompt_length = 100

[[check]]
kind = "latency"
id = "tokens-on-classification"
dataset = "digits"
teacher = "digits"
student = "digits"
new_tokens = 8
"""


def test_token_latency_gates_through_pytest_and_reports(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "speed.toml").write_text(SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*check 'prompt-too-long' (latency): 'prompt_length' = 100 is longer than every sequence of dataset "
            "'bytes' (the longest has 32 tokens)*",
            "*check 'tokens-on-classification': 'new_tokens' applies only to token data*",
        ]
    )
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    generation = doc["suites"][0]["checks"][0]
    assert generation["outcome"] == "passed" and list(generation["metrics"]) == list(TOKEN_METRICS)
    assert generation["metrics"]["speedup"]["value"] > 0 and generation["metrics"]["param_ratio"]["value"] > 2
    assert generation["metrics"]["student_cost_per_1m_tokens"]["value"] > 0
    assert generation["kv_cache"] == {"teacher": True, "student": True}
    assert (generation["prompt_length"], generation["new_tokens"], generation["batch_size"]) == (16, 4, 1)
    summary = (pytester.path / "reports" / "summary.md").read_text()
    html = (pytester.path / "reports" / "report.html").read_text()
    assert "| lm-speed | generation | latency | ✅ passed | speedup = " in summary
    assert "student_ttft_p50_ms" in html and "ms per generation episode" in html
    assert "16 prompt tokens, 4 new tokens" in html and "key-value cache: teacher yes, student yes" in html


REGRESSION = """
[suite]
name = "lm-regression"
dataset = "bytes"
bootstrap = 200

[[check]]
kind = "latency"
id = "accepted-vs-candidate"
teacher = "accepted"
prompt_length = 16
new_tokens = 4
warmup = 2
min_time_s = 0.2
threads = 1

[[check]]
kind = "regression"
baseline = "accepted"
max = { p50_ms_increase_ratio = 1000 }
"""


def test_a_paired_token_regression_reads_the_episode_p50s_of_a_token_latency_check(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject=PYPROJECT)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "regression.toml").write_text(REGRESSION)
    pytester.runpytest("-p", "no:cacheprovider", "--distill").assert_outcomes(passed=2)
    latency, regression = json.loads((pytester.path / "reports" / "results.json").read_text())["suites"][0]["checks"]
    ratio, m = regression["metrics"]["p50_ms_increase_ratio"], latency["metrics"]
    # the candidate is the latency check's student, the accepted one its teacher: student / teacher e2e p50,
    # with the inverted interval of the speedup bootstrapped over the same pairs
    assert ratio["value"] == pytest.approx(m["student_e2e_p50_ms"]["value"] / m["teacher_e2e_p50_ms"]["value"])
    low, high = m["speedup"]["ci"]
    assert ratio["ci"] == pytest.approx([1 / high, 1 / low])
