"""What every check kind shares: its declaration, its measurement, its context.

A kind reads its parameters (validated, at collection time), computes a
:class:`Measurement` from a :class:`CheckContext` (at run time), and never
decides pass or fail itself: :mod:`distill_eval.checks.judge` applies the
suite's bounds and gate to the measurement, the same way for every kind.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from distill_eval.errors import CheckError, DataError, ModelError

if TYPE_CHECKING:
    from distill_eval._tables import TableReader
    from distill_eval.config import ProjectConfig
    from distill_eval.data import Dataset
    from distill_eval.lm.generation import Generations, Prompts
    from distill_eval.lm.models import TokenModel
    from distill_eval.lm.pairstats import TokenStats
    from distill_eval.lm.session import SummaryPair
    from distill_eval.lm.tokens import TokenDataset
    from distill_eval.models import Model
    from distill_eval.outputs import ModelOutputs, OutputCache
    from distill_eval.progress import Progress
    from distill_eval.results import CheckResult
    from distill_eval.suite import CheckSpec, SuiteSpec

__all__ = ["CheckContext", "CheckKind", "Measurement", "Metric"]


@dataclass(frozen=True)
class Metric:
    """A measured value with its confidence interval.

    ``value`` is None when the metric is undefined on this data; ``note`` then
    says why (e.g. "the teacher makes no errors"). ``census`` marks a count
    over the whole data rather than an estimate from a sample (leakage's
    duplicate counts and rate): its interval is the point ``(value, value)``
    on purpose, exact, and a strict gate may pass on it.
    """

    value: float | None
    ci: tuple[float, float] | None = None
    note: str | None = None
    census: bool = False

    @classmethod
    def exact(cls, value: float) -> Metric:
        """A census: a value computed from all of the data, with the point interval ``(value, value)``."""
        value = float(value)
        return cls(value, (value, value), census=True)

    @classmethod
    def of(cls, value: float | None, ci: tuple[float, float] | None = None, *, undefined: str = "") -> Metric:
        """A Metric from a float that may be NaN (undefined, with the reason ``undefined``)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return cls(None, None, undefined or "undefined on this data")
        value = float(value)
        if ci is not None:
            # A resampling interval of a biased statistic can miss the estimate itself; an
            # interval never excludes its own point estimate.
            ci = (min(float(ci[0]), value), max(float(ci[1]), value))
        return cls(value, ci)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "ci": list(self.ci) if self.ci else None}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class SliceMeasurement:
    """One slice's support and metrics (kind ``slices``)."""

    name: str
    support: int
    metrics: dict[str, Metric]
    under_supported: bool = False
    where: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "support": self.support, "under_supported": self.under_supported}
        if self.where is not None:
            out["where"] = self.where
        for key, metric in self.metrics.items():
            out[key] = metric.to_json()
        return out


@dataclass
class Measurement:
    """Everything a check computed: metrics, optional slices, kind-specific extras."""

    metrics: dict[str, Metric]
    slices: list[SliceMeasurement] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: examples the metrics were computed on (for "how many would settle it")
    n: int | None = None


class ParamReader(Protocol):
    def __call__(self, reader: TableReader, suite_dir: Path) -> Mapping[str, Any]: ...


def _no_models(params: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    return ()


@dataclass(frozen=True)
class CheckKind:
    """The declaration of a check kind.

    Attributes
    ----------
    name : str
        The ``kind`` users write.
    metrics : tuple of str
        Check-level metrics, in report order; all may be bounded.
    read_params : callable
        ``(reader, suite_dir) -> params``: reads and validates the kind's own keys.
    compute : callable
        ``(context, params) -> Measurement``.
    slice_metrics : tuple of str
        Per-slice metrics (kind ``slices``); a bound on one applies to every slice.
    extra_models, extra_datasets : callable
        ``params -> [(key, name)]``: further models/datasets the check reads,
        validated against the project config at collection time.
    token_metrics : tuple of str
        The metrics the kind computes on token-level (language-model) data; empty when the kind
        does not evaluate token data. On token data only these may be bounded, on
        classification data only :attr:`metrics` and :attr:`slice_metrics`.
    """

    name: str
    metrics: tuple[str, ...]
    read_params: ParamReader
    compute: Callable[[CheckContext, Mapping[str, Any]], Measurement]
    slice_metrics: tuple[str, ...] = ()
    extra_models: Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]] = _no_models
    extra_datasets: Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]] = _no_models
    uses_models: bool = True
    token_metrics: tuple[str, ...] = ()

    @property
    def bound_metrics(self) -> tuple[str, ...]:
        """Every metric a suite may bound: classification and token-level."""
        return tuple(dict.fromkeys(self.metrics + self.slice_metrics + self.token_metrics))


class OutputSource(Protocol):
    """Where a context gets data, models and outputs from (the plugin's session)."""

    def dataset(self, name: str) -> Dataset: ...

    def outputs(self, model: str, dataset: str) -> ModelOutputs: ...

    def model(self, name: str) -> Model: ...

    def is_token_dataset(self, name: str) -> bool: ...

    def token_dataset(self, name: str) -> TokenDataset: ...

    def token_model(self, name: str, dataset: str) -> TokenModel: ...

    def token_stats(
        self, teacher: str, student: str, dataset: str, *, top_k: int | None = None, divergences: bool = True
    ) -> TokenStats | SummaryPair: ...

    def generations(
        self,
        teacher: str,
        student: str,
        dataset: str,
        prompts: Prompts,
        *,
        max_new_tokens: int,
        eos: int | None,
        batch_size: int,
    ) -> Generations: ...

    @property
    def project(self) -> ProjectConfig: ...

    @property
    def results(self) -> list[CheckResult]: ...


class CheckContext:
    """What a check may read: its dataset, model outputs, settings and files.

    Everything is loaded lazily through the session, so a check that only
    needs the teacher never loads the student.
    """

    def __init__(self, suite: SuiteSpec, check: CheckSpec, source: OutputSource):
        self.suite = suite
        self.check = check
        self._source = source

    @property
    def dataset(self) -> Dataset:
        return self._source.dataset(self.check.dataset)

    @property
    def is_tokens(self) -> bool:
        """Whether the check's dataset holds token sequences (language-model data)."""
        probe = getattr(self._source, "is_token_dataset", None)
        return bool(probe and probe(self.check.dataset))

    @property
    def token_dataset(self) -> TokenDataset:
        """The check's token dataset (sequences, ids, per-sequence meta)."""
        return self._source.token_dataset(self.check.dataset)

    def token_stats(
        self, *, top_k: int | None = None, student: str | None = None, divergences: bool = True
    ) -> TokenStats | SummaryPair:
        """The teacher's and student's (or ``student``'s) paired per-token statistics on the check's token dataset.

        ``divergences=False``: the check reads no kl, reverse_kl, js or tvd, so the two models'
        cached per-token summaries may serve (a :class:`~distill_eval.lm.session.SummaryPair`,
        whose ``has_divergences`` is False) instead of running both models together.
        """
        return self._source.token_stats(
            self.check.teacher, student or self.check.student, self.check.dataset, top_k=top_k, divergences=divergences
        )

    def token_fingerprint(self, model: str) -> str | None:
        """What identifies language model ``model``'s logits (its files, or its parameters)."""
        probe = getattr(self._source, "token_fingerprint", None)
        return probe(model, self.check.dataset) if probe else None

    def keep_token_record(self, record: Mapping[str, Any]) -> None:
        """Hand this check's per-sequence record to the run, for ``--distill-accept`` to store beside the baseline."""
        records = getattr(self._source, "token_baseline_records", None)
        if records is not None:
            records[(self.suite.name, self.check.id)] = dict(record)

    def generations(self, prompts: Prompts, *, max_new_tokens: int, eos: int | None, batch_size: int) -> Generations:
        """The teacher's and student's greedy continuations of ``prompts`` (from the check's token dataset), cached."""
        return self._source.generations(
            self.check.teacher,
            self.check.student,
            self.check.dataset,
            prompts,
            max_new_tokens=max_new_tokens,
            eos=eos,
            batch_size=batch_size,
        )

    def outputs(self, model: str, dataset: str | None = None) -> ModelOutputs:
        """A model's outputs, validated against the dataset's labels."""
        dataset = dataset or self.check.dataset
        out = self._source.outputs(model, dataset)
        self._check_labels(out)
        return out

    def pair(self, other: str | None = None) -> tuple[ModelOutputs, ModelOutputs]:
        """Teacher and student (or ``other`` and student) outputs, with matching class counts."""
        first = self.check.teacher if other is None else other
        dataset = self.check.dataset
        a, b = self._source.outputs(first, dataset), self._source.outputs(self.check.student, dataset)
        if a.n_classes != b.n_classes:
            raise ModelError(
                f"models '{first}' and '{self.check.student}' disagree on the number of classes: "
                f"'{first}' outputs shape {a.logits.shape}, '{self.check.student}' outputs shape "
                f"{b.logits.shape} on dataset '{dataset}'"
            )
        self._check_labels(a)
        return a, b

    def _check_labels(self, out: ModelOutputs) -> None:
        data = self._source.dataset(out.dataset)
        y = data.y
        if y is not None and y.max() >= out.n_classes:
            where = f" ({data.source})" if data.source else ""
            raise DataError(
                f"dataset '{out.dataset}'{where} has label {int(y.max())}, but model '{out.model}' outputs only "
                f"{out.n_classes} classes (logits of shape {out.logits.shape}); labels must be in "
                f"[0, {out.n_classes})"
            )

    @property
    def teacher(self) -> ModelOutputs:
        return self.pair()[0]

    @property
    def student(self) -> ModelOutputs:
        return self.pair()[1]

    @property
    def labels(self) -> np.ndarray:
        """The dataset's labels; a CheckError if it has none.

        Kinds read it before any model output, so a dataset without labels
        stops the check before a model is loaded or run.
        """
        data = self.dataset
        if data.y is None:
            where = f" ({data.source})" if data.source else ""
            raise CheckError(
                f"check '{self.check.id}' ({self.check.kind}) needs labels, but dataset '{data.name}'{where} has "
                f"none; give it labels ('y' in .npz/.pt files; in a .csv file the column named by label_column "
                f"in [tool.distill_eval.datasets.{data.name}])"
            )
        return data.y

    def require_labels_for(self, metrics: Iterable[str]) -> None:
        """Raise the :attr:`labels` CheckError up front when a bound uses one of ``metrics`` (which need labels).

        Unbounded label metrics are just undefined without labels; a bounded one
        could not be judged, and saying so before the models run saves their time.
        """
        if self.bounded_metrics & set(metrics):
            self.labels  # noqa: B018 — raises when there are none

    def model(self, name: str) -> Model:
        """A loaded model, for checks that need the model itself (timing), not just its outputs."""
        return self._source.model(name)

    def token_model(self, name: str) -> TokenModel:
        """A loaded language model, for checks on token data that run it themselves (timing)."""
        return self._source.token_model(name, self.check.dataset)

    @property
    def project(self) -> ProjectConfig:
        """The project configuration (paths, device, batch size)."""
        return self._source.project

    @property
    def previous_results(self) -> list[CheckResult]:
        """Results of the checks that already ran in this session, in run order."""
        return list(self._source.results)

    def log(self, message: str) -> None:
        """Send a one-line message about this check (prefixed with its kind and id) to the run's terminal."""
        log = getattr(self._source, "log", None)
        if log is not None:
            log(f"{self.check.kind} '{self.check.id}': {message}")

    def progress(self, what: str, total: int, *, unit: str = "examples") -> Progress:
        """Rate-limited progress lines for a long part of this check (see :mod:`distill_eval.progress`)."""
        from distill_eval.progress import Progress

        has_log = getattr(self._source, "log", None) is not None
        return Progress(self.log if has_log else None, what, total, unit=unit)

    @property
    def cache(self) -> OutputCache | None:
        """The run's on-disk cache, where long results are kept by content; None when the source has none."""
        cache = getattr(self._source, "cache", None)
        return cache if cache is not None and cache.enabled else None

    def other_dataset(self, name: str) -> Dataset:
        """Another dataset of the project (e.g. the training set, for leakage)."""
        return self._source.dataset(name)

    def is_token_dataset(self, name: str) -> bool:
        """Whether dataset ``name`` of the project holds token sequences."""
        probe = getattr(self._source, "is_token_dataset", None)
        return bool(probe and probe(name))

    def other_token_dataset(self, name: str) -> TokenDataset:
        """Another token dataset of the project (e.g. the training sequences, for leakage)."""
        return self._source.token_dataset(name)

    @property
    def bounded_metrics(self) -> frozenset[str]:
        """The metrics this check's bounds use."""
        return frozenset(b.metric for b in self.check.bounds)

    def rng_for(self, purpose: str) -> np.random.Generator:
        """A generator seeded by the suite seed, the check id and ``purpose``.

        Results never depend on run order (or on pytest-xdist), and adding a
        new random procedure to a check does not change the others' draws.
        """
        return np.random.default_rng(
            [self.suite.seed, zlib.crc32(self.check.id.encode()), zlib.crc32(purpose.encode())]
        )
