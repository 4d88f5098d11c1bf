"""Interleaved timing of a teacher and a student, and the statistics of the timings.

Both models are timed **in the same process, interleaved**: after warming
both up, each *pair* runs teacher-then-student or student-then-teacher (a
seeded coin decides), and every call is timed on its own with
:func:`time.perf_counter_ns`. Whatever slows the machine down while the
timings are taken — another job on a shared CI runner, frequency scaling, a
noisy neighbour — hits both models alike, at the same moments, so the
*ratios* of their timings (``speedup``) stay put while the absolute
milliseconds move with the machine. Percentiles get distribution-free
order-statistic intervals (:func:`quantile_interval`); ratios are
bootstrapped over pairs, which keeps that pairing.

A model is timed the way it serves: a torch module as ``module(tensor)`` on
a tensor already on its device (conversion is not timed; CUDA work is
synchronised before the clock stops), anything else (ONNX Runtime,
scikit-learn, ``predict_logits`` objects) as ``predict_logits(batch)``. A
language model is timed as one generation episode (:func:`generation_call`):
a call in *phases* (prefill, then decode), each phase's time recorded on its
own with the same clock and the same device synchronisation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distill_eval.errors import ModelError
from distill_eval.models import torchscript_deprecation_ignored

if TYPE_CHECKING:
    from distill_eval.lm.models import TokenModel
    from distill_eval.models import Model

__all__ = [
    "GENERATION_PHASES",
    "MIN_PAIRS",
    "PairedTimings",
    "TimedCall",
    "device_sync",
    "generation_call",
    "histogram",
    "machine_info",
    "quantile_interval",
    "quantile_ranks",
    "time_interleaved",
    "timed_call",
    "torch_threads",
    "weighted_median",
]

#: draws of the order coin made at once
_COIN_BLOCK = 1024
#: pairs timed at least, however slow the models (unless ``max_pairs`` is smaller): enough for a
#: bootstrap interval of ``speedup`` and an order-statistic interval of each median at 95%
MIN_PAIRS = 10


@dataclass(frozen=True)
class TimedCall:
    """One model's call, ready to be timed.

    Attributes
    ----------
    call : callable
        ``() -> object``: runs the model once on the prepared batch. With :attr:`phases`,
        ``(mark) -> object`` instead, and it calls ``mark()`` at the end of every phase but the
        last (the clock is read there, after :attr:`sync`).
    sync : callable or None
        Waits for work queued on an accelerator; called before the clock stops (and at every mark).
    how : str
        What is timed, for the results: ``"module(tensor)"``, ``"predict_logits"``,
        ``"onnxruntime"``.
    phases : tuple of str
        Names of the parts of one call timed separately (e.g. ``("prefill", "decode")``);
        empty: the call is timed as a whole.
    """

    call: Callable[..., object]
    sync: Callable[[], None] | None = None
    how: str = "callable"
    phases: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairedTimings:
    """Per-call timings of two models, one entry per pair.

    Attributes
    ----------
    teacher_ns, student_ns : ndarray of int64 of shape (pairs,)
        Duration of each timed call in nanoseconds; entry ``i`` of both comes from pair ``i``.
    teacher_first : ndarray of bool of shape (pairs,)
        Whether pair ``i`` ran the teacher first.
    warmup : int
        Untimed calls of each model before the first pair.
    threads : int
        Torch intra-op threads during the measurement.
    phases : tuple of str
        The phases each call was timed in (:attr:`TimedCall.phases`); empty when timed whole.
    teacher_phase_ns, student_phase_ns : ndarray of int64 of shape (pairs, len(phases)) or None
        Each phase's duration; a row sums to the call's entry of ``teacher_ns`` / ``student_ns``.
    """

    teacher_ns: np.ndarray
    student_ns: np.ndarray
    teacher_first: np.ndarray
    warmup: int
    threads: int
    phases: tuple[str, ...] = ()
    teacher_phase_ns: np.ndarray | None = None
    student_phase_ns: np.ndarray | None = None

    @property
    def pairs(self) -> int:
        return int(self.teacher_ns.size)

    @property
    def measured_s(self) -> float:
        """Total timed seconds, both models together."""
        return float(self.teacher_ns.sum() + self.student_ns.sum()) / 1e9


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the block; restore it afterwards.

    Parameters
    ----------
    threads : int or None
        Threads for the block; None keeps the current count.

    Yields
    ------
    int
        The thread count in force inside the block.
    """
    import torch

    previous = torch.get_num_threads()
    wanted = previous if threads is None else int(threads)
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


def _time_one(timed: TimedCall, clock: Callable[[], int]) -> tuple[int, ...]:
    """One call's duration, or each phase's, in the units of ``clock``."""
    call, sync = timed.call, timed.sync
    if not timed.phases:
        start = clock()
        call()
        if sync is not None:
            sync()
        return (clock() - start,)
    stamps = [clock()]

    def mark() -> None:
        if sync is not None:
            sync()
        stamps.append(clock())

    call(mark)
    mark()
    if len(stamps) != len(timed.phases) + 1:
        raise RuntimeError(f"a call timed in phases {timed.phases} marked {len(stamps) - 2} phase ends")
    return tuple(b - a for a, b in itertools.pairwise(stamps))


def time_interleaved(
    teacher: TimedCall,
    student: TimedCall,
    *,
    rng: np.random.Generator,
    warmup: int = 10,
    min_time_s: float = 1.0,
    max_pairs: int = 100_000,
    min_pairs: int = MIN_PAIRS,
    threads: int | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> PairedTimings:
    """Time two models call by call, interleaved in random order.

    Parameters
    ----------
    teacher, student : TimedCall
        The calls to time (see :func:`timed_call`).
    rng : numpy.random.Generator
        Decides, for each pair, which model runs first.
    warmup : int, default=10
        Untimed calls of each model first (teacher, student, teacher, ...).
    min_time_s : float, default=1.0
        Pairs are timed until the timed calls of both models add up to at least
        this many seconds, and at least ``min_pairs`` pairs.
    max_pairs : int, default=100000
        Stop after this many pairs even if ``min_time_s`` or ``min_pairs`` is not reached.
    min_pairs : int, default=MIN_PAIRS
        Time at least this many pairs (up to ``max_pairs``), so that even slow models get
        intervals.
    threads : int, optional
        ``torch.set_num_threads`` during warmup and measurement, restored
        afterwards; default: torch's current count.
    clock : callable, default=time.perf_counter_ns
        ``() -> int`` nanoseconds; tests inject a fake one to check the arithmetic exactly.

    Returns
    -------
    PairedTimings
        Every pair's two durations and order.

    Notes
    -----
    Everything runs under ``torch.inference_mode()``, entered once outside the
    timed region, as is the thread setting; only the call itself (and the
    device synchronisation, for CUDA) is inside the clock.
    """
    import torch

    if warmup < 0 or max_pairs < 1 or min_pairs < 1 or not min_time_s >= 0:
        raise ValueError(
            f"need warmup >= 0, max_pairs >= 1, min_pairs >= 1 and min_time_s >= 0, got warmup={warmup}, "
            f"max_pairs={max_pairs}, min_pairs={min_pairs}, min_time_s={min_time_s}"
        )
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if teacher.phases != student.phases:
        raise ValueError(f"teacher and student are timed in different phases: {teacher.phases} and {student.phases}")
    min_ns = int(min_time_s * 1e9)
    t_ns: list[tuple[int, ...]] = []
    s_ns: list[tuple[int, ...]] = []
    first: list[bool] = []
    with torch_threads(threads) as used, torch.inference_mode(), torchscript_deprecation_ignored():
        for _ in range(warmup):
            _time_one(teacher, clock)
            _time_one(student, clock)
        total = 0
        coins = np.empty(0, dtype=bool)
        while len(first) < max_pairs and (len(first) < min_pairs or total < min_ns):
            i = len(first) % _COIN_BLOCK
            if i == 0:
                coins = rng.random(_COIN_BLOCK) < 0.5
            if coins[i]:
                t = _time_one(teacher, clock)
                s = _time_one(student, clock)
            else:
                s = _time_one(student, clock)
                t = _time_one(teacher, clock)
            t_ns.append(t)
            s_ns.append(s)
            first.append(bool(coins[i]))
            total += sum(t) + sum(s)
    width = max(len(teacher.phases), 1)
    t_parts = np.asarray(t_ns, dtype=np.int64).reshape(-1, width)
    s_parts = np.asarray(s_ns, dtype=np.int64).reshape(-1, width)
    return PairedTimings(
        teacher_ns=t_parts.sum(axis=1),
        student_ns=s_parts.sum(axis=1),
        teacher_first=np.asarray(first, dtype=bool),
        warmup=warmup,
        threads=used,
        phases=teacher.phases,
        teacher_phase_ns=t_parts if teacher.phases else None,
        student_phase_ns=s_parts if teacher.phases else None,
    )


def timed_call(model: Model, batch: np.ndarray, *, threads: int | None = None) -> TimedCall:
    """Prepare ``model`` to be timed on ``batch``.

    A torch module gets the batch once as a tensor on the model's device and
    is timed as ``module(tensor)``; on CUDA (or MPS) the device is
    synchronised before the clock stops. A model that offers
    ``extra["with_threads"]`` (ONNX Runtime, see :func:`distill_eval.models.load_model`)
    gets a runtime with ``threads`` intra-op threads. Anything else is timed
    as ``model.predict_logits(batch)``.

    Parameters
    ----------
    model : Model
        A loaded model.
    batch : ndarray of shape (batch_size, ...)
        The inputs of every timed call.
    threads : int, optional
        Intra-op threads for runtimes that fix them when built (ONNX Runtime).
    """
    import torch

    batch = np.ascontiguousarray(batch)
    module = model.module
    if isinstance(module, torch.nn.Module):
        tensor = _on_device(model.name, model.device, batch)
        return TimedCall(lambda: module(tensor), device_sync(model.device), "module(tensor)")
    with_threads = model.extra.get("with_threads")
    if with_threads is not None and threads is not None:
        predict = with_threads(int(threads))
        return TimedCall(
            lambda: predict(batch), None, f"predict_logits ({model.format}, intra_op_num_threads={threads})"
        )
    predict = model.predict_logits
    return TimedCall(lambda: predict(batch), None, "predict_logits")


def device_sync(device: str) -> Callable[[], None] | None:
    """What waits for the work queued on ``device`` before a clock is read: None on the CPU.

    Every timed call, and every phase end of a call timed in phases, uses it: CUDA (and MPS)
    kernels run asynchronously, so without it the clock would stop when the work is queued.
    """
    import torch

    d = torch.device(device)
    if d.type == "cuda":

        def sync() -> None:
            torch.cuda.synchronize(d)

        return sync
    if d.type == "mps":
        return torch.mps.synchronize
    return None


def _on_device(name: str, device: str, batch: np.ndarray) -> Any:
    """The timing batch as a tensor on the model's device (converted once, never timed)."""
    import torch

    try:
        return torch.from_numpy(np.ascontiguousarray(batch)).to(torch.device(device))
    except Exception as e:  # the device string came from the user's config
        raise ModelError(f"model '{name}': cannot put the timing batch on {device!r}: {e}") from e


#: the phases of a generation episode (:func:`generation_call`)
GENERATION_PHASES = ("prefill", "decode")


def generation_call(model: TokenModel, prompts: np.ndarray, new_tokens: int) -> TimedCall:
    """Prepare a language model to be timed on one fixed-shape greedy generation episode.

    One call runs ``prompts`` through the model (the *prefill*) and takes the argmax of the
    last position's logits: the first new token, so the first phase ends at the time to first
    token. The second phase (*decode*) feeds each argmax back, ``new_tokens - 1`` more steps,
    each taking its argmax. An end-of-sequence token is not special: every episode generates
    exactly ``new_tokens`` tokens per prompt. A model with a key-value cache
    (:attr:`~distill_eval.lm.models.TokenModel.has_kv_cache`) runs only the new token at each
    step; any other is timed by recomputing the whole sequence (:class:`~distill_eval.lm.decode.Decoder`).

    Parameters
    ----------
    model : TokenModel
        A loaded language model.
    prompts : ndarray of int of shape (batch_size, prompt_length)
        The prompts of every episode, all attended (no padding: a fixed shape).
    new_tokens : int
        Tokens generated per prompt (>= 2: the decode phase needs at least one step).

    Returns
    -------
    TimedCall
        With phases :data:`GENERATION_PHASES`; the call returns the generated tokens, a list of
        ``new_tokens`` tensors of shape (batch_size,).
    """
    import torch

    from distill_eval.lm.decode import Decoder

    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (one prefill token and at least one decode step), got {new_tokens}")
    decoder = Decoder(model)
    ids = _on_device(model.name, model.device, np.asarray(prompts, dtype=np.int64))
    mask = torch.ones_like(ids)
    steps = new_tokens - 1

    def episode(mark: Callable[[], None]) -> list[Any]:
        logits, state = decoder.prefill(ids, mask)
        token = logits.argmax(-1)
        mark()  # time to first token
        tokens = [token]
        for _ in range(steps):
            logits, state = decoder.step(state, token)
            token = logits.argmax(-1)
            tokens.append(token)
        return tokens

    how = (
        "greedy generation with the key-value cache"
        if decoder.uses_cache
        else ("greedy generation recomputing the whole sequence at every step (the model has no key-value cache)")
    )
    return TimedCall(episode, device_sync(model.device), how, GENERATION_PHASES)


# --- statistics of timings ---------------------------------------------------------


def quantile_ranks(n: int, q: float, *, confidence: float = 0.95) -> tuple[int | None, int | None]:
    """1-based ranks of the order statistics that bound the ``q`` quantile.

    For a continuous distribution, the number ``B`` of observations below the
    true quantile is Binomial(n, q) whatever the distribution, so the order
    statistics ``[x_(l), x_(u)]`` cover it with probability ``P(l <= B < u)``.
    With ``l = binom.ppf(alpha/2, n, q)`` and ``u = binom.ppf(1 - alpha/2, n, q) + 1``
    each tail holds at most ``alpha/2``, so the coverage is at least
    ``confidence``: the standard exact interval, the same ranks as
    :func:`scipy.stats.quantile_test`'s ``confidence_interval``.

    Parameters
    ----------
    n : int
        Sample size.
    q : float
        Quantile level in (0, 1).
    confidence : float, default=0.95
        Two-sided confidence level.

    Returns
    -------
    (l, u) : tuple of int or None
        Ranks in ``[1, n]``; ``l`` is None when the sample is too small for a
        lower end at this confidence, ``u`` likewise for the upper end.

    Examples
    --------
    >>> quantile_ranks(10, 0.5)
    (2, 9)
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 1:
        return None, None
    from scipy import stats  # only for a latency check: keep the plugin's import light

    alpha = 1 - confidence
    low = int(stats.binom.ppf(alpha / 2, n, q))
    high = int(stats.binom.ppf(1 - alpha / 2, n, q)) + 1
    return (low if low >= 1 else None), (high if high <= n else None)


def quantile_interval(
    values: np.ndarray, q: float, *, confidence: float = 0.95
) -> tuple[float, tuple[float, float] | None, str | None]:
    """The ``q`` quantile of a sample with its distribution-free confidence interval.

    Parameters
    ----------
    values : array-like of shape (n,)
        The sample (e.g. per-call milliseconds).
    q : float
        Quantile level in (0, 1).
    confidence : float, default=0.95
        Two-sided confidence level.

    Returns
    -------
    estimate : float
        ``numpy.quantile(values, q)`` (linear interpolation).
    ci : (float, float) or None
        ``(x_(l), x_(u))`` with the ranks of :func:`quantile_ranks`; None when the
        sample is too small for both ends.
    note : str or None
        Why ``ci`` is None: the sample size an interval needs.

    Examples
    --------
    >>> quantile_interval(np.arange(1.0, 11.0), 0.5)
    (5.5, (2.0, 9.0), None)
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {x.shape}")
    estimate = float(np.quantile(x, q))
    low, high = quantile_ranks(x.size, q, confidence=confidence)
    if low is None or high is None:
        alpha = 1 - confidence
        # smallest n with (1-q)^n < alpha/2 (a lower end) and q^n <= alpha/2 (an upper end)
        needed = max(
            math.floor(math.log(alpha / 2) / math.log(1 - q)) + 1, math.ceil(math.log(alpha / 2) / math.log(q))
        )
        note = (
            f"{x.size} timed calls are too few for a distribution-free {confidence:.0%} interval "
            f"on the {q * 100:g}th percentile (about {needed} needed; raise min_time_s)"
        )
        return estimate, None, note
    return estimate, (float(x[low - 1]), float(x[high - 1])), None


def weighted_median(values: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The median of ``values`` under each row of a weight matrix (a bootstrap statistic).

    With integer weights (bootstrap counts, jackknife 0/1 rows) it equals
    :func:`numpy.median` of the sample in which example ``i`` appears ``w_i``
    times: the mean of the first values whose cumulative weight reaches
    ``total / 2`` and exceeds it.

    Parameters
    ----------
    values : array-like of shape (n,)

    Returns
    -------
    statistic : callable
        ``W of shape (k, n) -> medians of shape (k,)``, for
        :func:`distill_eval.metrics.stats.bootstrap_intervals`.
    """
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ordered = v[order]

    def statistic(w: np.ndarray) -> np.ndarray:
        cum = np.cumsum(w[:, order], axis=1)
        half = cum[:, -1:] / 2
        lower = np.argmax(cum >= half, axis=1)
        upper = np.argmax(cum > half, axis=1)
        return (ordered[lower] + ordered[upper]) / 2

    return statistic


def histogram(values: np.ndarray, *, bins: int = 20) -> dict[str, Any]:
    """A compact histogram for the report: ``bins`` equal bins from the minimum to the 99th percentile.

    Returns
    -------
    dict
        ``edges`` (``bins + 1`` floats), ``counts`` (``bins`` ints) and ``above``:
        the calls slower than the last edge (the tail a noisy machine adds).
    """
    x = np.asarray(values, dtype=np.float64)
    lo, hi = float(x.min()), float(np.quantile(x, 0.99))
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-9)
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    return {
        "edges": [float(f"{e:.6g}") for e in edges],
        "counts": [int(c) for c in counts],
        "above": int(np.count_nonzero(x > hi)),
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the timings were taken on: CPU model, cores, versions, GPU name."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        return None
    return None
