"""The ``distill-eval`` command.

Subcommands:

- ``distill-eval train CONFIG.toml [--resume]`` — the reference distillation
  trainer (``distill-eval docs trainer``; :mod:`distill_eval.train.trainer`);
- ``distill-eval report RESULTS.json [-o report.html]`` — re-render the HTML
  report (and, with ``--summary``, summary.md) from stored results;
- ``distill-eval predict --model NAME --dataset NAME`` — compute a model's
  outputs into the plugin's output cache (:mod:`distill_eval.predict`);
- ``distill-eval cache [--prune | --clear] [--max-size SIZE]`` — list the
  output cache (size, entries, which the project still uses) and prune it
  (:class:`~distill_eval.outputs.OutputCache` keeps the entries);
- ``distill-eval docs [TOPIC]`` — print a page of the reference that ships with
  the package (:mod:`distill_eval.docs`), or list the topics.

``train`` and ``predict`` also run under ``torchrun --nproc_per_node=K -m
distill_eval ...``; rank 0 alone prints progress, and an error every rank
shares is printed once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_eval import __version__
from distill_eval.errors import DistillWarning

if TYPE_CHECKING:
    from distill_eval.config import ProjectConfig
    from distill_eval.outputs import CacheEntry, OutputCache


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-eval",
        description="Tell whether a distilled student may replace its teacher. "
        "The gate itself runs under pytest: `pytest --distill`.",
    )
    parser.add_argument("--version", action="version", version=f"distill-eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_predict(sub)
    _add_cache(sub)
    _add_docs(sub)
    report = sub.add_parser(
        "report",
        help="re-render report.html from a results.json",
        description="Re-render report.html (and optionally summary.md) from a stored results.json.",
    )
    report.add_argument("results", type=Path, metavar="RESULTS.json", help="a results.json written by pytest --distill")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to write the HTML (default: report.html next to RESULTS.json)",
    )
    report.add_argument(
        "--summary",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Markdown summary to PATH (default: not written)",
    )
    return parser


_TRAIN_EPILOG = """\
config (TOML; relative paths are resolved against the config file's folder):

  [data]
  train = { source = "sklearn:digits", split = "train" }   # any dataset spec, inline
  val = { source = "sklearn:digits", split = "test" }
  [teacher]
  path = "teacher.pt"                 # any model spec the plugin loads
  [student]
  factory = "mystudent:build"         # callable returning an nn.Module (cwd is importable)
  kwargs = {}
  [distill]
  epochs = 40                         # required; the rest have defaults
  temperature = 4.0                   # loss = (1 - alpha) CE + alpha T^2 KL(teacher || student)
  alpha = 0.9
  batch_size = 64
  lr = 0.001
  seed = 0
  control = false                     # also train the same student on labels alone
  offline = false                     # teacher logits computed once, through the output cache
  filter_teacher_errors = "none"      # "none" | "drop" | "relabel"
  schedule = "constant"               # or "cosine"
  patience = 0                        # early stopping on val_agreement (0: off)
  device = "auto"
  precision = "fp32"                  # "bf16": autocast on CUDA; "auto": bf16 on CUDA if supported
  [augment]
  noise_std = 0.0                     # gaussian input noise (not with offline = true)
  [output]
  dir = "runs/digits"
  format = "export"                   # student.pt2 (torch.export); "torchscript": student.pt

writes into the output folder: student.pt2 (and control.pt2), manifest.json (config,
teacher sha256, data hashes, seed, environment, one record per epoch) and checkpoint.pt.
An example: distill_eval/train/examples/digits.toml. Every key: distill-eval docs trainer.

distributed: torchrun --nproc_per_node=K -m distill_eval train CONFIG.toml (gloo on CPU,
nccl on CUDA). batch_size is the global batch: each process takes a strided share of
every batch, so K processes take the same steps as one; rank 0 alone writes.
"""


def _add_train(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="distil a student from a teacher (the reference trainer)",
        description="Distil a student from a teacher as CONFIG.toml says, optionally with\n"
        "a label-only control student; one line per epoch. Exit status: 0 done (or stopped by\n"
        "--max-epochs-this-run), 2 a mistake in the config, data or models, 130 interrupted\n"
        "(continue with --resume).",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", type=Path, metavar="CONFIG.toml", help="the training config")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run whose checkpoint.pt is in the output folder, exactly where it stopped "
        "(starts afresh when there is none)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if the output folder holds a run (default: refuse, to never clobber one)",
    )
    train.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write here instead of [output] dir (relative to the current folder)",
    )
    train.add_argument("--device", default=None, help="override [distill] device: cpu, cuda, cuda:N, auto")
    train.add_argument(
        "--no-cache", action="store_true", help="compute the teacher's logits afresh (default: use the output cache)"
    )
    train.add_argument(
        "--max-epochs-this-run",
        type=int,
        default=None,
        metavar="N",
        help="train at most N epochs, checkpoint and stop; continue later with --resume (default: no limit)",
    )
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from distill_eval.errors import ConfigError, DistillError
    from distill_eval.train import load_train_config, train

    try:
        config = load_train_config(args.config)
        if args.output_dir is not None:
            config = config.with_output_dir(args.output_dir.resolve())
        if args.device is not None:
            _check_device_option(args.device)
            config = replace(config, distill=replace(config.distill, device=args.device))
        if args.max_epochs_this_run is not None and args.max_epochs_this_run < 0:
            raise ConfigError(f"--max-epochs-this-run must be >= 0, got {args.max_epochs_this_run}")
        result = train(
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            use_cache=not args.no_cache,
            max_epochs_this_run=args.max_epochs_this_run,
            log=None if args.quiet else _print_flush,
        )
    except DistillError as e:
        _print_error("train", e)
        return 2
    except KeyboardInterrupt:
        if _rank() == 0:
            print(f"distill-eval train: interrupted; continue with: {_resume_command(args)}", file=sys.stderr)
        return 130
    if not result.finished and not args.quiet and _rank() == 0:
        print(f"unfinished; continue with: {_resume_command(args)}")
    return 0


def _check_device_option(device: str) -> None:
    from distill_eval.errors import ConfigError

    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")


def _rank() -> int:
    """This process's rank under torchrun (0 outside it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _print_error(command: str, error: BaseException) -> None:
    """Print an error once per run under torchrun.

    Rank 0 alone prints a copy of an error every rank raised (:func:`origin_rank`) and a
    ConfigError (the same command line and files give every rank the same mistake); any
    other error is printed by the rank that raised it, with its rank.
    """
    from distill_eval.errors import ConfigError
    from distill_eval.train.distributed import origin_rank

    rank, origin = _rank(), origin_rank(error)
    if rank != 0 and (origin is not None or isinstance(error, ConfigError)):
        return  # rank 0 prints it
    raised_by = rank if origin is None else origin
    prefix = f"[rank {raised_by}] " if raised_by else ""
    print(f"distill-eval {command}: {prefix}{error}", file=sys.stderr)


def _resume_command(args: argparse.Namespace) -> str:
    output = f" --output-dir {args.output_dir}" if args.output_dir is not None else ""
    return f"distill-eval train {args.config}{output} --resume"


def _print_flush(message: str) -> None:
    print(message, flush=True)


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser(
        "predict",
        help="compute a model's outputs on a dataset into the output cache (also under torchrun, sharded)",
        description="Compute a model's logits on a dataset of the project config and store them in the\n"
        "plugin's output cache, under the key pytest --distill computes: a later run on the same\n"
        "files and settings reads them without loading the model. Under\n"
        "`torchrun --nproc_per_node=K -m distill_eval predict ...` every process computes its share\n"
        "of the batches and rank 0 stores the whole entry. Exit status: 0 done, 2 a mistake in\n"
        "the config, data or model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--model", required=True, metavar="NAME", help="a model of [tool.distill_eval.models]")
    predict.add_argument("--dataset", required=True, metavar="NAME", help="a dataset of [tool.distill_eval.datasets]")
    predict.add_argument(
        "--config",
        type=Path,
        default=Path("pyproject.toml"),
        metavar="PYPROJECT",
        help="the project config; relative paths in it are resolved against its folder (default: pyproject.toml)",
    )
    predict.add_argument(
        "--device", default=None, help="override the project's device: cpu, cuda, cuda:N, auto (default: the config's)"
    )
    predict.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="override the project's batch_size; part of the cache key (default: the config's, 256 if unset)",
    )
    predict.add_argument("--recompute", action="store_true", help="compute and store even if the cache holds the entry")
    predict.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _predict(args: argparse.Namespace) -> int:
    from distill_eval.config import load_project_config
    from distill_eval.errors import ConfigError, DistillError
    from distill_eval.predict import predict

    try:
        if not args.config.is_file():
            raise ConfigError(
                "file not found; run in the project's folder or pass its pyproject.toml with --config",
                file=str(args.config),
            )
        if args.device is not None:
            _check_device_option(args.device)
        if args.batch_size is not None and args.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
        config = args.config.resolve()
        project = load_project_config(config.parent, config)
        predict(
            project,
            args.model,
            args.dataset,
            device=args.device,
            batch_size=args.batch_size,
            recompute=args.recompute,
            log=None if args.quiet else _print_flush,
        )
    except DistillError as e:
        _print_error("predict", e)
        return 2
    except KeyboardInterrupt:
        if _rank() == 0:
            print("distill-eval predict: interrupted", file=sys.stderr)
        return 130
    return 0


_CACHE_EPILOG = """\
kinds (KIND):
  outputs      a model's logits on a dataset
  leakage      a leakage check's duplicate search (exact and near) of one dataset in another
  discovery    a slices check's discovered groups (discover = true)
  token-pairs  a teacher's and a student's paired per-token statistics on a token dataset
  token-model  one model's per-token summary on a token dataset (label log-prob, argmax, max prob,
               entropy, top-k ids and log-probs, k = token_top_k)
  leakage-tokens  a leakage check's duplicate and n-gram search of token sequences in others
  generation   a teacher's and a student's greedy continuations of a token dataset's prompts
  leakage, leakage-tokens, discovery, token-pairs, token-model and generation entries are keyed
  by the content of what they read, their settings and the code that computes them; they are
  stale once a dataset they read changed or left the config, and unknown otherwise (what the
  suites ask is not read here)

statuses:
  current   its key is one pytest --distill computes now, from the configured model and
            dataset files, device, batch_size and this torch version
  stale     no configured model and dataset give its key any more (a changed model or data
            file, another batch_size or device, a torch upgrade, a model given on the pytest
            command line, or an older cache format); NOTE says which
  unknown   it cannot be told without loading a model: a factory without weights, a model
            or dataset from a conftest.py hook, a missing file
  corrupt   truncated, changed or half of it missing: a run would recompute it (with a warning)
  orphan    the temporary file of a write that never finished (a killed run)
  writing   a temporary file another process may still be writing (only without file locks)
  other     a file the cache never writes; only --clear removes it

--prune removes stale, corrupt and orphan files and keeps current and unknown entries;
--max-size evicts what --prune would remove first, then the least recently used entries;
--clear removes every file of the output cache. A run that needs a removed entry
recomputes it. Listing and pruning are safe while pytest --distill runs on the same cache:
they take the cache's lock.
"""


def _add_cache(sub: Any) -> None:
    cache = sub.add_parser(
        "cache",
        help="show the output cache (size, entries, which are current); prune or clear it",
        description="List the model-output cache of the project: its folder, its total size, and one\n"
        "line per entry (model, dataset, shape, dtype, size, when written and last read, status).\n"
        "Whether an entry is current is worked out from the project config as pytest --distill\n"
        "would, by hashing the model and dataset files, without loading any model. Exit status:\n"
        "0 done (also when there is no cache), 1 the cache stayed locked by another process,\n"
        "2 a mistake in the config or the options.",
        epilog=_CACHE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cache.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PYPROJECT",
        help="the project config (default: pyproject.toml in the current folder or the nearest one above it)",
    )
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the cache folder (default: [tool.distill_eval] cache_dir of the config, else .distill_cache)",
    )
    action = cache.add_mutually_exclusive_group()
    action.add_argument(
        "--prune", action="store_true", help="remove stale, corrupt and orphaned entries; keep current ones"
    )
    action.add_argument("--clear", action="store_true", help="remove every entry, current ones too")
    cache.add_argument(
        "--max-size",
        type=_parse_size,
        default=None,
        metavar="SIZE",
        help="then evict least recently used entries until the cache is at most SIZE, e.g. 500MB, 2GB, "
        "1.5GiB (default: no limit)",
    )
    cache.set_defaults(usage_error=cache.error)


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def _parse_size(text: str) -> int:
    """``"2GB"`` -> 2_000_000_000; kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*", text.lower())
    if not match or (match[3] and not match[2]):
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB, 2GB or 1.5GiB, got {text!r}")
    number, unit, binary = float(match[1]), match[2], match[3]
    scale = 1024 ** "kmgt".index(unit) * 1024 if binary else _SIZE_UNITS[unit]
    return int(number * scale)


def _cache(args: argparse.Namespace) -> int:
    from distill_eval._io import LockTimeout
    from distill_eval.errors import DistillError
    from distill_eval.outputs import OutputCache

    if args.clear and args.max_size is not None:
        args.usage_error("argument --max-size: not allowed with argument --clear")
    try:
        project = _cache_project(args.config)
    except DistillError as e:
        print(f"distill-eval cache: {e}", file=sys.stderr)
        return 2
    folder = (args.cache_dir or project.cache_dir).resolve()
    cache = OutputCache(folder)
    if not folder.is_dir():
        print(f"no cache at {_shown(folder)}")
        return 0
    try:
        if args.clear:
            return _cache_clear(cache)
        keys = _ProjectKeys.of(project)
        rows = [_CacheRow.of(entry, keys) for entry in cache.scan().entries]
        if args.prune or args.max_size is not None:
            return _cache_prune(cache, rows, prune=args.prune, max_size=args.max_size)
    except LockTimeout as e:
        print(f"distill-eval cache: the cache is busy: {e}; try again", file=sys.stderr)
        return 1
    _cache_list(folder, rows)
    return 0


def _cache_project(config: Path | None) -> ProjectConfig:
    """The project config for ``distill-eval cache``: --config, or the nearest pyproject.toml (defaults if none)."""
    from distill_eval.config import load_project_config
    from distill_eval.errors import ConfigError

    if config is not None:
        if not config.is_file():
            raise ConfigError("file not found", file=str(config))
        config = config.resolve()
        return load_project_config(config.parent, config)
    here = Path.cwd()
    found = next((d for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), None)
    return load_project_config(found or here)


#: statuses in the order they are listed and explained; --prune removes the PRUNED ones
_STATUSES = ("current", "unknown", "stale", "corrupt", "orphan", "writing", "other")
_PRUNED = ("stale", "corrupt", "orphan")


class _ProjectKeys:
    """The cache keys the project's pytest --distill run computes now, and why the others are unknown."""

    def __init__(self) -> None:
        self.current: set[str] = set()
        self.fingerprints: dict[str, str] = {}
        self.datasets: dict[str, str] = {}  # name -> content sha256
        self.unknown_models: dict[str, str] = {}  # name -> why its fingerprint is unknown
        self.unknown_datasets: dict[str, str] = {}  # name -> why its content hash is unknown
        self.everything_unknown: str | None = None
        self.models: set[str] = set()
        self.dataset_names: set[str] = set()

    @classmethod
    def of(cls, project: ProjectConfig) -> _ProjectKeys:
        from distill_eval.data import load_dataset
        from distill_eval.errors import DistillError
        from distill_eval.lm.session import holds_tokens, load_token_spec
        from distill_eval.models import model_fingerprint, resolve_device
        from distill_eval.session import output_cache_key

        keys = cls()
        keys.models, keys.dataset_names = set(project.models), set(project.datasets)
        if project.file is None or not (project.models or project.datasets):
            where = project.file or "no pyproject.toml found"
            keys.everything_unknown = f"no models or datasets in [tool.distill_eval] ({where})"
            return keys
        try:
            device = resolve_device(project.device)
        except DistillError as e:
            keys.everything_unknown = str(e)
            return keys
        for name, spec in project.models.items():
            try:
                fingerprint = model_fingerprint(spec)
            except DistillError as e:
                keys.unknown_models[name] = str(e)
                continue
            if fingerprint is None:
                keys.unknown_models[name] = f"model '{name}' has no files to hash (its parameters key it, once loaded)"
            else:
                keys.fingerprints[name] = fingerprint
        loaded = {}
        for name, spec in project.datasets.items():
            try:
                if holds_tokens(spec):  # token data keys pair statistics, listed as token-pairs results
                    keys.datasets[name] = load_token_spec(spec).sha256
                    continue
                loaded[name] = load_dataset(spec)
            except DistillError as e:
                keys.unknown_datasets[name] = str(e)
                continue
            keys.datasets[name] = loaded[name].sha256
        for fingerprint in keys.fingerprints.values():
            for data in loaded.values():
                keys.current.add(output_cache_key(fingerprint, data, device=device, batch_size=project.batch_size))
        return keys

    def status(self, entry: CacheEntry) -> tuple[str, str]:
        """(status, note) of a sound entry."""
        if entry.key in self.current:
            return "current", ""
        if self.everything_unknown:
            return "unknown", self.everything_unknown
        if entry.kind != "outputs":
            return self._result_status(entry)
        model, dataset = entry.model, entry.dataset
        for why in (self.unknown_models.get(model or ""), self.unknown_datasets.get(dataset or "")):
            if why:
                return "unknown", why
        if model is None or dataset is None:
            if self.unknown_models or self.unknown_datasets:
                return "unknown", "its sidecar names no model or dataset"
            return "stale", "no configured model and dataset give its key"
        if model not in self.models:
            return "stale", f"no model '{model}' in the config"
        if dataset not in self.dataset_names:
            return "stale", f"no dataset '{dataset}' in the config"
        changed = []
        if entry.info.get("fingerprint") != self.fingerprints[model]:
            changed.append(f"model '{model}'")
        if entry.info.get("dataset_sha256") != self.datasets[dataset]:
            changed.append(f"dataset '{dataset}'")
        if changed:
            return "stale", " and ".join(changed) + (" have" if len(changed) > 1 else " has") + " changed"
        return "stale", "computed with another device, batch_size or torch version"

    def _result_status(self, entry: CacheEntry) -> tuple[str, str]:
        """(status, note) of a check's cached result (leakage, discovery): stale once its data is gone or changed."""
        datasets = entry.info.get("datasets")
        datasets = datasets if isinstance(datasets, dict) else {}
        for name, sha256 in sorted(datasets.items()):
            if name not in self.dataset_names:
                return "stale", f"no dataset '{name}' in the config"
            if name in self.unknown_datasets:
                return "unknown", self.unknown_datasets[name]
            if sha256 and sha256 != self.datasets[name]:
                return "stale", f"dataset '{name}' has changed"
        check = entry.info.get("check")
        of = f" of check '{check}'" if isinstance(check, str) else ""
        return "unknown", f"a {entry.kind} result{of}: reused while that check's settings and inputs stay the same"


class _CacheRow:
    """One line of the listing: an entry or stray file, and its status for this project."""

    def __init__(self, entry: CacheEntry, status: str, note: str):
        self.entry = entry
        self.status = status
        self.note = note

    @classmethod
    def of(cls, entry: CacheEntry, keys: _ProjectKeys) -> _CacheRow:
        if entry.state == "ok":
            return cls(entry, *keys.status(entry))
        status = {"outdated": "stale"}.get(entry.state, entry.state)
        return cls(entry, status, entry.note)

    def cells(self, now: float) -> list[str]:
        from distill_eval.outputs import format_size

        e = self.entry
        shape, dtype = e.shape or e.info.get("shape"), e.dtype or e.info.get("dtype")  # a corrupt one: as written
        key = e.key or _key_of_temp(e.paths[0].name)
        note = self.note
        if not e.key:  # a stray file: its name, without the key the KEY column shows
            name = e.paths[0].name
            note = f"{note}: {name.replace(key[12:], '…') if key else name}"
        return [
            self.status,
            e.model or "-",
            e.dataset or "-",
            e.kind if e.key else "-",
            "x".join(str(n) for n in shape) if isinstance(shape, list | tuple) else "-",
            _dtype_shown(dtype),
            format_size(e.size),
            _ago(e.created, now),
            _ago(e.last_used, now) if e.key else "-",
            key[:12] if key else "-",
            note,
        ]

    def sort_key(self) -> tuple[Any, ...]:
        e = self.entry
        return (e.model is None, e.model or "", e.dataset or "", _STATUSES.index(self.status), -(e.created or 0))


def _key_of_temp(name: str) -> str | None:
    head = name.lstrip(".").split(".")[0]
    return head if len(head) == 64 and all(c in "0123456789abcdef" for c in head) else None


def _cache_list(folder: Path, rows: list[_CacheRow]) -> None:
    import time
    from collections import Counter

    from distill_eval.outputs import format_size

    entries = [r for r in rows if r.entry.key]
    strays = [r for r in rows if not r.entry.key]
    total = sum(r.entry.size for r in rows)
    if not rows:
        print(f"cache {_shown(folder)}: empty")
        return
    counts = Counter(r.status for r in entries)
    parts = ", ".join(f"{counts[s]} {s}" for s in _STATUSES if counts[s])
    line = f"cache {_shown(folder)}: {format_size(total)} in {_plural(len(entries), 'entry')}"
    line += f" ({parts})" if parts else ""
    if strays:
        kinds = Counter(r.status for r in strays)
        line += " and " + ", ".join(f"{_plural(kinds[s], f'{s} file')}" for s in _STATUSES if kinds[s])
    print(line)
    now = time.time()
    header = ["STATUS", "MODEL", "DATASET", "KIND", "SHAPE", "DTYPE", "SIZE", "CREATED", "LAST USED", "KEY", "NOTE"]
    print(_table([header, *(r.cells(now) for r in sorted(rows, key=_CacheRow.sort_key))]))
    prunable = [r for r in rows if r.status in _PRUNED]
    if prunable:
        freed = sum(r.entry.size for r in prunable)
        print(f"`distill-eval cache --prune` would remove {_describe(prunable)}, freeing {format_size(freed)}")


def _cache_prune(cache: OutputCache, rows: list[_CacheRow], *, prune: bool, max_size: int | None) -> int:
    import time

    from distill_eval.outputs import format_size

    now = time.time()
    doomed: list[tuple[_CacheRow, str]] = []
    if prune:
        doomed = [(r, r.note) for r in sorted(rows, key=_CacheRow.sort_key) if r.status in _PRUNED]
    if max_size is not None:
        chosen = {id(r) for r, _ in doomed}
        size = sum(r.entry.size for r in rows if id(r) not in chosen)
        # garbage first, then the least recently used; never a file some writer may still hold
        candidates = sorted(
            (r for r in rows if id(r) not in chosen and r.status not in ("writing", "other")),
            key=lambda r: (r.status not in _PRUNED, r.entry.last_used or 0),
        )
        for row in candidates:
            if size <= max_size:
                break
            why = row.note if row.status in _PRUNED else f"least recently used ({_ago(row.entry.last_used, now)})"
            doomed.append((row, f"over --max-size: {why}"))
            size -= row.entry.size
    freed = cache.remove(r.entry for r, _ in doomed)
    if doomed:
        lines = []
        for row, why in doomed:
            cells = row.cells(now)
            lines.append(["removed", cells[0], cells[1], cells[2], cells[6], cells[9], why])
        print(_table(lines))
    left = [r for r in rows if all(r is not d for d, _ in doomed)]
    where = _shown(cache.folder)
    kept = f"{_plural(sum(1 for r in left if r.entry.key), 'entry')} ({format_size(sum(r.entry.size for r in left))})"
    if not doomed:
        print(f"nothing to remove; {kept} in {where}")
    else:
        print(f"freed {format_size(freed)}; {kept} left in {where}")
    return 0


def _cache_clear(cache: OutputCache) -> int:
    from distill_eval.outputs import format_size

    scan = cache.scan()
    freed = cache.remove(scan.entries)
    entries = sum(1 for e in scan.entries if e.key)
    others = len(scan.entries) - entries
    what = _plural(entries, "entry") + (f" and {_plural(others, 'other file')}" if others else "")
    print(f"removed {what} from {_shown(cache.folder)}; freed {format_size(freed)}")
    return 0


def _describe(rows: list[_CacheRow]) -> str:
    from collections import Counter

    counts = Counter(r.status for r in rows)
    names = {"orphan": "orphaned temporary file", "stale": "stale entry", "corrupt": "corrupt entry"}
    parts = [_plural(counts[s], names[s]) for s in _PRUNED if counts[s]]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1] + 'ies' if noun.endswith('entry') else noun + 's'}"


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    seconds = max(0.0, now - when)
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds // 86400)} d ago"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _shown(path: Path) -> str:
    """A path for messages: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _report(args: argparse.Namespace) -> int:
    from distill_eval._io import atomic_write
    from distill_eval.report import render_html, render_summary

    try:
        doc = json.loads(args.results.read_text())
    except FileNotFoundError:
        print(f"distill-eval report: {args.results}: file not found", file=sys.stderr)
        return 2
    except json.JSONDecodeError as e:
        print(f"distill-eval report: {args.results}: not valid JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict) or doc.get("schema") != 1:
        print(f"distill-eval report: {args.results}: not a distill_eval results.json (schema 1)", file=sys.stderr)
        return 2
    output = args.output or args.results.with_name("report.html")
    atomic_write(output, render_html(doc).encode())
    print(f"wrote {output}")
    if args.summary:
        atomic_write(args.summary, render_summary(doc).encode())
        print(f"wrote {args.summary}")
    return 0


def _add_docs(sub: Any) -> None:
    docs = sub.add_parser(
        "docs",
        help="print a page of the reference (configuration, suites, cli, ...); no TOPIC lists them",
        description="Print a page of the distill_eval reference, which ships with the package.\n"
        "Without TOPIC, list the topics. Exit status: 0 done, 2 an unknown topic.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    docs.add_argument("topic", nargs="?", default=None, metavar="TOPIC", help="a topic (default: list them)")


def _docs(args: argparse.Namespace) -> int:
    from distill_eval._suggest import did_you_mean, one_of
    from distill_eval.docs import read_topic, topics

    pages = topics()
    if args.topic is None:
        width = max(map(len, pages))
        print("topics (distill-eval docs TOPIC prints one):")
        for name, title in pages.items():
            print(f"  {name:<{width}}  {title}")
        return 0
    if args.topic not in pages:
        print(
            f"distill-eval docs: unknown topic {args.topic!r}{did_you_mean(args.topic, pages)}; "
            f"expected one of {one_of(pages)}",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(read_topic(args.topic))
    return 0


def _dtype_shown(dtype: object) -> str:
    """A dtype for the listing: a record of several fields (token statistics) is "record", not its full spec."""
    if not isinstance(dtype, str):
        return "-"
    return "record" if dtype.startswith("[(") else dtype


def _show_distill_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Our own warnings are sentences for the user: one line, without the source line that raised them."""
    if issubclass(category, DistillWarning):
        print(f"distill-eval: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    commands = {"report": _report, "train": _train, "predict": _predict, "cache": _cache, "docs": _docs}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_distill_warning
            return commands[args.command](args)  # argparse rejects unknown commands
    except BrokenPipeError:
        # The reader went away (`distill-eval cache | head`): stop quietly, as Unix tools do,
        # and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
