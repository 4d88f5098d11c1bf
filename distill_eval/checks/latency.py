"""Kind ``latency``: is the student faster and smaller than the teacher, on this machine?

Teacher and student are timed interleaved in one process (see
:mod:`distill_eval.latency`): after ``warmup`` untimed calls of each, pairs of
calls run in a seeded random order (teacher-then-student or the reverse), each
call timed on its own, until ``min_time_s`` seconds of calls have been timed and
at least :data:`~distill_eval.latency.MIN_PAIRS` (10) pairs, so that slow models
still get intervals.
Every call sees the same fixed batch: the first ``batch_size`` rows of the
check's dataset (a ``batch_size`` larger than the dataset is an error). No
labels and no model outputs are needed. Each model is first called once,
untimed, on that batch: a model that cannot run on it (a fixed-batch export,
rows of the wrong shape) is an error naming the model, and so is a teacher and
student that disagree on the number of classes.

Why gate on ratios: a shared CI runner is slower at some moments than at
others, and by different amounts from one run to the next. Absolute
milliseconds follow it: ``max = { student_p50_ms = 2 }`` can pass on a quiet
machine and fail on a busy one with the same model. Because the two models
are interleaved, call by call, both see the same noise at the same moments,
so ``speedup`` (a ratio of medians taken from the same pairs) moves far less,
and ``param_ratio`` and ``student_mb`` do not depend on the machine at all.

Parameters (suite keys)
-----------------------
batch_size : int >= 1, default 1
    Rows per timed call; at most the dataset's size.
warmup : int >= 0, default 10
    Untimed calls of each model before timing.
min_time_s : float > 0, default 1.0
    Time pairs until the timed calls add up to this many seconds (both models).
max_pairs : int >= 1, default 100000
    A safety cap on the number of timed pairs. Below 10 it can leave a
    metric without an interval, which a ``strict`` gate cannot pass.
threads : int >= 1, optional
    ``torch.set_num_threads`` while timing (restored afterwards), and ONNX
    Runtime's intra-op threads; default: torch's current count.
device : str, optional
    Where the models must run: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or
    ``"auto"``. Models are timed where the session loaded them (the project's
    ``device``, or ``--distill-device``); this key only asserts it, and a
    mismatch is an error that says which device to configure. Loading a
    second copy on another device would time a model the rest of the run
    never evaluated.
hourly_cost : float > 0, optional
    Price of the machine per hour (any currency), for the cost metrics.
prompt_length : int >= 1, default 64 (token data only)
    Tokens per prompt of a generation episode.
new_tokens : int >= 2, default 32 (token data only)
    Tokens generated per prompt of a generation episode.

Metrics
-------
student_p50_ms, student_p95_ms, student_p99_ms, teacher_p50_ms, teacher_p95_ms
    Percentiles of per-call milliseconds (:func:`numpy.quantile`), with
    distribution-free order-statistic intervals (binomial ranks; none when too
    few calls were timed for the percentile, e.g. fewer than about 370 for p99
    at 95%).
speedup
    ``teacher_p50_ms / student_p50_ms``; percentile-bootstrap interval over
    timed pairs (both medians recomputed on the same resampled pairs).
student_throughput
    Examples per second: ``batch_size`` / the student's mean seconds per call;
    BCa bootstrap interval over pairs.
student_params, teacher_params, param_ratio
    Parameter counts (when the format tells them) and teacher / student.
    Exact: the interval is the value.
student_mb
    Serialised size in MB (10^6 bytes): the student's file(s) in the project
    config (``path``, and ``weights``), or, without files, the size of
    ``torch.save(module.state_dict())``. Exact.
student_cost_per_1k, teacher_cost_per_1k
    With ``hourly_cost``: the cost of serving 1000 examples one batch at a
    time at the measured median latency,
    ``hourly_cost / 3600 * p50_seconds / batch_size * 1000``; the interval is
    the p50 interval, scaled. Undefined without ``hourly_cost``.

On token data (language models) one timed call is a fixed-shape greedy generation episode
(:func:`distill_eval.latency.generation_call`), timed in two phases: the prefill with the first
argmax (time to first token), then ``new_tokens - 1`` decode steps with the key-value cache
when the model has one. Its metrics are :data:`TOKEN_METRICS`: TTFT, TPOT and e2e percentiles,
``speedup`` (e2e), ``ttft_speedup``, ``decode_speedup``, prefill and decode tokens per second,
the size metrics, and the cost per million generated tokens.

Extras: ``pairs``, ``warmup``, ``measured_s``, ``threads``, ``batch_size``,
``device``, ``timed`` (what was timed for each model), ``machine`` (CPU
model, cores, versions, GPU name) and ``histogram`` (per model: 20 bins of
per-call ms from the fastest call to the 99th percentile, ``edges``,
``counts`` and ``above``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill_eval import latency as L
from distill_eval._tables import TableReader
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric
from distill_eval.errors import CheckError, DataError, ModelError
from distill_eval.metrics.stats import MIN_BOOTSTRAP_EXAMPLES, Statistic, bootstrap_intervals, weighted_sum

if TYPE_CHECKING:
    from distill_eval.config import ModelSpec
    from distill_eval.lm.models import TokenModel
    from distill_eval.models import Model

COST_METRICS = ("student_cost_per_1k", "teacher_cost_per_1k")
#: kind ``latency`` on token data: one timed call is a fixed-shape greedy generation episode
TOKEN_METRICS = (
    "student_ttft_p50_ms",
    "student_ttft_p95_ms",
    "teacher_ttft_p50_ms",
    "teacher_ttft_p95_ms",
    "student_tpot_p50_ms",
    "student_tpot_p95_ms",
    "teacher_tpot_p50_ms",
    "teacher_tpot_p95_ms",
    "student_e2e_p50_ms",
    "student_e2e_p95_ms",
    "teacher_e2e_p50_ms",
    "teacher_e2e_p95_ms",
    "speedup",
    "ttft_speedup",
    "decode_speedup",
    "student_prefill_tokens_per_s",
    "teacher_prefill_tokens_per_s",
    "student_decode_tokens_per_s",
    "teacher_decode_tokens_per_s",
    "student_params",
    "teacher_params",
    "param_ratio",
    "student_mb",
    "student_cost_per_1m_tokens",
    "teacher_cost_per_1m_tokens",
)
TOKEN_COST_METRICS = ("student_cost_per_1m_tokens", "teacher_cost_per_1m_tokens")
#: defaults of the token-only keys
PROMPT_LENGTH, NEW_TOKENS = 64, 32
_DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    params = {
        "batch_size": r.integer("batch_size", 1, minimum=1),
        "warmup": r.integer("warmup", 10, minimum=0),
        "min_time_s": r.number("min_time_s", 1.0, minimum=0, exclusive_minimum=True),
        "max_pairs": r.integer("max_pairs", 100_000, minimum=1),
        "threads": r.integer("threads", None, minimum=1),
        "device": r.string("device", None),
        "hourly_cost": r.number("hourly_cost", None, minimum=0, exclusive_minimum=True),
        # token data only; None = the default there, and an error on classification data
        "prompt_length": r.integer("prompt_length", None, minimum=1),
        "new_tokens": r.integer("new_tokens", None, minimum=2),
    }
    device = params["device"]
    if device is not None:
        kind, _, index = device.partition(":")
        if kind not in _DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
            raise r.error(f"'device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    bounded = set(r.table.get("min", {}) or {}) | set(r.table.get("max", {}) or {})
    for name in COST_METRICS + TOKEN_COST_METRICS:
        if name in bounded and params["hourly_cost"] is None:
            raise r.error(f"a bound on '{name}' needs 'hourly_cost' (the machine's price per hour)")
    return params


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    import torch

    if ctx.is_tokens:
        return _token_compute(ctx, params)
    for key in ("prompt_length", "new_tokens"):
        if params[key] is not None:
            raise CheckError(
                f"check '{ctx.check.id}': '{key}' applies only to token data, and dataset '{ctx.check.dataset}' "
                "holds classification examples; drop it from this check"
            )
    teacher, student = ctx.model(ctx.check.teacher), ctx.model(ctx.check.student)
    _check_device(ctx, params["device"], teacher, student)
    data = ctx.dataset
    if data.n == 0:
        raise DataError(f"dataset '{ctx.check.dataset}' has no examples to time the models on")
    batch_size = params["batch_size"]
    if batch_size > data.n:
        raise CheckError(
            f"'batch_size' = {batch_size} is larger than dataset '{ctx.check.dataset}' ({data.n} examples): "
            f"every timed call runs on one batch of distinct rows of the dataset; set batch_size to at most "
            f"{data.n} in this check, or time on a larger dataset"
        )
    batch = data.x[:batch_size]
    threads = params["threads"] or torch.get_num_threads()
    t_call, s_call = L.timed_call(teacher, batch, threads=threads), L.timed_call(student, batch, threads=threads)
    classes = {model.name: _trial(ctx, call, model, batch) for model, call in ((teacher, t_call), (student, s_call))}
    if classes[teacher.name] != classes[student.name]:
        raise ModelError(
            f"models '{teacher.name}' and '{student.name}' disagree on the number of classes: "
            f"'{teacher.name}' outputs shape ({batch_size}, {classes[teacher.name]}), '{student.name}' outputs "
            f"shape ({batch_size}, {classes[student.name]}) on the timing batch of dataset '{ctx.check.dataset}'; "
            "a latency gate compares a student with the teacher it replaces, which predicts the same classes"
        )
    timings = L.time_interleaved(
        t_call,
        s_call,
        rng=ctx.rng_for("latency"),
        warmup=params["warmup"],
        min_time_s=params["min_time_s"],
        max_pairs=params["max_pairs"],
        threads=threads,
    )
    confidence = ctx.suite.confidence
    t_ms, s_ms = timings.teacher_ns / 1e6, timings.student_ns / 1e6

    metrics: dict[str, Metric] = {}
    for who, ms, levels in (("student", s_ms, (50, 95, 99)), ("teacher", t_ms, (50, 95))):
        for level in levels:
            estimate, ci, note = L.quantile_interval(ms, level / 100, confidence=confidence)
            metrics[f"{who}_p{level}_ms"] = Metric(estimate, ci, note)

    metrics |= _bootstrapped(
        ctx,
        timings.pairs,
        {
            "speedup": (_ratio_of_medians(t_ms, s_ms), "percentile"),
            "student_throughput": (_throughput(s_ms, batch_size), "bca"),
        },
    )
    metrics |= _size_metrics(ctx, teacher, student)
    for who in ("student", "teacher"):
        # hourly_cost / 3600 s * (p50_ms / 1000) s per batch / batch_size examples * 1000 examples
        metrics[f"{who}_cost_per_1k"] = _cost(params["hourly_cost"], metrics[f"{who}_p50_ms"], 1000 / batch_size)
    extras = {
        **_timing_extras(timings),
        "batch_size": batch_size,
        "device": _device_of(teacher, student),
        "timed": {"teacher": t_call.how, "student": s_call.how},
        "machine": L.machine_info(student.device if student.device.startswith("cuda") else teacher.device),
        "histogram": {"teacher": L.histogram(t_ms), "student": L.histogram(s_ms)},
    }
    return Measurement(metrics, extras=extras, n=timings.pairs)


def _token_compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Kind ``latency`` on token data: both models timed on the same fixed-shape generation episodes."""
    import torch

    prompt_length = params["prompt_length"] or PROMPT_LENGTH
    new_tokens = params["new_tokens"] or NEW_TOKENS
    batch_size = params["batch_size"]
    prompts = _prompts(ctx, batch_size, prompt_length)
    teacher, student = ctx.token_model(ctx.check.teacher), ctx.token_model(ctx.check.student)
    _check_device(ctx, params["device"], teacher, student)
    threads = params["threads"] or torch.get_num_threads()
    t_call = L.generation_call(teacher, prompts, new_tokens)
    s_call = L.generation_call(student, prompts, new_tokens)
    for model, call in ((teacher, t_call), (student, s_call)):
        _generation_trial(ctx, call, model, prompts)
    timings = L.time_interleaved(
        t_call,
        s_call,
        rng=ctx.rng_for("latency"),
        warmup=params["warmup"],
        min_time_s=params["min_time_s"],
        max_pairs=params["max_pairs"],
        threads=threads,
    )
    # per call, in ms: the prefill phase (time to first token) and the decode phase (the other steps)
    phase_ms = {"teacher": timings.teacher_phase_ns / 1e6, "student": timings.student_phase_ns / 1e6}
    ttft = {who: ms[:, 0] for who, ms in phase_ms.items()}
    decode = {who: ms[:, 1] for who, ms in phase_ms.items()}
    e2e = {who: ms.sum(axis=1) for who, ms in phase_ms.items()}
    steps = new_tokens - 1
    confidence = ctx.suite.confidence
    per_call = {"ttft": ttft, "tpot": {who: ms / steps for who, ms in decode.items()}, "e2e": e2e}
    metrics: dict[str, Metric] = {}
    for who in ("student", "teacher"):
        for what, ms in per_call.items():
            for level in (50, 95):
                estimate, ci, note = L.quantile_interval(ms[who], level / 100, confidence=confidence)
                metrics[f"{who}_{what}_p{level}_ms"] = Metric(estimate, ci, note)
    statistics = {
        "speedup": (_ratio_of_medians(e2e["teacher"], e2e["student"]), "percentile"),
        "ttft_speedup": (_ratio_of_medians(ttft["teacher"], ttft["student"]), "percentile"),
        "decode_speedup": (_ratio_of_medians(decode["teacher"], decode["student"]), "percentile"),
    }
    for who in ("student", "teacher"):
        statistics[f"{who}_prefill_tokens_per_s"] = (_throughput(ttft[who], batch_size * prompt_length), "bca")
        statistics[f"{who}_decode_tokens_per_s"] = (_throughput(decode[who], batch_size * steps), "bca")
    metrics |= _bootstrapped(ctx, timings.pairs, statistics)
    metrics |= _size_metrics(ctx, teacher, student)
    for who in ("student", "teacher"):
        # hourly_cost / 3600 s * (e2e p50 / 1000) s per episode / (batch_size * new_tokens) tokens * 10^6 tokens
        scale = 1e6 / (batch_size * new_tokens)
        metrics[f"{who}_cost_per_1m_tokens"] = _cost(params["hourly_cost"], metrics[f"{who}_e2e_p50_ms"], scale)

    kv_cache = {"teacher": teacher.has_kv_cache, "student": student.has_kv_cache}
    extras: dict[str, Any] = {
        **_timing_extras(timings),
        "batch_size": batch_size,
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
        "kv_cache": kv_cache,
        "device": _device_of(teacher, student),
        "timed": {"teacher": t_call.how, "student": s_call.how},
        "machine": L.machine_info(student.device if student.device.startswith("cuda") else teacher.device),
        "histogram": {who: L.histogram(ms) for who, ms in e2e.items()},
    }
    uncached = [
        f"'{m.name}' ({m.format})" for role, m in (("teacher", teacher), ("student", student)) if not kv_cache[role]
    ]
    if uncached:
        who = f"model {uncached[0]} has" if len(uncached) == 1 else f"models {' and '.join(uncached)} have"
        extras["note"] = (
            f"{who} no key-value cache: each decode step recomputes the whole sequence (timed as it runs here; "
            "a cached export of the same model would decode faster)"
        )
        ctx.log(extras["note"])
    return Measurement({key: metrics[key] for key in TOKEN_METRICS}, extras=extras, n=timings.pairs)


def _prompts(ctx: CheckContext, batch_size: int, prompt_length: int) -> np.ndarray:
    """The first ``prompt_length`` attended tokens of the first ``batch_size`` sequences that have that many."""
    data = ctx.token_dataset
    name = ctx.check.dataset
    if data.n_sequences == 0:
        raise DataError(f"dataset '{name}' has no sequences to time the models on")
    lengths = data.attention_mask.sum(axis=1)
    longest = int(lengths.max())
    rows = np.flatnonzero(lengths >= prompt_length)
    if rows.size == 0:
        raise CheckError(
            f"check '{ctx.check.id}' (latency): 'prompt_length' = {prompt_length} is longer than every sequence of "
            f"dataset '{name}' (the longest has {longest} tokens); set prompt_length to at most {longest}"
        )
    if rows.size < batch_size:
        raise CheckError(
            f"check '{ctx.check.id}' (latency): 'batch_size' = {batch_size} needs {batch_size} sequences of at "
            f"least 'prompt_length' = {prompt_length} tokens, but dataset '{name}' has {rows.size} (the longest has "
            f"{longest} tokens); lower batch_size or prompt_length"
        )
    rows = rows[:batch_size]
    return np.stack([data.input_ids[r][data.attention_mask[r] == 1][:prompt_length] for r in rows])


def _generation_trial(ctx: CheckContext, call: L.TimedCall, model: TokenModel, prompts: np.ndarray) -> None:
    """Run one generation episode, untimed: a model that cannot generate fails here, in one line."""
    what = (
        f"generate from the latency prompts of shape {tuple(prompts.shape)} (tokens of dataset '{ctx.check.dataset}')"
    )
    _untimed(ctx, call, model.name, lambda: call.call(lambda: None), cannot=what)


def _bootstrapped(ctx: CheckContext, pairs: int, statistics: Mapping[str, tuple[Statistic, str]]) -> dict[str, Metric]:
    """Ratios and rates of the timings, each with its bootstrap interval over timed pairs (kept paired)."""
    boot = bootstrap_intervals(
        {name: stat for name, (stat, _) in statistics.items()},
        pairs,
        n_resamples=ctx.suite.bootstrap,
        confidence=ctx.suite.confidence,
        rng=ctx.rng_for("bootstrap"),
        method={name: method for name, (_, method) in statistics.items()},
    )
    metrics = {}
    for name in statistics:
        r = boot[name]
        ci = (r.low, r.high) if r.low is not None and r.high is not None else None
        metrics[name] = Metric.of(r.estimate, ci, undefined="the student's median call took no measurable time")
        if ci is None and metrics[name].value is not None and pairs < MIN_BOOTSTRAP_EXAMPLES:
            metrics[name] = Metric(
                metrics[name].value,
                None,
                f"{pairs} timed pair is too few for a bootstrap interval ('max_pairs' caps the pairs)",
            )
    return metrics


def _size_metrics(ctx: CheckContext, teacher: Model | TokenModel, student: Model | TokenModel) -> dict[str, Metric]:
    """Parameter counts, their ratio and the student's serialised size: exact, whatever the machine."""
    t_params, s_params = teacher.params, student.params
    metrics = {
        "student_params": _exact(s_params, f"model '{student.name}' ({student.format}) does not tell its size"),
        "teacher_params": _exact(t_params, f"model '{teacher.name}' ({teacher.format}) does not tell its size"),
        "param_ratio": (
            _exact(t_params / s_params, "")
            if t_params is not None and s_params
            else Metric(None, None, "a parameter count is unknown (or the student's is 0)")
        ),
    }
    size, where = _serialized_bytes(ctx.project.models.get(ctx.check.student), student)
    metrics["student_mb"] = _exact(None if size is None else size / 1e6, where)
    return metrics


def _cost(hourly: float | None, p50: Metric, units_per_call: float) -> Metric:
    """``hourly_cost`` spent on ``units`` at the p50 seconds per call: hourly / 3600 × p50 s × units_per_call.

    ``units_per_call`` is how many of the priced units one call serves, inverted (e.g. 1000 / batch_size
    for the cost of 1000 examples); the interval is the p50's, scaled.
    """
    if hourly is None:
        return Metric(None, None, "no 'hourly_cost' given")
    scale = hourly / 3600 / 1000 * units_per_call
    ci = (p50.ci[0] * scale, p50.ci[1] * scale) if p50.ci else None
    return Metric(float(p50.value or 0.0) * scale, ci, p50.note)  # a percentile is never None


def _timing_extras(timings: L.PairedTimings) -> dict[str, Any]:
    return {
        "pairs": timings.pairs,
        "warmup": timings.warmup,
        "measured_s": round(timings.measured_s, 6),
        "threads": timings.threads,
    }


def _device_of(teacher: Model | TokenModel, student: Model | TokenModel) -> str:
    if teacher.device == student.device:
        return teacher.device
    return f"{teacher.device} (teacher), {student.device} (student)"


#: how to export a model that accepts any batch size (said when a trial call fails)
_DYNAMIC_BATCH_HINT = (
    "if the model was exported for a fixed batch size, export it with a dynamic batch dimension, e.g. "
    "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)), or set this "
    "check's 'batch_size' to the exported one; the dataset's rows must have the shape the model expects"
)


def _untimed(
    ctx: CheckContext, call: L.TimedCall, name: str, run: Callable[[], Any], *, cannot: str, hint: str = ""
) -> Any:
    """``run()`` once, untimed and synchronised: the user's model failing on the user's data is one line.

    The :class:`~distill_eval.errors.ModelError` names the model and its file: "model 'student'
    (<file>) cannot <cannot>: <exception>; <hint>".
    """
    import torch

    spec = ctx.project.models.get(name)
    where = f" ({spec.describe()})" if spec is not None else ""
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # as while timing: TorchScript's deprecation
            out = run()
            if call.sync is not None:
                call.sync()
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 — the user's model failed on the user's data: one line, no traceback
        lines = str(e).strip().splitlines()
        first = lines[0][:300] if lines else ""
        raise ModelError(
            f"model '{name}'{where} cannot {cannot}: {type(e).__name__}: {first}" + (f"; {hint}" if hint else "")
        ) from None
    return out


def _trial(ctx: CheckContext, call: L.TimedCall, model: Model, batch: np.ndarray) -> int:
    """Run ``call`` once, untimed; return the number of classes it outputs.

    A model that cannot run on the timing batch fails here with one line naming the model
    and its file, rather than deep inside the timing loop.
    """
    spec = ctx.project.models.get(model.name)
    where = f" ({spec.describe()})" if spec is not None else ""
    what = f"the latency timing batch of shape {tuple(batch.shape)} (rows of dataset '{ctx.check.dataset}')"
    out = _untimed(ctx, call, model.name, call.call, cannot=f"run on {what}", hint=_DYNAMIC_BATCH_HINT)
    shape = tuple(out.shape) if hasattr(out, "shape") else np.shape(out)
    if len(shape) != 2 or shape[0] != len(batch):
        raise ModelError(
            f"model '{model.name}'{where} returned outputs of shape {shape} for {what}; expected logits of shape "
            f"({len(batch)}, n_classes)"
        )
    return int(shape[1])


def _exact(value: float | None, undefined: str) -> Metric:
    if value is None:
        return Metric(None, None, undefined)
    return Metric(float(value), (float(value), float(value)))


def _ratio_of_medians(numerator: np.ndarray, denominator: np.ndarray) -> Statistic:
    """``median(numerator) / median(denominator)`` on the same resampled pairs."""
    top, bottom = L.weighted_median(numerator), L.weighted_median(denominator)

    def statistic(w: np.ndarray) -> np.ndarray:
        b = bottom(w)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b > 0, top(w) / np.where(b > 0, b, 1.0), np.nan)

    return statistic


def _throughput(ms: np.ndarray, batch_size: int) -> Statistic:
    """Examples per second: ``batch_size * calls / total seconds``."""
    seconds = np.asarray(ms, dtype=np.float64) / 1e3

    def statistic(w: np.ndarray) -> np.ndarray:
        total = weighted_sum(w, seconds)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, batch_size * weighted_sum(w) / np.where(total > 0, total, 1.0), np.nan)

    return statistic


def _serialized_bytes(spec: ModelSpec | None, model: Model) -> tuple[int | None, str]:
    """The model's file sizes from its config, else its torch state dict's; and why None if neither."""
    import torch

    files = [p for p in ((spec.path, spec.weights) if spec is not None else ()) if p is not None]
    if files and all(Path(p).is_file() for p in files):
        return sum(Path(p).stat().st_size for p in files), ""
    if isinstance(model.module, torch.nn.Module):
        buffer = io.BytesIO()
        torch.save(model.module.state_dict(), buffer)
        return buffer.getbuffer().nbytes, ""
    return None, f"model '{model.name}' ({model.format}) has no file in the project config and is not a torch module"


def _check_device(ctx: CheckContext, wanted: str | None, *models: Model) -> None:
    """Models are timed where the session loaded them: a ``device`` key must name that device."""
    if wanted is None:
        return
    import torch

    from distill_eval.models import resolve_device

    target = _normalised(resolve_device(wanted))
    for model in models:
        if _normalised(model.device) != target:
            runs = "is loaded on" if isinstance(model.module, torch.nn.Module) else f"({model.format}) runs on"
            raise CheckError(
                f"check '{ctx.check.id}' (latency) asks for device {wanted!r}, but model '{model.name}' {runs} "
                f"{model.device!r}; models are timed where the session loaded them, so 'device' must match the "
                f"configured device: set device = {wanted!r} in [tool.distill_eval] or pass "
                f"--distill-device {wanted}, or drop 'device' from the check"
            )


def _normalised(device: str) -> tuple[str, int]:
    import torch

    d = torch.device(device)
    if d.index is not None:
        return d.type, d.index
    if d.type == "cuda" and torch.cuda.is_available():
        return d.type, torch.cuda.current_device()
    return d.type, 0


KIND = CheckKind(
    name="latency",
    metrics=(
        "student_p50_ms",
        "student_p95_ms",
        "student_p99_ms",
        "teacher_p50_ms",
        "teacher_p95_ms",
        "speedup",
        "student_throughput",
        "student_params",
        "teacher_params",
        "param_ratio",
        "student_mb",
        "student_cost_per_1k",
        "teacher_cost_per_1k",
    ),
    read_params=read_params,
    compute=compute,
    token_metrics=TOKEN_METRICS,
)
