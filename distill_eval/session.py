"""One evaluation session: lazily loaded datasets, models and outputs, and results.

The pytest plugin creates one :class:`DistillSession` per run (stored in
``config.stash``); every check item asks it for what it needs. A model is
loaded only when an output it produces is not in the cache, and each
(model, dataset) pair is computed at most once per session.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_eval._hashing import sha256_file, sha256_json
from distill_eval.checks import KINDS, CheckContext
from distill_eval.checks.judge import judge
from distill_eval.config import ProjectConfig
from distill_eval.data import Dataset, load_dataset, require_finite_inputs
from distill_eval.errors import CheckError, ConfigError, DataError, DistillError, ModelError
from distill_eval.models import (
    Model,
    load_model,
    model_fingerprint,
    parameter_fingerprint,
    resolve_device,
    torch_version,
    wrap_model,
)
from distill_eval.outputs import ModelOutputs, OutputCache, compute_logits
from distill_eval.progress import Progress
from distill_eval.results import CheckResult
from distill_eval.suite import CheckSpec, SuiteSpec

if TYPE_CHECKING:
    from distill_eval.lm.generation import Generations, Prompts
    from distill_eval.lm.models import TokenModel
    from distill_eval.lm.modelstats import ModelTokenStats
    from distill_eval.lm.pairstats import TokenStats
    from distill_eval.lm.session import SummaryPair
    from distill_eval.lm.tokens import TokenDataset

__all__ = ["DistillSession", "output_cache_key"]

#: the top-k a check that does not read the top-k columns asks for (so it shares agreement's entry)
DEFAULT_TOP_K = 5

Loader = Callable[[str, Any], Any]


def output_cache_key(fingerprint: str, data: Dataset, *, device: str, batch_size: int) -> str:
    """The :class:`~distill_eval.outputs.OutputCache` key of a model's logits on a dataset.

    Shared by the plugin and the trainer's offline mode, so both read the same entries.

    Parameters
    ----------
    fingerprint : str
        The model's fingerprint (:func:`~distill_eval.models.model_fingerprint`, or its parameters' hash).
    data : Dataset
        The dataset; its content hash and size are part of the key.
    device : str
        The resolved device; only its kind (``"cuda"`` of ``"cuda:1"``) counts.
    batch_size : int
        The inference batch size (batching can change the last bits of the logits).
    """
    return sha256_json(
        {
            "model": fingerprint,
            "dataset": data.sha256,
            "n": data.n,
            "device": device.split(":")[0],
            "batch_size": batch_size,
            "torch": torch_version(),  # read without importing torch, so a warm run need not
        }
    )


def _trainer_manifest(model_file: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of ``distill-eval train`` next to a model file, when it describes that file."""
    path = Path(model_file).parent / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") != "distill_eval.train":
        return None
    files = {
        entry.get("file") for entry in (manifest.get("student"), manifest.get("control")) if isinstance(entry, dict)
    }
    if Path(model_file).name not in files:
        return None
    return {"path": str(path), **manifest}


class DistillSession:
    """State shared by every check of one run.

    Parameters
    ----------
    project : ProjectConfig
        The project configuration, with command-line overrides applied.
    use_cache : bool
        Read and write the on-disk output cache.
    gate : str, optional
        Overrides every suite's gate mode.
    load_model_hook, load_dataset_hook : callable, optional
        ``(name, spec) -> object or None``: custom loaders (the plugin passes
        its ``pytest_distill_load_*`` hooks); None falls back to the built-ins.
    log : callable, optional
        Receives one-line progress messages.
    """

    def __init__(
        self,
        project: ProjectConfig,
        *,
        use_cache: bool = True,
        gate: str | None = None,
        load_model_hook: Loader | None = None,
        load_dataset_hook: Loader | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.project = project
        self.gate = gate
        self.cache = OutputCache(project.cache_dir, enabled=use_cache)
        self._load_model_hook = load_model_hook
        self._load_dataset_hook = load_dataset_hook
        self._log = log or (lambda message: None)
        self._device: str | None = None
        self._datasets: dict[str, Dataset] = {}
        self._models: dict[str, Model] = {}
        self._fingerprints: dict[str, str | None] = {}
        self._file_sha256: dict[Path, str] = {}  # model files, hashed once per session
        self._outputs: dict[tuple[str, str], ModelOutputs] = {}
        self._cached_facts: dict[str, dict[str, Any]] = {}  # params/format of models served from cache
        # token-level (language-model) data: datasets, models and paired statistics
        self._is_tokens: dict[str, bool] = {}
        self._token_datasets: dict[str, TokenDataset] = {}
        self._token_models: dict[str, TokenModel] = {}
        self._token_fingerprints: dict[str, str | None] = {}
        self._token_stats: dict[tuple[str, str, str, int], TokenStats] = {}
        self._token_summaries: dict[tuple[str, str], ModelTokenStats] = {}  # one model's per-token summary
        #: per-sequence records of stored-mode token regression checks, by (suite, check id): what
        #: ``--distill-accept`` stores beside the baseline
        self.token_baseline_records: dict[tuple[str, str], dict[str, Any]] = {}
        self._generations: dict[tuple[Any, ...], Generations] = {}
        self.results: list[CheckResult] = []
        #: checks collected but deselected (``-k``, ``-m``): ``{"suite", "file", "id", "kind"}``, file as in results
        self.deselected: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.written: dict[str, Path] = {}  # report files of the last write_reports, by name
        # provenance that pytest-xdist workers reported (distill_eval.xdist); merged into this process's
        self.worker_models: dict[str, dict[str, Any]] = {}
        self.worker_datasets: dict[str, dict[str, Any]] = {}

    def log(self, message: str) -> None:
        """Send a one-line progress message (to pytest's terminal, in a pytest run)."""
        self._log(message)

    # -- loading -------------------------------------------------------------

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.project.device)
        return self._device

    def dataset(self, name: str) -> Dataset:
        """The (classification) dataset ``name``, loaded on first use."""
        if name not in self._datasets:
            spec = self.project.datasets.get(name)
            if spec is None:
                raise ConfigError(f"dataset {name!r} is not defined in [tool.distill_eval.datasets]")
            if self.is_token_dataset(name):
                raise DataError(
                    f"dataset '{name}' ({spec.describe()}) holds token sequences (language-model data), but this "
                    "reads classification examples (features and labels)"
                )
            data = self._load_dataset_hook(name, spec) if self._load_dataset_hook else None
            if data is None:
                data = load_dataset(spec)
            elif not isinstance(data, Dataset):
                raise DataError(
                    f"pytest_distill_load_dataset returned {type(data).__name__} for dataset '{name}'; "
                    "expected a distill_eval.Dataset"
                )
            self._datasets[name] = data
        return self._datasets[name]

    def model(self, name: str) -> Model:
        """The model ``name``, loaded on first use."""
        if name not in self._models:
            spec = self.project.models.get(name)
            if spec is None:
                raise ConfigError(f"model {name!r} is not defined in [tool.distill_eval.models]")
            start = time.perf_counter()
            obj = self._load_model_hook(name, spec) if self._load_model_hook else None
            if obj is not None:
                model = wrap_model(name, obj, device=self.device, format="hook")
            else:
                model = load_model(spec, device=self.device, root=self.project.rootdir)
            self._models[name] = model
            self._log(
                f"loaded model '{name}' ({model.format}, {spec.describe()}) in {time.perf_counter() - start:.2f} s"
            )
        return self._models[name]

    def fingerprint(self, name: str) -> str | None:
        """What identifies model ``name``'s outputs: its files, or its parameters once loaded."""
        if name not in self._fingerprints:
            spec = self.project.models[name]
            fp = model_fingerprint(spec, sha256=self._sha256)
            if fp is None:
                fp = parameter_fingerprint(self.model(name), spec)
            self._fingerprints[name] = fp
        return self._fingerprints[name]

    def outputs(self, model: str, dataset: str) -> ModelOutputs:
        """Model ``model``'s outputs on ``dataset``: from memory, the disk cache, or computed."""
        key = (model, dataset)
        if key in self._outputs:
            return self._outputs[key]
        if model not in self.project.models:
            raise ConfigError(f"model {model!r} is not defined in [tool.distill_eval.models]")
        data = self.dataset(dataset)
        if self.project.models[model].vocab_size is not None:
            raise ConfigError(
                f"model '{model}' sets vocab_size, which only a language model on token data has, but dataset "
                f"'{dataset}' holds classification examples; expected a token dataset (an .npz/.pt file with "
                f'input_ids, or source = "builtin:bytes"), or remove vocab_size from '
                f"[tool.distill_eval.models.{model}]"
            )
        require_finite_inputs(data, purpose=f"model '{model}'")  # bad rows are the data's fault, not the model's
        fp = self.fingerprint(model)
        cache_key = None
        if fp is not None:
            cache_key = output_cache_key(fp, data, device=self.device, batch_size=self.project.batch_size)
        logits, info, warning = self.cache.load(cache_key) if cache_key else (None, {}, None)
        if warning:
            self.warnings.append(warning)
            self._log(warning)
        if logits is not None and logits.shape[0] != data.n:
            logits = None
        if logits is not None:
            self._log(f"{model} on {dataset}: {data.n} examples from cache")
            self._cached_facts.setdefault(model, {k: info.get(k) for k in ("params", "format")})
            out = ModelOutputs(model, dataset, logits, cached=True)
        else:
            loaded = self.model(model)
            start = time.perf_counter()
            with Progress(self._log, f"{model} on {dataset}", data.n) as progress:
                logits = compute_logits(
                    loaded.predict_logits,
                    data.x,
                    batch_size=self.project.batch_size,
                    model=model,
                    dataset=dataset,
                    progress=progress.update,
                )
            elapsed = time.perf_counter() - start
            self._log(f"{model} on {dataset}: {data.n} examples in {elapsed:.2f} s ({loaded.device})")
            if cache_key:
                facts = {"params": loaded.params, "format": loaded.format}
                self.cache.store(
                    cache_key,
                    logits,
                    {"model": model, "dataset": dataset, "fingerprint": fp, "dataset_sha256": data.sha256, **facts},
                )
            out = ModelOutputs(model, dataset, logits, cached=False)
        self._outputs[key] = out
        return out

    # -- token-level data ----------------------------------------------------

    def is_token_dataset(self, name: str) -> bool:
        """Whether dataset ``name`` holds token sequences (``input_ids``, or ``source = "builtin:bytes"``)."""
        if name not in self._is_tokens:
            from distill_eval.lm.session import holds_tokens

            spec = self.project.datasets.get(name)
            self._is_tokens[name] = spec is not None and holds_tokens(spec)
        return self._is_tokens[name]

    def token_dataset(self, name: str) -> TokenDataset:
        """The token dataset ``name``, loaded on first use."""
        if name not in self._token_datasets:
            from distill_eval.lm.session import load_token_spec

            spec = self.project.datasets.get(name)
            if spec is None:
                raise ConfigError(f"dataset {name!r} is not defined in [tool.distill_eval.datasets]")
            if not self.is_token_dataset(name):
                raise DataError(
                    f"dataset '{name}' ({spec.describe()}) holds classification examples, but this reads token "
                    'sequences; expected an .npz/.pt file with input_ids, or source = "builtin:bytes"'
                )
            self._token_datasets[name] = load_token_spec(spec)
        return self._token_datasets[name]

    def token_model(self, name: str, dataset: str) -> TokenModel:
        """Language model ``name`` (for token dataset ``dataset``), loaded on first use.

        Raises
        ------
        ModelError
            When it is not a language model: the message names the model, the dataset and what was expected.
        """
        if name not in self._token_models:
            from distill_eval.lm.models import load_token_model

            spec = self.project.models.get(name)
            if spec is None:
                raise ConfigError(f"model {name!r} is not defined in [tool.distill_eval.models]")
            start = time.perf_counter()
            try:
                model = load_token_model(spec, device=self.device, vocab_size=spec.vocab_size)
            except ModelError as e:
                if "language model" in str(e):  # it already says what a language model must be
                    raise
                raise ModelError(
                    f"{e}; dataset '{dataset}' holds token sequences, so model '{name}' must be a language model "
                    "(forward(input_ids, attention_mask) -> logits of shape (batch, length, vocab))"
                ) from e
            self._token_models[name] = model
            self._log(
                f"loaded model '{name}' ({model.format}, {spec.describe()}, vocabulary {model.true_vocab_size}) "
                f"in {time.perf_counter() - start:.2f} s"
            )
        return self._token_models[name]

    def token_fingerprint(self, name: str, dataset: str) -> str | None:
        """What identifies language model ``name``'s logits: its files, or its parameters once loaded."""
        if name not in self._token_fingerprints:
            from distill_eval.lm.models import token_model_fingerprint

            spec = self.project.models[name]
            fp = token_model_fingerprint(spec, vocab_size=spec.vocab_size, sha256=self._sha256)
            if fp is None:
                fp = self.token_model(name, dataset).parameter_fingerprint(spec)
            self._token_fingerprints[name] = fp
        return self._token_fingerprints[name]

    def token_stats(
        self, teacher: str, student: str, dataset: str, *, top_k: int | None = None, divergences: bool = True
    ) -> TokenStats | SummaryPair:
        """Paired per-token statistics of ``teacher`` and ``student`` on token dataset ``dataset``.

        Computed once per (teacher, student, dataset, top-k), both models on the same batch of
        ``batch_size`` sequences, and kept in the output cache (kind ``token-pairs``); the same
        pass stores both models' per-token summaries (kind ``token-model``). ``top_k=None``: any
        ``k`` already computed in this run, else :data:`DEFAULT_TOP_K`.

        With ``divergences=False`` (the caller reads no kl, reverse_kl, js or tvd) and ``top_k``
        at most ``token_top_k``, when the pair's statistics are not at hand but one model's
        summary is, the other model runs alone and a :class:`~distill_eval.lm.session.SummaryPair`
        is returned: a second student is evaluated without running the teacher again.
        """
        from distill_eval.lm.session import SummaryPair

        if top_k is None:
            known = [k for (t, s, d, k) in self._token_stats if (t, s, d) == (teacher, student, dataset)]
            top_k = known[0] if known else DEFAULT_TOP_K
        key = (teacher, student, dataset, top_k)
        if key in self._token_stats:
            return self._token_stats[key]
        for name in (teacher, student):
            if name not in self.project.models:
                raise ConfigError(f"model {name!r} is not defined in [tool.distill_eval.models]")
        data = self.token_dataset(dataset)
        stats = self._cached_pair(teacher, student, dataset, top_k)
        if stats is None and not divergences and top_k <= self.project.token_top_k:
            summaries = [self._cached_summary(name, dataset) for name in (teacher, student)]
            if any(summary is not None for summary in summaries):  # else one pair pass fills both
                teacher_summary, student_summary = (
                    summary if summary is not None else self._run_summary(name, dataset)
                    for name, summary in zip((teacher, student), summaries, strict=True)
                )
                return SummaryPair(teacher_summary, student_summary, top_k)
        if stats is None:
            stats = self._run_pair(teacher, student, dataset, top_k)
        else:
            self._log(
                f"{teacher} vs {student} on {dataset}: {stats.n} tokens of {data.n_sequences} sequences from cache"
            )
        self._token_stats[key] = stats
        return stats

    def _pair_cache_key(self, teacher: str, student: str, dataset: str, top_k: int) -> str | None:
        from distill_eval.lm.session import pair_stats_key

        fps = self.token_fingerprint(teacher, dataset), self.token_fingerprint(student, dataset)
        if None in fps:
            return None
        return pair_stats_key(
            fps[0],  # type: ignore[arg-type]
            fps[1],  # type: ignore[arg-type]
            self.token_dataset(dataset),
            top_k=top_k,
            device=self.device,
            batch_size=self.project.batch_size,
            torch_version=torch_version(),
        )

    def _summary_cache_key(self, model: str, dataset: str) -> str | None:
        from distill_eval.lm.session import model_stats_key

        fp = self.token_fingerprint(model, dataset)
        if fp is None:
            return None
        return model_stats_key(
            fp,
            self.token_dataset(dataset),
            top_k=self.project.token_top_k,
            device=self.device,
            batch_size=self.project.batch_size,
            torch_version=torch_version(),
        )

    def _load_entry(self, cache_key: str | None) -> tuple[Any, dict[str, Any]]:
        records, info, warning = self.cache.load(cache_key) if cache_key else (None, {}, None)
        if warning:
            self.warnings.append(warning)
            self._log(warning)
        return records, info

    def _cached_pair(self, teacher: str, student: str, dataset: str, top_k: int) -> TokenStats | None:
        """The pair's statistics from the disk cache, or None."""
        from distill_eval.lm.session import unpack_stats

        records, _ = self._load_entry(self._pair_cache_key(teacher, student, dataset, top_k))
        if records is None:
            return None
        try:
            return unpack_stats(records)
        except ValueError:
            return None

    def _cached_summary(self, model: str, dataset: str) -> ModelTokenStats | None:
        """Model ``model``'s per-token summary on ``dataset``, from memory or the disk cache, or None."""
        from distill_eval.lm.session import unpack_model_stats

        if (model, dataset) in self._token_summaries:
            return self._token_summaries[(model, dataset)]
        records, info = self._load_entry(self._summary_cache_key(model, dataset))
        if records is None:
            return None
        try:
            summary = unpack_model_stats(records, info.get("vocab_size", 0))
        except (ValueError, TypeError):
            return None
        self._log(f"{model} on {dataset}: per-token summary of {summary.n} tokens from cache")
        self._token_summaries[(model, dataset)] = summary
        return summary

    def _keep_summary(self, model: str, dataset: str, summary: ModelTokenStats) -> None:
        """Remember a model's summary for this run and store it in the cache."""
        from distill_eval.lm.session import MODEL_KIND, pack_columns

        self._token_summaries[(model, dataset)] = summary
        cache_key = self._summary_cache_key(model, dataset)
        if cache_key:
            data = self.token_dataset(dataset)
            self.cache.store(
                cache_key,
                pack_columns(summary.columns()),
                {
                    "kind": MODEL_KIND,
                    "model": model,
                    "dataset": dataset,
                    "models": {model: self.token_fingerprint(model, dataset)},
                    "datasets": {dataset: data.sha256},
                    "top_k": summary.top_k,
                    "vocab_size": summary.vocab_size,
                },
            )

    def _run_summary(self, model: str, dataset: str) -> ModelTokenStats:
        """Run model ``model`` alone over ``dataset``, keeping its per-token summary."""
        from distill_eval.lm.modelstats import stream_model_stats

        data, loaded = self.token_dataset(dataset), self.token_model(model, dataset)
        what = f"{model} on {dataset}"
        start = time.perf_counter()
        with Progress(self._log, what, data.n_sequences, unit="sequences") as progress:
            summary = stream_model_stats(
                data,
                loaded,
                vocab_size=loaded.true_vocab_size,
                batch_size=self.project.batch_size,
                top_k=min(self.project.token_top_k, loaded.true_vocab_size),
                device=self.device,
                who=model,
                progress=progress.update,
            )
        self._log(
            f"{what}: per-token summary of {summary.n} tokens in {time.perf_counter() - start:.2f} s ({loaded.device})"
        )
        self._keep_summary(model, dataset, summary)
        return summary

    def _run_pair(self, teacher: str, student: str, dataset: str, top_k: int) -> TokenStats:
        """Run both models on the same batches: the pair's statistics, and both models' summaries."""
        from distill_eval.lm.models import shared_vocab
        from distill_eval.lm.pairstats import stream_pair_and_model_stats
        from distill_eval.lm.session import PAIR_KIND, pack_stats

        data = self.token_dataset(dataset)
        what = f"{teacher} vs {student} on {dataset}"
        t_model, s_model = self.token_model(teacher, dataset), self.token_model(student, dataset)
        vocab = shared_vocab(t_model, s_model)
        start = time.perf_counter()
        with Progress(self._log, what, data.n_sequences, unit="sequences") as progress:
            stats, t_summary, s_summary = stream_pair_and_model_stats(
                data,
                t_model,
                s_model,
                vocab_size=vocab,
                batch_size=self.project.batch_size,
                top_k=top_k,
                model_top_k=min(self.project.token_top_k, vocab),
                device=self.device,
                progress=progress.update,
            )
        self._log(
            f"{what}: {stats.n} tokens of {data.n_sequences} sequences in {time.perf_counter() - start:.2f} s "
            f"({t_model.device})"
        )
        cache_key = self._pair_cache_key(teacher, student, dataset, top_k)
        if cache_key:
            self.cache.store(
                cache_key,
                pack_stats(stats),
                {
                    "kind": PAIR_KIND,
                    "model": f"{teacher}+{student}",
                    "dataset": dataset,
                    "models": {
                        teacher: self.token_fingerprint(teacher, dataset),
                        student: self.token_fingerprint(student, dataset),
                    },
                    "datasets": {dataset: data.sha256},
                    "top_k": top_k,
                },
            )
        for name, summary in ((teacher, t_summary), (student, s_summary)):
            if (name, dataset) not in self._token_summaries:
                self._keep_summary(name, dataset, summary)
        return stats

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
    ) -> Generations:
        """Greedy continuations of ``prompts`` (taken from token dataset ``dataset``) by ``teacher`` and ``student``.

        Computed once per run for the same prompts and settings, and kept in the output cache
        (kind ``generation``), keyed by both models' fingerprints, the prompts, the settings,
        the device kind and the torch version (:func:`~distill_eval.lm.generation.generation_key`).
        """
        from distill_eval.lm.generation import GENERATION_KIND, Generations, generate_pair, generation_key
        from distill_eval.lm.models import shared_vocab

        memo = (teacher, student, dataset, prompts.sha256, max_new_tokens, eos, batch_size)
        if memo in self._generations:
            return self._generations[memo]
        for name in (teacher, student):
            if name not in self.project.models:
                raise ConfigError(f"model {name!r} is not defined in [tool.distill_eval.models]")
        data = self.token_dataset(dataset)
        fps = self.token_fingerprint(teacher, dataset), self.token_fingerprint(student, dataset)
        settings = {"max_new_tokens": max_new_tokens, "eos": eos, "batch_size": batch_size}
        cache_key = None
        if None not in fps:
            cache_key = generation_key(
                fps[0], fps[1], data, prompts, device=self.device, torch_version=torch_version(), **settings
            )
        records, info, warning = self.cache.load(cache_key) if cache_key else (None, {}, None)
        if warning:
            self.warnings.append(warning)
            self._log(warning)
        found = None
        if records is not None and records.shape == (prompts.n,):
            try:
                found = Generations.unpack(records, info.get("kv_cache") or {})
            except ValueError:
                found = None
        what = f"{teacher} and {student} continuing {prompts.n} prompts of {dataset}"
        if found is not None:
            self._log(f"{what}: from cache")
        else:
            t_model, s_model = self.token_model(teacher, dataset), self.token_model(student, dataset)
            shared_vocab(t_model, s_model)  # the teacher scores the student's tokens
            start = time.perf_counter()
            found = generate_pair(t_model, s_model, prompts.tokens, **settings)
            self._log(f"{what}: {max_new_tokens} tokens each in {time.perf_counter() - start:.2f} s ({t_model.device})")
            if cache_key:
                self.cache.store(
                    cache_key,
                    found.pack(),
                    {
                        "kind": GENERATION_KIND,
                        "model": f"{teacher}+{student}",
                        "dataset": dataset,
                        "models": {teacher: fps[0], student: fps[1]},
                        "datasets": {dataset: data.sha256},
                        "prompts": prompts.n,
                        "kv_cache": found.kv_cache,
                        **settings,
                    },
                )
        self._generations[memo] = found
        return found

    # -- checks --------------------------------------------------------------

    def run_check(self, suite: SuiteSpec, check: CheckSpec) -> CheckResult:
        """Compute and judge one check. DistillErrors propagate; the caller records them."""
        kind = KINDS[check.kind]
        gate = self.gate or check.gate or suite.gate
        start = time.perf_counter()
        self._check_data_type(check)
        measurement = kind.compute(CheckContext(suite, check, self), check.params)
        bounds = judge(
            measurement,
            check.bounds,
            gate=gate,
            slice_metrics=kind.slice_metrics,
            min_support=check.params.get("min_support"),
        )
        broken = [b for b in bounds if not b.ok]
        if not broken:
            outcome, message = "passed", ""
        else:
            outcome = "warned" if check.severity == "warn" else "failed"
            message = "; ".join(b.describe() for b in broken)
        return CheckResult(
            suite=suite.name,
            file=str(suite.file),
            gate=gate,
            suite_gate=self.gate or suite.gate,
            id=check.id,
            kind=check.kind,
            outcome=outcome,
            message=message,
            metrics=measurement.metrics,
            bounds=bounds,
            slices=measurement.slices,
            extras=measurement.extras,
            models=self._models_of(check),
            dataset=check.dataset,
            duration_s=time.perf_counter() - start,
        )

    def _check_data_type(self, check: CheckSpec) -> None:
        """A check of token data must be of a kind that reads tokens, and bound only its token metrics (and back)."""
        kind = KINDS[check.kind]
        if check.dataset not in self.project.datasets:
            return  # reported where the dataset is read
        tokens = self.is_token_dataset(check.dataset)
        if tokens and not kind.token_metrics:
            readers = ", ".join(name for name, k in KINDS.items() if k.token_metrics)
            raise CheckError(
                f"check '{check.id}': kind {check.kind} does not evaluate token data yet, and dataset "
                f"'{check.dataset}' holds token sequences; kinds that do: {readers}"
            )
        if not kind.token_metrics:
            return
        if not tokens and not kind.metrics + kind.slice_metrics:
            raise CheckError(
                f"check '{check.id}': kind {check.kind} evaluates only token data (language-model sequences), but "
                f"dataset '{check.dataset}' holds classification examples; expected a token dataset (an .npz/.pt "
                'file with input_ids, a .jsonl text file, or source = "builtin:bytes")'
            )
        applicable = kind.token_metrics if tokens else kind.metrics + kind.slice_metrics
        for bound in check.bounds:
            if bound.metric not in applicable:
                data = "token sequences" if tokens else "classification examples"
                raise CheckError(
                    f"check '{check.id}' bounds {bound.metric}, which kind {check.kind} does not compute on "
                    f"dataset '{check.dataset}': it holds {data}; metrics there: {', '.join(applicable)}"
                )

    def error_result(self, suite: SuiteSpec, check: CheckSpec, error: BaseException) -> CheckResult:
        """A result for a check that could not be computed."""
        message = str(error) if isinstance(error, DistillError) else f"{type(error).__name__}: {error}"
        return CheckResult(
            suite=suite.name,
            file=str(suite.file),
            gate=self.gate or check.gate or suite.gate,
            suite_gate=self.gate or suite.gate,
            id=check.id,
            kind=check.kind,
            outcome="error",
            message=message,
            models=self._models_of(check),
            dataset=check.dataset,
        )

    def missing_files(self, checks: Iterable[CheckSpec], *, models: bool = True, datasets: bool = True) -> list[str]:
        """Every model, weights or dataset file the checks need that does not exist, one line each.

        Checked before any check runs, so that all of them are reported at once instead of
        as one error per check. ``models`` / ``datasets`` False skips those (a
        ``pytest_distill_load_*`` hook may provide them without the file).
        """
        model_names: dict[str, None] = {}
        dataset_names: dict[str, None] = {}
        for check in checks:
            model_names.update(dict.fromkeys(self._models_of(check).values()))
            dataset_names[check.dataset] = None
            dataset_names.update(dict.fromkeys(name for _, name in KINDS[check.kind].extra_datasets(check.params)))
        lines = []
        for name in model_names if models else ():
            spec = self.project.models.get(name)
            for what, path in (("file", spec and spec.path), ("weights file", spec and spec.weights)):
                if path is not None and not Path(path).is_file():
                    lines.append(f"model '{name}': {what} not found: {path}")
        for name in dataset_names if datasets else ():
            spec = self.project.datasets.get(name)
            if spec is not None and spec.path is not None and not Path(spec.path).is_file():
                lines.append(f"dataset '{name}': file not found: {spec.path}")
        return lines

    def _models_of(self, check: CheckSpec) -> dict[str, str]:
        kind = KINDS[check.kind]
        roles = {"teacher": check.teacher, "student": check.student} if kind.uses_models else {}
        roles.update(dict(kind.extra_models(check.params)))
        return roles

    def _sha256(self, path: str | Path) -> str:
        """A model file's sha256, computed once per session (for its cache key and its provenance)."""
        key = Path(path).resolve()
        if key not in self._file_sha256:
            self._file_sha256[key] = sha256_file(key)
        return self._file_sha256[key]

    # -- provenance ----------------------------------------------------------

    def model_provenance(self) -> dict[str, dict[str, Any]]:
        """What results.json says about every model this session touched."""
        out: dict[str, dict[str, Any]] = {}
        names = {m for m, _ in self._outputs} | set(self._models) | set(self._token_models)
        names |= {m for t, s, _, _ in self._token_stats for m in (t, s)} | {m for m, _ in self._token_summaries}
        names |= {m for key in self._generations for m in key[:2]}
        for name in sorted(names):
            spec = self.project.models[name]
            info: dict[str, Any] = {
                "path": str(spec.path) if spec.path else None,
                "factory": spec.factory,
                "weights": str(spec.weights) if spec.weights else None,
            }
            files = [p for p in (spec.path, spec.weights) if p is not None]
            if files:
                info["sha256"] = self._sha256(files[-1])
                info["bytes"] = sum(os.path.getsize(p) for p in files)
            else:
                info["sha256"] = None
            model = self._models.get(name) or self._token_models.get(name)
            facts = {"params": model.params, "format": model.format} if model else self._cached_facts.get(name, {})
            info["params"] = facts.get("params")
            info["format"] = facts.get("format")
            info["loaded"] = model is not None
            info["fingerprint"] = self._fingerprints.get(name) or self._token_fingerprints.get(name)
            manifest = _trainer_manifest(files[-1]) if files else None
            if manifest is not None:
                info["manifest"] = manifest
            out[name] = info
        return dict(sorted({**self.worker_models, **out}.items()))

    def dataset_provenance(self) -> dict[str, dict[str, Any]]:
        out = {name: data.describe() for name, data in self._datasets.items()}
        out.update({name: data.describe() for name, data in self._token_datasets.items()})
        return dict(sorted({**self.worker_datasets, **out}.items()))
