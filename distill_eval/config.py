"""Project configuration: ``[tool.distill_eval]`` in pyproject.toml.

Read into frozen dataclasses and validated completely before anything is
loaded, so that a typo is reported as a sentence at start-up rather than as a
check that silently does nothing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill_eval._suggest import did_you_mean, one_of
from distill_eval._tables import TableReader
from distill_eval.errors import ConfigError

__all__ = [
    "TOKEN_SOURCES",
    "DatasetSpec",
    "ModelSpec",
    "ProjectConfig",
    "dataset_spec_from_table",
    "load_project_config",
    "model_spec_from_table",
    "read_toml",
]

BUILTIN_SOURCES = ("sklearn:digits", "sklearn:iris", "sklearn:wine", "sklearn:breast_cancer")
#: built-in token-level (language-model) sources: the byte-level corpus of Python's own docstrings
TOKEN_SOURCES = ("builtin:bytes",)


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    Exactly one of ``path`` (a serialised model) or ``factory`` (``"module:callable"``
    returning an ``nn.Module`` or an object with ``predict_logits``) is set, unless
    a ``pytest_distill_load_model`` hook provides the model.
    """

    name: str
    path: Path | None = None
    factory: str | None = None
    weights: Path | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    trusted: bool = False
    #: the true vocabulary size of a language model (token datasets only); None: the model says
    vocab_size: int | None = None
    #: the table as written, for ``pytest_distill_load_model`` hooks that read extra keys
    table: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """A short human description: the path or the factory."""
        if self.path is not None:
            return _shown(self.path)
        if self.factory is not None:
            return self.factory + (f" + {_shown(self.weights)}" if self.weights else "")
        return "(provided by a pytest_distill_load_model hook)"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from: a file (``path``) or a built-in ``source``."""

    name: str
    path: Path | None = None
    source: str | None = None
    split: str | None = None
    label_column: str = "label"
    id_column: str = "id"
    #: tokens per sequence of the built-in byte corpus (``source = "builtin:bytes"``)
    seq_len: int | None = None
    #: a ``.jsonl`` text file's tokenizer: ``"bytes"`` or a local Hugging Face tokenizer folder
    tokenizer: str | Path | None = None
    #: a ``.jsonl`` file's longest sequence in tokens (longer texts are truncated)
    max_length: int | None = None
    #: whether a ``.jsonl`` file's sequences start with the tokenizer's BOS; None: when it has one
    bos: bool | None = None
    table: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        if self.path is not None:
            return _shown(self.path)
        if self.source is not None:
            return self.source + (f" ({self.split})" if self.split else "")
        return "(provided by a pytest_distill_load_dataset hook)"


@dataclass(frozen=True)
class ProjectConfig:
    """The ``[tool.distill_eval]`` table with paths resolved against the rootdir."""

    rootdir: Path
    file: Path | None = None
    suites: Path = Path("suites")
    reports: Path = Path("reports")
    cache_dir: Path = Path(".distill_cache")
    #: the accepted baseline's results (written by ``--distill-accept``, read by kind ``regression``)
    baseline: Path = Path("reports/baseline.json")
    device: str = "auto"
    batch_size: int = 256
    #: top-k ids kept per token in a model's cached per-token summary (token data)
    token_top_k: int = 32
    models: Mapping[str, ModelSpec] = field(default_factory=dict)
    datasets: Mapping[str, DatasetSpec] = field(default_factory=dict)

    def with_overrides(
        self,
        *,
        models: Mapping[str, str] | None = None,
        datasets: Mapping[str, str] | None = None,
        reports: str | None = None,
        device: str | None = None,
        base: Path | None = None,
    ) -> ProjectConfig:
        """Apply command-line overrides; paths are relative to ``base`` (the invocation dir).

        Raises
        ------
        ConfigError
            When an override names a model or dataset the project does not define: a
            misspelt name would otherwise leave the configured model in place, silently.
        """
        base = base or self.rootdir
        for option, given, known in (
            ("--distill-model", models or {}, self.models),
            ("--distill-dataset", datasets or {}, self.datasets),
        ):
            what = "model" if option == "--distill-model" else "dataset"
            for name in given:
                if name not in known:
                    defined = f"defined: {one_of(known)}" if known else "none is defined"
                    raise ConfigError(
                        f"{option} {name}=... names {what} {name!r}, which [tool.distill_eval.{what}s] does not "
                        f"define{did_you_mean(name, known)}; {defined}"
                    )
        new_models = dict(self.models)
        for name, path in (models or {}).items():
            # A path given on the command line replaces how the model is loaded entirely,
            # but keeps `trusted` (and a language model's `vocab_size`) from the config: trust is a
            # property of the project.
            old = new_models.get(name)
            new_models[name] = ModelSpec(
                name=name,
                path=_resolve(base, path),
                trusted=bool(old and old.trusted),
                vocab_size=old.vocab_size if old else None,  # the tokenizer's size, not the file's
                table={"path": path},
            )
        new_datasets = dict(self.datasets)
        for name, value in (datasets or {}).items():
            if value in BUILTIN_SOURCES + TOKEN_SOURCES or value.startswith("sklearn:"):
                spec = _dataset_spec(name, {"source": value}, file="--distill-dataset", base=base)
            else:
                spec = DatasetSpec(name=name, path=_resolve(base, value), table={"path": value})
            new_datasets[name] = spec
        return replace(
            self,
            models=new_models,
            datasets=new_datasets,
            reports=_resolve(base, reports) if reports else self.reports,
            device=device or self.device,
        )


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes a ConfigError with the line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", file=str(path)) from None


def load_project_config(rootdir: Path, pyproject: Path | None = None) -> ProjectConfig:
    """Read ``[tool.distill_eval]`` from ``rootdir/pyproject.toml`` (defaults if absent).

    Parameters
    ----------
    rootdir : Path
        pytest's rootdir; relative paths in the table are resolved against it.
    pyproject : Path, optional
        The file to read; default ``rootdir / "pyproject.toml"``.
    """
    rootdir = Path(rootdir)
    pyproject = pyproject or rootdir / "pyproject.toml"
    if not pyproject.is_file():
        return ProjectConfig(
            rootdir=rootdir,
            suites=rootdir / "suites",
            reports=rootdir / "reports",
            cache_dir=rootdir / ".distill_cache",
            baseline=rootdir / "reports" / "baseline.json",
        )
    doc = read_toml(pyproject)
    table = doc.get("tool", {}).get("distill_eval", {})
    file = str(pyproject)
    r = TableReader(table, file=file, where="[tool.distill_eval]")
    suites = r.string("suites", "suites")
    reports = r.string("reports", "reports")
    cache_dir = r.string("cache_dir", ".distill_cache")
    baseline = r.string("baseline", "reports/baseline.json")
    device = r.string("device", "auto")
    _check_device(device, r)
    batch_size = r.integer("batch_size", 256, minimum=1)
    token_top_k = r.integer("token_top_k", 32, minimum=1)
    models_table = r.table_of("models", {})
    datasets_table = r.table_of("datasets", {})
    r.finish()
    models = {}
    for name, sub in models_table.items():
        models[name] = _model_spec(name, sub, file=file, base=rootdir)
    datasets = {}
    for name, sub in datasets_table.items():
        datasets[name] = _dataset_spec(name, sub, file=file, base=rootdir)
    return ProjectConfig(
        rootdir=rootdir,
        file=pyproject,
        suites=_resolve(rootdir, suites),
        reports=_resolve(rootdir, reports),
        cache_dir=_resolve(rootdir, cache_dir),
        baseline=_resolve(rootdir, baseline),
        device=device,
        batch_size=batch_size,
        token_top_k=token_top_k,
        models=models,
        datasets=datasets,
    )


def _check_device(device: str, r: TableReader) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise r.error(f"'device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")


def model_spec_from_table(name: str, table: Any, *, file: str, base: Path, where: str) -> ModelSpec:
    """Read a model table (``path`` or ``factory`` [+ ``weights``], ``kwargs``, ``trusted``, ``options``).

    The same rules as ``[tool.distill_eval.models.<name>]``, for tables in other
    files (a training config's ``[teacher]``); ``where`` names the table in messages
    and relative paths are resolved against ``base``.
    """
    return _model_spec(name, table, file=file, base=base, where=where)


def dataset_spec_from_table(name: str, table: Any, *, file: str, base: Path, where: str) -> DatasetSpec:
    """Read a dataset table (``path`` or ``source`` + ``split``, columns, ``options``).

    The same rules as ``[tool.distill_eval.datasets.<name>]``; see :func:`model_spec_from_table`.
    """
    return _dataset_spec(name, table, file=file, base=base, where=where)


def _model_spec(name: str, table: Any, *, file: str, base: Path, where: str | None = None) -> ModelSpec:
    r = TableReader(table, file=file, where=where or f"[tool.distill_eval.models.{name}]")
    path = r.string("path", None)
    factory = r.string("factory", None)
    weights = r.string("weights", None)
    kwargs = r.table_of("kwargs", {})
    trusted = r.boolean("trusted", False)
    vocab_size = r.integer("vocab_size", None, minimum=1)
    # Extra keys are allowed only when a hook consumes them: declare them under `options`.
    r.table_of("options", {})
    r.finish()
    if path and factory:
        raise r.error("set either 'path' or 'factory', not both")
    if weights and not factory:
        raise r.error("'weights' needs a 'factory' that builds the module to load them into")
    if factory is not None and ":" not in factory:
        raise r.error(f"'factory' must look like 'package.module:callable', got {factory!r}")
    return ModelSpec(
        name=name,
        path=_resolve(base, path) if path else None,
        factory=factory,
        weights=_resolve(base, weights) if weights else None,
        kwargs=dict(kwargs),
        trusted=trusted,
        vocab_size=vocab_size,
        table=dict(table),
    )


def _dataset_spec(name: str, table: Any, *, file: str, base: Path, where: str | None = None) -> DatasetSpec:
    r = TableReader(table, file=file, where=where or f"[tool.distill_eval.datasets.{name}]")
    path = r.string("path", None)
    source = r.string("source", None)
    split = r.string("split", None, choices=("train", "test", "all"))
    label_column = r.string("label_column", "label")
    id_column = r.string("id_column", "id")
    seq_len = r.integer("seq_len", None, minimum=2)
    tokenizer = r.string("tokenizer", None)
    max_length = r.integer("max_length", None, minimum=2)
    bos = r.boolean("bos", None)
    r.table_of("options", {})
    r.finish()
    is_jsonl = bool(path) and Path(path).suffix.lower() == ".jsonl"
    if is_jsonl and tokenizer is None:
        raise r.error(
            "a .jsonl text file needs 'tokenizer': \"bytes\" (the built-in byte tokenizer) or a local "
            "Hugging Face tokenizer folder"
        )
    for key, value in (("tokenizer", tokenizer), ("max_length", max_length), ("bos", bos)):
        if value is not None and not is_jsonl:
            raise r.error(f"'{key}' applies only to a .jsonl text file (files of token ids are tokenized already)")
    if path and source:
        raise r.error("set either 'path' or 'source', not both")
    if source is not None:
        known = BUILTIN_SOURCES + TOKEN_SOURCES
        if source not in known:
            raise r.error(f"'source' must be one of {one_of(known)}, got {source!r}{did_you_mean(source, known)}")
        split = split or "test"
    elif split is not None:
        raise r.error("'split' applies only to a built-in 'source'")
    if seq_len is not None and source not in TOKEN_SOURCES:
        raise r.error(f"'seq_len' applies only to source = {TOKEN_SOURCES[0]!r} (a file's sequences keep their length)")
    return DatasetSpec(
        name=name,
        path=_resolve(base, path) if path else None,
        source=source,
        split=split,
        label_column=label_column,
        id_column=id_column,
        seq_len=seq_len,
        tokenizer=tokenizer if tokenizer in (None, "bytes") else _resolve(base, tokenizer),
        max_length=max_length,
        bos=bos,
        table=dict(table),
    )


def _shown(path: Path) -> str:
    """A path for messages: relative to the working directory when inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _resolve(base: Path, path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p
