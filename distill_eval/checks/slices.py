"""Kind ``slices``: where, exactly, does the student lose against the teacher?

Slices are declared with a ``where`` expression over per-example fields (see
:mod:`distill_eval.expr`) or an ``ids`` file. Each slice reports its support,
the student's and the teacher's score on it, the retention (student /
teacher) and the gap (teacher − student).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval import expr
from distill_eval import metrics as M
from distill_eval._tables import TableReader, describe
from distill_eval.checks.base import CheckContext, CheckKind, Measurement, Metric, SliceMeasurement
from distill_eval.checks.discovery import Discovered, discover, discover_tokens
from distill_eval.checks.intervals import Intervals
from distill_eval.data import ids_file_mask
from distill_eval.errors import CheckError, ExpressionError
from distill_eval.lm.cluster import SequenceSums, cluster_bootstrap
from distill_eval.lm.frequency import TokenFrequency
from distill_eval.lm.pairstats import TokenStats
from distill_eval.lm.session import SummaryPair
from distill_eval.lm.tokens import TokenDataset
from distill_eval.outputs import result_key

SLICE_METRICS = ("retention", "gap", "student_score")

#: where-fields that only token data has
TOKEN_FIELDS = frozenset({"position", "token_frequency", "frequency_rank"})


def read_params(r: TableReader, suite_dir: Path) -> Mapping[str, Any]:
    raw = r.list_of("slices", [])
    metric = r.string("metric", "accuracy", choices=("accuracy", "agreement"))
    min_support = r.integer("min_support", 30, minimum=1)
    discover = r.boolean("discover", False)
    discover_top = r.integer("discover_top", 5, minimum=1)
    frequency_data = r.string("frequency_data", None)
    if not raw and not discover:
        raise r.error("'slices' must list at least one slice ({name = ..., where = ...}) unless discover = true")
    slices = []
    names: set[str] = set()
    for i, table in enumerate(raw, start=1):
        sr = TableReader(table, file=r.file, where=f"{r.where}, slice #{i}")
        name = sr.string("name")
        if name in names:
            raise sr.error(f"duplicate slice name {name!r}")
        names.add(name)
        sr.where = f"{r.where}, slice '{name}'"
        where, ids = sr.string("where", None), sr.string("ids", None)
        sr.finish()
        if (where is None) == (ids is None):
            raise sr.error("give exactly one of 'where' (an expression) or 'ids' (a file of ids, one a line)")
        if where is not None:
            try:
                parsed = expr.parse(where)
            except ExpressionError as e:
                raise sr.error(f"'where': {e.message}") from None
            slices.append({"name": name, "where": parsed})
        else:
            slices.append({"name": name, "ids": (suite_dir / ids).resolve()})
    if isinstance(r.table.get("slices"), list):
        for item in r.table["slices"]:
            if not isinstance(item, Mapping):
                raise r.error(f"each entry of 'slices' must be a table, got {describe(item)}")
    return {
        "slices": tuple(slices),
        "metric": metric,
        "min_support": min_support,
        "discover": discover,
        "discover_top": discover_top,
        "frequency_data": frequency_data,
    }


def extra_datasets(params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    return [("frequency_data", params["frequency_data"])] if params["frequency_data"] is not None else []


class _Fields(Mapping[str, np.ndarray]):
    """The per-example fields a ``where`` expression may read, computed on first use."""

    def __init__(self, ctx: CheckContext):
        self._ctx = ctx
        self._meta = ctx.dataset.meta

    @cached_property
    def _pair(self):
        return self._ctx.pair()

    def _compute(self, key: str) -> np.ndarray:
        data = self._ctx.dataset
        teacher, student = self._pair if key.startswith(("teacher", "student")) else (None, None)
        if key == "label":
            return self._ctx.labels
        if key == "id":
            return data.ids
        if key == "teacher_pred":
            return teacher.preds
        if key == "student_pred":
            return student.preds
        if key == "teacher_conf":
            return teacher.confidence
        if key == "student_conf":
            return student.confidence
        if key == "teacher_margin":
            return M.top2_margin(teacher.probs)
        if key == "teacher_entropy":
            return M.entropy(teacher.probs)
        if key == "teacher_correct":
            return teacher.preds == self._ctx.labels
        if key == "student_correct":
            return student.preds == self._ctx.labels
        if key.startswith("meta.") and key[5:] in self._meta:
            return self._meta[key[5:]]
        raise KeyError(key)

    def __getitem__(self, key: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = self._compute(key)
        return cache[key]

    def __iter__(self) -> Iterator[str]:
        yield from sorted(expr.FIELDS - TOKEN_FIELDS)
        yield from (f"meta.{k}" for k in self._meta)

    def __len__(self) -> int:
        return len(expr.FIELDS - TOKEN_FIELDS) + len(self._meta)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and key.startswith("meta."):
            return key[5:] in self._meta
        return key in expr.FIELDS and key not in TOKEN_FIELDS

    def why_missing(self, key: str) -> str | None:
        """Why a known field is absent here (read by the expression evaluator's error message)."""
        if key in TOKEN_FIELDS:
            return "it describes tokens of a language-model dataset, and this one holds classification examples"
        return None


def _slice_masks(
    slices: Sequence[Mapping[str, Any]],
    fields: Mapping[str, np.ndarray],
    n: int,
    data: Any,
    *,
    rows: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each declared slice's membership over ``n`` rows: its ``where`` over ``fields``, or its ids file.

    ``rows`` maps each row to an example of ``data`` (token data: each token's sequence), for ids files.
    """
    masks = []
    for sl in slices:
        if "where" in sl:
            try:
                masks.append(sl["where"].evaluate(fields, n=n))
            except ExpressionError as e:
                raise CheckError(f"slice '{sl['name']}': {e}") from None
        else:
            mask = ids_file_mask(sl["ids"], data, what=f"slice '{sl['name']}'")
            masks.append(mask if rows is None else mask[rows])
    return masks


class _TokenFields(Mapping[str, np.ndarray]):
    """The per-token fields of token data; a sequence's ``meta`` and ``id`` hold for each of its tokens.

    ``frequency`` gives the reference counts that ``token_frequency`` and ``frequency_rank`` read
    (called on first use).
    """

    def __init__(self, stats: TokenStats | SummaryPair, data: TokenDataset, frequency: Callable[[], TokenFrequency]):
        self._stats = stats
        self._data = data
        self._frequency = frequency
        self._cache: dict[str, np.ndarray] = {}

    def _compute(self, key: str) -> np.ndarray:
        st = self._stats
        if key == "token_frequency":
            return self._frequency().per_million(st.label)
        if key == "frequency_rank":
            return self._frequency().rank(st.label)
        if key.startswith("meta.") and key[5:] in self._data.meta:
            return np.asarray(self._data.meta[key[5:]])[st.sequence]
        if key == "teacher_margin":
            if st.top_k < 2:
                return np.ones(st.n)
            top = np.exp(st.teacher_top_logprobs[:, :2].astype(np.float64))
            return top[:, 0] - top[:, 1]
        values = {
            "label": lambda: st.label,
            "id": lambda: self._data.ids[st.sequence],
            "position": lambda: st.position,
            "teacher_pred": lambda: st.teacher_argmax,
            "student_pred": lambda: st.student_argmax,
            "teacher_conf": lambda: st.teacher_max_prob,
            "student_conf": lambda: st.student_max_prob,
            "teacher_entropy": lambda: st.teacher_entropy,
            "teacher_correct": lambda: st.teacher_argmax == st.label,
            "student_correct": lambda: st.student_argmax == st.label,
        }
        return values[key]()

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._compute(key)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        yield from sorted(expr.FIELDS)
        yield from (f"meta.{k}" for k in self._data.meta)

    def __len__(self) -> int:
        return len(expr.FIELDS) + len(self._data.meta)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and key.startswith("meta."):
            return key[5:] in self._data.meta
        return key in expr.FIELDS


def _frequency_reference(ctx: CheckContext, params: Mapping[str, Any], data: TokenDataset) -> TokenFrequency:
    """The token counts of ``frequency_data``, or of the evaluated data's own scored labels."""
    name = params["frequency_data"]
    if name is None:
        return TokenFrequency(data.scored_labels())
    where = f"check '{ctx.check.id}': 'frequency_data' names dataset '{name}'"
    if not ctx.is_token_dataset(name):
        raise CheckError(
            f"{where}, which holds classification examples; expected token sequences over the vocabulary of "
            f"'{data.name}' (an .npz/.pt file with input_ids, a .jsonl text file, or source = \"builtin:bytes\")"
        )
    reference = ctx.other_token_dataset(name)
    labels = reference.scored_labels()
    if labels.size == 0:
        raise CheckError(f"{where}, which has no scored token (every label is -100 or masked); expected some to count")
    if None not in (reference.vocab_size, data.vocab_size) and reference.vocab_size != data.vocab_size:
        raise CheckError(
            f"{where}, whose vocabulary has {reference.vocab_size} tokens, but '{data.name}' has {data.vocab_size}: "
            "token frequencies are counted over one shared vocabulary"
        )
    if data.vocab_size is not None and int(labels.max()) >= data.vocab_size:
        raise CheckError(
            f"{where}, which holds token id {int(labels.max())}, outside the vocabulary of {data.vocab_size} tokens "
            f"of '{data.name}': token frequencies are counted over one shared vocabulary"
        )
    return TokenFrequency(labels)


def _group_statistics(
    name: str, sums: SequenceSums, mask: np.ndarray, s_hit: np.ndarray, t_hit: np.ndarray, *, retention: bool
) -> dict[str, Any]:
    """A group of tokens' scores (and retention) as statistics of per-sequence sums, keyed ``"<name>:<what>"``."""
    size, s_sum, t_sum = (sums.token_sum(v, where=mask) for v in (None, s_hit, t_hit))
    out = {
        f"{name}:student_score": lambda s: s[s_sum] / s[size],
        f"{name}:teacher_score": lambda s: s[t_sum] / s[size],
        f"{name}:gap": lambda s: (s[t_sum] - s[s_sum]) / s[size],
    }
    if retention:
        out[f"{name}:retention"] = lambda s: s[s_sum] / s[t_sum]
    return out


def _token_compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    """Slices of token data: each slice a set of scored tokens, every interval resampling sequences."""
    data = ctx.token_dataset
    frequency = cache(lambda: _frequency_reference(ctx, params, data))
    if params["frequency_data"] is not None:
        frequency()  # a bad reference is an error even where no slice reads it
    st = ctx.token_stats(divergences=False)  # per-model columns only: cached summaries serve
    agree = st.teacher_argmax == st.student_argmax
    if params["metric"] == "accuracy":
        teacher_hit, student_hit = st.teacher_argmax == st.label, st.student_argmax == st.label
    else:
        teacher_hit, student_hit = np.ones(st.n, dtype=bool), agree
    fields = _TokenFields(st, data, frequency)
    # a sequence's ids-file membership holds for each of its tokens
    masks = _slice_masks(params["slices"], fields, st.n, data, rows=st.sequence)
    min_support = params["min_support"]
    sums = SequenceSums(st.sequence)
    s_hit, t_hit = student_hit.astype(np.float64), teacher_hit.astype(np.float64)
    statistics: dict[str, Any] = {}
    for i, mask in enumerate(masks):
        if mask.sum() >= min_support:
            statistics |= _group_statistics(str(i), sums, mask, s_hit, t_hit, retention=True)
    supported = [i for i, mask in enumerate(masks) if mask.sum() >= min_support]
    if supported:

        def stacked(s, what: str) -> np.ndarray:
            return np.stack([statistics[f"{i}:{what}"](s) for i in supported], axis=1)

        statistics["worst_retention"] = lambda s: _nan_extreme(stacked(s, "retention"), np.min)
        statistics["worst_gap"] = lambda s: _nan_extreme(stacked(s, "gap"), np.max)
    found: list[Discovered] = []
    if params["discover"]:
        alpha = 1 - ctx.suite.confidence
        with ctx.progress(f"slice discovery on {st.n:,} tokens", 2, unit="phases") as progress:
            found = discover_tokens(
                fields,
                sequence=st.sequence,
                teacher_hit=teacher_hit,
                student_hit=student_hit,
                min_support=min_support,
                top=params["discover_top"],
                rng=ctx.rng_for("discover"),
                alpha=alpha,
                progress=progress.update,
            )
        # each found group's scores get intervals from the same bootstrap over sequences as the declared slices
        for j, group in enumerate(found):
            mask = expr.parse(group.where).evaluate(fields, n=st.n)
            statistics |= _group_statistics(f"discovered {j}", sums, mask, s_hit, t_hit, retention=False)
    totals = sums.totals()
    with np.errstate(divide="ignore", invalid="ignore"):
        estimates = {name: float(stat(totals)[0]) for name, stat in statistics.items()}
    finite = {name: stat for name, stat in statistics.items() if np.isfinite(estimates[name])}
    cis: dict[str, tuple[float, float] | None] = {}
    if finite and len(sums.units) > 1:
        results = cluster_bootstrap(
            finite,
            sums,
            n_resamples=ctx.suite.bootstrap,
            confidence=ctx.suite.confidence,
            rng=ctx.rng_for("bootstrap"),
        )
        cis = {n: (r.low, r.high) if r.low is not None and r.high is not None else None for n, r in results.items()}
    measured = []
    for i, (sl, mask) in enumerate(zip(params["slices"], masks, strict=True)):
        support = int(mask.sum())
        if support == 0:
            empty = Metric(None, None, "the slice is empty")
            values = dict.fromkeys(("student_score", "teacher_score", "retention", "gap"), empty)
        else:
            s, t = float(s_hit[mask].mean()), float(t_hit[mask].mean())
            values = {
                "student_score": Metric.of(s, cis.get(f"{i}:student_score")),
                "teacher_score": Metric.of(
                    t, (1.0, 1.0) if params["metric"] == "agreement" else cis.get(f"{i}:teacher_score")
                ),
                "retention": Metric.of(s / t, cis.get(f"{i}:retention"))
                if t > 0
                else Metric(None, None, "the teacher scores 0 on this slice"),
                "gap": Metric.of(t - s, cis.get(f"{i}:gap")),
            }
        where = sl["where"].source if "where" in sl else None
        measured.append(
            SliceMeasurement(sl["name"], support, values, under_supported=support < min_support, where=where)
        )
    well = [m for m in measured if not m.under_supported]
    extras: dict[str, Any] = {"metric": params["metric"], "min_support": min_support, "unit": "tokens"}
    if params["discover"]:
        extras["discovered"] = [
            dataclasses.replace(
                group,
                student_score_ci=cis.get(f"discovered {j}:student_score"),
                teacher_score_ci=(1.0, 1.0)
                if params["metric"] == "agreement"
                else cis.get(f"discovered {j}:teacher_score"),
                gap_ci=cis.get(f"discovered {j}:gap"),
            ).to_json()
            for j, group in enumerate(found)
        ]
    return Measurement(
        {
            "worst_retention": _worst(well, "retention", min, cis.get("worst_retention")),
            "worst_gap": _worst(well, "gap", max, cis.get("worst_gap")),
        },
        slices=measured,
        extras=extras,
        n=len(sums.units),
    )


def compute(ctx: CheckContext, params: Mapping[str, Any]) -> Measurement:
    if ctx.is_tokens:
        return _token_compute(ctx, params)
    if params["frequency_data"] is not None:
        raise CheckError(
            f"check '{ctx.check.id}': 'frequency_data' applies only to token data (the reference corpus of "
            f"token_frequency and frequency_rank), and dataset '{ctx.check.dataset}' holds classification examples"
        )
    data = ctx.dataset
    y = ctx.labels if params["metric"] == "accuracy" else None  # before the models: no labels, no work
    teacher, student = ctx.pair()
    if y is not None:
        teacher_hit = teacher.preds == y
        student_hit = student.preds == y
    else:
        teacher_hit = np.ones(data.n, dtype=bool)
        student_hit = student.preds == teacher.preds
    fields = _Fields(ctx)
    masks = _slice_masks(params["slices"], fields, data.n, data)
    min_support = params["min_support"]
    supported = [i for i, mask in enumerate(masks) if mask.sum() >= min_support]

    # Per-slice retention and gap, and the worst of them, from one paired bootstrap over all examples.
    intervals = Intervals(ctx, data.n)
    inside = []  # each slice's (size, student hits, teacher hits), summed over its examples
    for mask in masks:
        member = mask.astype(np.intp)
        inside.append([intervals.sums.grouped(member, 2, v) for v in (None, student_hit, teacher_hit)])

    last: list[Any] = [None, None]  # (sums, result): every statistic of a pass reuses one computation

    def per_slice(sums) -> tuple[np.ndarray, np.ndarray]:
        if last[0] is sums:
            return last[1]
        size, s_sum, t_sum = (np.stack([sums[h[j]][:, 1] for h in inside], axis=1) for j in range(3))
        retention = np.where(t_sum > 0, s_sum / np.where(t_sum > 0, t_sum, 1), np.nan)
        gap = np.where(size > 0, (t_sum - s_sum) / np.where(size > 0, size, 1), np.nan)
        last[:] = [sums, (retention, gap)]
        return retention, gap

    for i in supported:
        intervals.add(f"{i}:retention", lambda s, i=i: per_slice(s)[0][:, i])
        intervals.add(f"{i}:gap", lambda s, i=i: per_slice(s)[1][:, i])
    if supported:
        intervals.add("worst_retention", lambda s: _nan_extreme(per_slice(s)[0][:, supported], np.min))
        intervals.add("worst_gap", lambda s: _nan_extreme(per_slice(s)[1][:, supported], np.max))
    cis = intervals.compute()

    measured = [
        _measure(
            sl,
            i,
            mask,
            teacher_hit,
            student_hit,
            min_support,
            intervals,
            cis,
            by_definition=params["metric"] == "agreement",
        )
        for i, (sl, mask) in enumerate(zip(params["slices"], masks, strict=True))
    ]
    well = [m for m in measured if not m.under_supported]
    worst_retention = _worst(well, "retention", min, cis.get("worst_retention"))
    worst_gap = _worst(well, "gap", max, cis.get("worst_gap"))
    extras: dict[str, Any] = {"metric": params["metric"], "min_support": min_support}
    if params["discover"]:
        found = _discover(ctx, fields, teacher.logits, teacher_hit, student_hit, min_support, params["discover_top"])
        extras["discovered"] = [d.to_json() for d in found]
    return Measurement(
        {"worst_retention": worst_retention, "worst_gap": worst_gap},
        slices=measured,
        extras=extras,
        n=data.n,
    )


def _discover(
    ctx: CheckContext,
    fields: _Fields,
    teacher_logits: np.ndarray,
    teacher_hit: np.ndarray,
    student_hit: np.ndarray,
    min_support: int,
    top: int,
) -> list[Discovered]:
    """:func:`~distill_eval.checks.discovery.discover`, from the run's cache when it searched the same before.

    The key hashes everything the search reads (inputs, ids, labels, meta
    columns, the teacher's logits, who is right where), its options and seed,
    and the code of the search and of the ``where`` language; the entry holds
    the found groups as JSON bytes.
    """
    data = ctx.dataset
    rng = ctx.rng_for("discover")
    alpha = 1 - ctx.suite.confidence
    cache = ctx.cache
    key = None
    if cache is not None:
        arrays = {"x": data.x, "ids": data.ids, "y": data.y, "teacher_logits": teacher_logits}
        arrays.update(teacher_hit=teacher_hit, student_hit=student_hit)
        arrays.update({f"meta.{name}": column for name, column in data.meta.items()})
        settings = {"min_support": min_support, "top": top, "alpha": alpha, "rng": rng.bit_generator.state}
        code = ("distill_eval.checks.discovery", "distill_eval.checks.slices", "distill_eval.expr")
        key = result_key("discovery", arrays=arrays, settings=settings, code=code)
        stored, _, warning = cache.load(key)
        if warning:
            ctx.log(warning)
        if stored is not None and stored.dtype == np.uint8 and stored.ndim == 1:
            try:
                found = [Discovered.from_json(doc) for doc in json.loads(stored.tobytes().decode())]
            except (ValueError, KeyError, TypeError):  # written by other code: recompute
                found = None
            if found is not None:
                ctx.log(f"slice discovery on {data.n:,} examples from cache")
                return found
    with ctx.progress(f"slice discovery on {data.n:,} examples", 4, unit="phases") as progress:
        found = discover(
            fields,
            ids=data.ids,
            x=data.x,
            teacher_logits=teacher_logits,
            teacher_hit=teacher_hit,
            student_hit=student_hit,
            min_support=min_support,
            top=top,
            rng=rng,
            alpha=alpha,
            progress=progress.update,
        )
    if cache is not None and key is not None:
        payload = np.frombuffer(json.dumps([d.to_json() for d in found]).encode(), dtype=np.uint8)
        info = {
            "kind": "discovery",
            "dataset": data.name,
            "datasets": {data.name: data.sha256},
            "model": ctx.check.student,
            "teacher": ctx.check.teacher,
            "check": ctx.check.id,
        }
        cache.store(key, payload, info)
    return found


def _nan_extreme(values: np.ndarray, pick) -> np.ndarray:
    """Row-wise min or max ignoring NaN; NaN where a row is all NaN (no warning, unlike np.nanmin)."""
    fill = np.inf if pick is np.min else -np.inf
    out = pick(np.where(np.isnan(values), fill, values), axis=1)
    return np.where(np.isinf(out), np.nan, out)


def _measure(
    sl: Mapping[str, Any],
    i: int,
    mask: np.ndarray,
    teacher_hit: np.ndarray,
    student_hit: np.ndarray,
    min_support: int,
    intervals: Intervals,
    cis: Mapping[str, tuple[float, float] | None],
    *,
    by_definition: bool,
) -> SliceMeasurement:
    support = int(mask.sum())
    if support == 0:
        empty = Metric(None, None, "the slice is empty")
        values = dict.fromkeys(("student_score", "teacher_score", "retention", "gap"), empty)
    else:
        s_hits, t_hits = int(student_hit[mask].sum()), int(teacher_hit[mask].sum())
        s, t = s_hits / support, t_hits / support
        values = {
            "student_score": Metric.of(s, intervals.proportion(s_hits, support)),
            # in agreement mode the teacher agrees with itself by definition: no uncertainty
            "teacher_score": Metric.of(t, (1.0, 1.0) if by_definition else intervals.proportion(t_hits, support)),
            "retention": Metric.of(s / t, cis.get(f"{i}:retention"))
            if t > 0
            else Metric(None, None, "the teacher scores 0 on this slice"),
            "gap": Metric.of(t - s, cis.get(f"{i}:gap")),
        }
    where = sl["where"].source if "where" in sl else None
    return SliceMeasurement(sl["name"], support, values, under_supported=support < min_support, where=where)


def _worst(slices: list[SliceMeasurement], key: str, pick, ci: tuple[float, float] | None) -> Metric:
    values = [sl.metrics[key].value for sl in slices if sl.metrics[key].value is not None]
    if not values:
        return Metric(None, None, "no slice has enough support")
    return Metric.of(pick(values), ci)


KIND = CheckKind(
    name="slices",
    metrics=("worst_retention", "worst_gap"),
    slice_metrics=SLICE_METRICS,
    read_params=read_params,
    compute=compute,
    extra_datasets=extra_datasets,
    token_metrics=("worst_retention", "worst_gap", *SLICE_METRICS),
)
