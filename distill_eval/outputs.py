"""Model outputs: computed once per (model, dataset), cached on disk by content.

:class:`ModelOutputs` is the one interface through which checks read what a
model produced, so a future output type (token-level logits too large to hold
whole) changes this module, not every check.

The same cache holds the results of long data-only computations (leakage's
duplicate search, slice discovery), keyed by :func:`result_key`: the content of
the arrays they read, their settings and the code that computes them. The
sidecar's ``kind`` tells the entries apart (``"outputs"`` when absent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval._hashing import sha256_arrays, sha256_file, sha256_json
from distill_eval._io import TEMP_SUFFIX, LockTimeout, atomic_write, file_lock, temp_writer_pid
from distill_eval.errors import ModelError

__all__ = ["CacheEntry", "CacheScan", "ModelOutputs", "OutputCache", "compute_logits", "result_key"]

#: bump when the cached representation changes, so old entries are never read
CACHE_FORMAT = 1

#: how long a run waits for another process's cache lock before it goes on without it
LOCK_TIMEOUT_S = 300.0

_ENTRY_NAME = re.compile(r"([0-9a-f]{64})\.(npy|json)")

#: a temporary file whose writer cannot be checked (no locks) is an orphan after this long
_TEMP_ORPHAN_AGE_S = 3600.0


class ModelOutputs:
    """One model's outputs on one dataset.

    Parameters
    ----------
    model : str
        The model's name.
    dataset : str
        The dataset's name.
    logits : ndarray of shape (n_samples, n_classes)
        Raw scores; softmax gives the model's probabilities.

    Notes
    -----
    Derived views (probabilities in float64, predictions, confidences) are
    computed once on first use and shared by every check.
    """

    def __init__(self, model: str, dataset: str, logits: np.ndarray, *, cached: bool = False):
        self.model = model
        self.dataset = dataset
        self.logits = logits
        self.cached = cached

    def __repr__(self) -> str:
        return f"ModelOutputs(model={self.model!r}, dataset={self.dataset!r}, shape={self.logits.shape})"

    @property
    def n(self) -> int:
        return int(self.logits.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.logits.shape[1])

    @cached_property
    def probs(self) -> np.ndarray:
        """Softmax probabilities, shape (n_samples, n_classes).

        In the logits' precision: float32 logits (what models emit) give float32
        probabilities (computed in float64 blocks), half the memory of a float64 copy.
        """
        from distill_eval.metrics import softmax
        from distill_eval.metrics.probabilities import row_blocks

        if self.logits.dtype != np.float32:
            return softmax(self.logits)
        # Always numpy, a block of rows at a time: the same bits whether or not this run
        # imported torch (a warm run, every output from the cache, does not).
        probs = np.empty(self.logits.shape, dtype=np.float32)
        for rows in row_blocks(*self.logits.shape):
            probs[rows] = softmax(self.logits[rows])
        return probs

    @cached_property
    def preds(self) -> np.ndarray:
        """Top-1 predictions (first index wins ties), shape (n_samples,)."""
        return np.argmax(self.logits, axis=1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """Top-1 probability, float64, shape (n_samples,) (from the logits, not the stored probabilities)."""
        from distill_eval.metrics.probabilities import top_probability

        return top_probability(self.logits)


def compute_logits(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    batch_size: int,
    model: str,
    dataset: str,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run ``predict`` over ``x`` in batches and validate the result.

    ``progress``, when given, is called after each batch with the examples done so far
    (e.g. :meth:`distill_eval.progress.Progress.update`).

    Raises
    ------
    ModelError
        When the model returns the wrong rank, a varying class count, a batch of
        the wrong length, or non-finite values; the message names the model,
        the dataset and the shapes.
    """
    n = len(x)
    out: np.ndarray | None = None
    for start in range(0, n, batch_size):
        batch = x[start : start + batch_size]
        try:
            logits = np.asarray(predict(batch))
        except ModelError:
            raise
        except Exception as e:  # the user's model failed; say which and on what
            raise ModelError(
                f"model '{model}' failed on dataset '{dataset}' (input batch of shape {tuple(batch.shape)}): "
                f"{type(e).__name__}: {e}"
            ) from e
        if logits.ndim != 2 or logits.shape[0] != len(batch):
            raise ModelError(
                f"model '{model}' returned outputs of shape {tuple(logits.shape)} for an input batch of "
                f"shape {tuple(batch.shape)} on dataset '{dataset}'; expected logits of shape "
                f"({len(batch)}, n_classes)"
            )
        if out is None:
            out = np.empty((n, logits.shape[1]), dtype=np.float32)
        elif logits.shape[1] != out.shape[1]:
            raise ModelError(
                f"model '{model}' returned {logits.shape[1]} classes (outputs of shape {tuple(logits.shape)}) for "
                f"the input batch at row {start} on dataset '{dataset}', but {out.shape[1]} classes for earlier "
                "batches; the class count must not change"
            )
        out[start : start + len(batch)] = logits
        if progress is not None:
            progress(start + len(batch))
    assert out is not None  # datasets are never empty (checked when loaded)
    bad = ~np.isfinite(out)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ModelError(
            f"model '{model}' produced {int(bad.sum())} non-finite logits (NaN or Inf) on dataset '{dataset}', "
            f"in {len(rows)} of {n} examples (first rows: {rows[:5].tolist()}); logits must be finite numbers"
        )
    return out


def _code_version(modules: Iterable[str]) -> str:
    """A hash of the source files of ``modules`` and of the versions of the libraries results depend on."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    parts: dict[str, str] = {}
    for name in sorted(modules):
        if name not in _CODE_HASHES:
            file = getattr(importlib.import_module(name), "__file__", None)
            _CODE_HASHES[name] = sha256_file(file) if file else name
        parts[name] = _CODE_HASHES[name]
    for package in ("numpy", "scipy", "scikit-learn"):
        try:
            parts[package] = version(package)
        except PackageNotFoundError:
            parts[package] = "absent"
    return sha256_json(parts)


_CODE_HASHES: dict[str, str] = {}


def result_key(
    kind: str,
    *,
    arrays: Mapping[str, np.ndarray | None],
    settings: Mapping[str, Any],
    code: Iterable[str],
) -> str:
    """The :class:`OutputCache` key of a check's long computation: what it read and how.

    Parameters
    ----------
    kind : str
        What is cached, e.g. ``"leakage"``, ``"discovery"``.
    arrays : mapping of str to ndarray or None
        Every array the computation reads, hashed by content (dtype, shape,
        bytes), so data from a file, a built-in set or a ``conftest.py`` hook
        (whose ``sha256`` may be empty) keys the same way; None for an absent one.
    settings : mapping
        The options (JSON-serialisable) that change the result.
    code : iterable of str
        Modules whose source computes the result: editing one makes old entries
        unreachable, as do other numpy, scipy or scikit-learn versions.
    """
    hashed = {name: None if a is None else sha256_arrays(np.asarray(a)) for name, a in sorted(arrays.items())}
    return sha256_json(
        {
            "kind": kind,
            "arrays": hashed,
            "settings": dict(settings),
            "code": _code_version(code),
            "format": CACHE_FORMAT,
        }
    )


class OutputCache:
    """Logits on disk, one ``.npy`` file per key plus a ``.json`` sidecar.

    The key is a sha256 over the model's files, the dataset's content and
    every setting that changes outputs (device, batch size, torch version);
    an entry is written to a temporary file and renamed into place, and its
    checksum is verified on every read, so a torn or corrupted entry is never
    served.

    Layout: ``<cache_dir>/outputs/<key[:2]>/<key>.npy`` and ``<key>.json``; the
    sidecar holds the checksum, the shape and dtype, the model and dataset
    names, when it was written (``created``); its modification time is when the
    entry was last read. ``<cache_dir>/outputs/.lock`` makes each entry's two
    files change together across processes: writers hold it exclusively while
    they rename both files into place, readers hold it shared while they read
    them (and pruning holds it exclusively), so two runs on one cache never mix
    one writer's data with another's sidecar. Without file locks (no ``flock``)
    the checksum still keeps a mixed entry from being served: it is recomputed.
    """

    def __init__(self, root: Path, *, enabled: bool = True):
        self.folder = Path(root)
        self.root = self.folder / "outputs"
        self.enabled = enabled

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def load(self, key: str) -> tuple[np.ndarray | None, dict[str, Any], str | None]:
        """The cached logits for ``key`` (or None), the entry's sidecar, and a warning if it was unusable."""
        if not self.enabled:
            return None, {}, None
        data, meta = self._paths(key)
        if not (data.is_file() and meta.is_file()):
            return None, {}, None
        try:
            with file_lock(self.lock_path, shared=True, timeout=LOCK_TIMEOUT_S):
                return self._read(data, meta)
        except LockTimeout as e:
            return None, {}, f"{e}; recomputing {data.name} instead of waiting"

    def _read(self, data: Path, meta: Path) -> tuple[np.ndarray | None, dict[str, Any], str | None]:
        try:
            text = meta.read_text()
        except FileNotFoundError:  # removed (pruned) since it was seen: a miss, not a corruption
            return None, {}, None
        try:
            info = json.loads(text)
            if not isinstance(info, dict):
                raise ValueError("the sidecar is not a JSON object")
            if info.get("cache_format") != CACHE_FORMAT or sha256_file(data) != info.get("sha256"):
                raise ValueError("unknown cache format or checksum mismatch")
            logits = np.load(data, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 — any unreadable entry is recomputed, never trusted
            return None, {}, f"cache entry {data} is corrupted ({e}); recomputing"
        with contextlib.suppress(OSError):  # "last used", for `distill-eval cache`; a read-only cache is fine
            os.utime(meta)
        return logits, info, None

    def store(self, key: str, logits: np.ndarray, info: dict[str, Any]) -> None:
        """Write an entry atomically: data, then its sidecar, each by temporary file + rename, under the lock."""
        if not self.enabled:
            return
        data, meta = self._paths(key)
        array = np.ascontiguousarray(logits)
        self.root.mkdir(parents=True, exist_ok=True)  # where the lock file lives, so the first write is locked too
        try:
            with file_lock(self.lock_path, timeout=LOCK_TIMEOUT_S):
                self._write(key, array, info, data, meta)
        except LockTimeout:  # a process hung holding the lock: the checksum still guards readers
            self._write(key, array, info, data, meta)

    def _write(self, key: str, array: np.ndarray, info: dict[str, Any], data: Path, meta: Path) -> None:
        digest = hashlib.sha256()

        def save(f: Any) -> None:  # the checksum of exactly the bytes written, not of whatever is there later
            np.save(_Hashing(f, digest), array, allow_pickle=False)

        atomic_write(data, save)
        sidecar = dict(
            info,
            cache_format=CACHE_FORMAT,
            key=key,
            sha256=digest.hexdigest(),
            shape=list(array.shape),
            dtype=str(array.dtype),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        atomic_write(meta, json.dumps(sidecar, indent=1).encode())

    # -- management (`distill-eval cache`) -------------------------------------

    def scan(self, *, timeout: float | None = LOCK_TIMEOUT_S) -> CacheScan:
        """Every file under the cache's ``outputs`` folder, grouped into entries and verified.

        Holds the lock shared, so no entry is half written while it looks, and a
        temporary file it finds belongs to a writer that is gone.

        Raises
        ------
        LockTimeout
            When a writer held the lock for ``timeout`` seconds.
        """
        if not self.root.is_dir():
            return CacheScan(self.folder, [], locked=False)
        with file_lock(self.lock_path, shared=True, timeout=timeout) as locked:
            return CacheScan(self.folder, list(self._scan(locked)), locked=locked)

    def _scan(self, locked: bool) -> Iterator[CacheEntry]:
        pairs: dict[str, dict[str, Path]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            folder = Path(dirpath)
            for name in sorted(filenames):
                path = folder / name
                if path == self.lock_path:
                    continue
                match = _ENTRY_NAME.fullmatch(name)
                if match and folder.parent == self.root and folder.name == name[:2]:
                    pairs.setdefault(match[1], {})[match[2]] = path
                elif name.endswith(TEMP_SUFFIX):
                    yield _temp_entry(path, locked=locked)
                else:
                    yield CacheEntry("other", (path,), _size(path), note="not a cache file")
        for key, files in sorted(pairs.items()):
            yield _verified(key, files.get("npy"), files.get("json"))

    def usage(self) -> tuple[int, int]:
        """(entries, bytes): what the cache holds by file names and sizes alone, without a checksum or the lock."""
        entries = size = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                size += _size(Path(dirpath, name))
                entries += name.endswith(".npy") and _ENTRY_NAME.fullmatch(name) is not None
        return entries, size

    def remove(self, entries: Iterable[CacheEntry], *, timeout: float | None = LOCK_TIMEOUT_S) -> int:
        """Delete the files of ``entries`` (holding the lock exclusively); returns the bytes freed.

        The lock file itself is never deleted, and emptied ``<key[:2]>`` folders go too.
        """
        freed = 0
        with file_lock(self.lock_path, timeout=timeout):
            folders = set()
            for entry in entries:
                for path in entry.paths:
                    try:
                        size = path.lstat().st_size
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    freed += size
                    folders.add(path.parent)
            for folder in sorted(folders, reverse=True):
                if folder != self.root:
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty
        return freed


class _Hashing:
    """A write-only binary file that hashes what passes through it (np.save writes through it in chunks)."""

    def __init__(self, f: Any, digest: Any):
        self._f = f
        self._digest = digest

    def write(self, data: Any) -> int:
        self._digest.update(data)
        return self._f.write(data)


@dataclass(frozen=True)
class CacheEntry:
    """One entry (or stray file) of an :class:`OutputCache`, as :meth:`OutputCache.scan` found it.

    Attributes
    ----------
    state : str
        ``"ok"`` (checksum verified), ``"corrupt"`` (unreadable, truncated, a
        checksum mismatch, or one of its two files missing), ``"outdated"``
        (another ``cache_format``), ``"orphan"`` (the temporary file of a write
        that never finished), ``"writing"`` (a temporary file whose writer may
        still be at work) or ``"other"`` (a file the cache never writes).
    paths : tuple of Path
        Its files: data and sidecar for an entry, one file otherwise.
    size : int
        Their total size in bytes.
    key : str, optional
        The cache key (entries only).
    info : dict
        The sidecar as written (empty when unreadable).
    note : str
        Why it is corrupt, outdated, orphaned or other; empty for a sound entry.
    created, last_used : float, optional
        Unix times: when it was written (the sidecar's ``created``, else the data
        file's modification time) and when it was last read.
    """

    state: str
    paths: tuple[Path, ...]
    size: int
    key: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    created: float | None = None
    last_used: float | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @property
    def kind(self) -> str:
        """What the entry holds: ``"outputs"`` (a model's logits), ``"leakage"``, ``"discovery"``."""
        value = self.info.get("kind", "outputs")
        return value if isinstance(value, str) else "outputs"

    @property
    def model(self) -> str | None:
        value = self.info.get("model")
        return value if isinstance(value, str) else None

    @property
    def dataset(self) -> str | None:
        value = self.info.get("dataset")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class CacheScan:
    """What :meth:`OutputCache.scan` found: the cache folder, its entries and stray files."""

    folder: Path
    entries: list[CacheEntry]
    #: whether the scan held the cache lock (then a temporary file is surely an orphan)
    locked: bool

    @property
    def size(self) -> int:
        """Bytes in every file found (``os.path.getsize`` summed)."""
        return sum(e.size for e in self.entries)


def format_size(n: float) -> str:
    """Bytes in decimal units, as ``ls --si`` and disk vendors write them: ``"22.2 kB"`` (1 kB = 1000 bytes)."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except FileNotFoundError:
        return None


def _temp_entry(path: Path, *, locked: bool) -> CacheEntry:
    pid = temp_writer_pid(path.name)
    mtime = _mtime(path)
    writer = f"pid {pid}" if pid is not None else "an unknown process"
    if locked:
        state, note = "orphan", f"an unfinished write by {writer}"
    elif mtime is not None and time.time() - mtime > _TEMP_ORPHAN_AGE_S:
        state, note = "orphan", f"an unfinished write by {writer}, untouched for over an hour"
    elif pid is not None and os.name == "posix" and not _alive(pid):
        state, note = "orphan", f"an unfinished write by {writer}, which is no longer running"
    else:
        state, note = "writing", f"being written by {writer}, perhaps"
    return CacheEntry(state, (path,), _size(path), note=note, created=mtime, last_used=mtime)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _verified(key: str, data: Path | None, meta: Path | None) -> CacheEntry:
    """Check an entry as :meth:`OutputCache.load` would, without loading the array."""
    paths = tuple(p for p in (data, meta) if p is not None)
    size = sum(_size(p) for p in paths)
    last_used = _mtime(meta)
    info: dict[str, Any] = {}
    if meta is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(meta.read_text())
            info = loaded if isinstance(loaded, dict) else {}

    def entry(state: str, note: str = "", **more: Any) -> CacheEntry:
        return CacheEntry(
            state, paths, size, key=key, info=info, note=note, created=_created(info, data), last_used=last_used, **more
        )

    if meta is None:
        return entry("corrupt", "no sidecar (.json): an interrupted write")
    if not info:
        return entry("corrupt", "the sidecar (.json) is not readable JSON")
    if data is None:
        return entry("corrupt", "the data file (.npy) is missing")
    if info.get("cache_format") != CACHE_FORMAT:
        return entry("outdated", f"cache format {info.get('cache_format')!r}; this version reads {CACHE_FORMAT}")
    try:
        if sha256_file(data) != info.get("sha256"):
            return entry("corrupt", "checksum mismatch: truncated or changed since it was written")
        shape, dtype = _npy_header(data)
    except (OSError, ValueError) as e:
        return entry("corrupt", f"unreadable: {e}")
    return entry("ok", shape=shape, dtype=dtype)


def _npy_header(path: Path) -> tuple[tuple[int, ...], str]:
    with open(path, "rb") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(int(n) for n in shape), str(dtype)


def _created(info: Mapping[str, Any], data: Path | None) -> float | None:
    text = info.get("created")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    return _mtime(data)
