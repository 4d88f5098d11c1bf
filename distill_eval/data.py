"""Datasets: ``.npz``, ``.pt``, ``.csv`` files and the built-in scikit-learn sets.

Every loader returns a :class:`Dataset` with features ``x``, optional integer
labels ``y``, unique string ``ids`` and ``meta`` columns, plus a sha256 that
identifies the content (the file's bytes, or the arrays of a built-in set).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill_eval._hashing import sha256_arrays, sha256_file
from distill_eval.config import DatasetSpec
from distill_eval.errors import DataError, DistillWarning

__all__ = ["Dataset", "load_builtin", "load_dataset", "require_finite_inputs"]

#: CSV column names that usually hold the labels; one of them left among the features gets a warning
LABEL_LIKE = ("label", "labels", "target", "y", "class")

#: how many offending ids an error lists before it gives the count
SHOWN_IDS = 5


@dataclass(frozen=True, eq=False)
class Dataset:
    """Evaluation or training data.

    Attributes
    ----------
    name : str
        The dataset's name in the project config.
    x : ndarray of shape (n_samples, ...)
        Model inputs, float32.
    y : ndarray of shape (n_samples,) or None
        Integer class labels, when known.
    ids : ndarray of shape (n_samples,)
        Unique string ids.
    meta : mapping of str to ndarray of shape (n_samples,)
        Extra per-example columns (``meta_<column>`` in files), usable in slices.
    source : str
        The file path or built-in source it came from.
    sha256 : str
        Content hash, part of every cache key.
    """

    name: str
    x: np.ndarray
    y: np.ndarray | None
    ids: np.ndarray
    meta: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    sha256: str = ""

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def describe(self) -> dict[str, object]:
        """Provenance for results.json: path or source, sha256 and size."""
        key = "source" if self.source.startswith("sklearn:") else "path"
        return {key: self.source, "sha256": self.sha256, "n": self.n}


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load the dataset a spec describes and validate it.

    Raises
    ------
    DataError
        When the file is missing, unreadable or inconsistent (lengths differ,
        labels not integers >= 0, duplicate ids, no examples).
    """
    if spec.source is not None:
        return load_builtin(spec.source, split=spec.split or "test", name=spec.name)
    if spec.path is None:
        raise DataError(f"dataset '{spec.name}' has neither 'path' nor 'source'")
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"dataset '{spec.name}': file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".npz": _read_npz, ".pt": _read_pt, ".pth": _read_pt, ".csv": _read_csv}
    if suffix not in readers:
        raise DataError(f"dataset '{spec.name}': {path}: unsupported format {suffix!r}; expected .npz, .pt or .csv")
    notes: list[str] = []
    try:
        x, y, ids, meta = readers[suffix](path, spec, notes)
    except DataError:
        raise
    except Exception as e:  # a corrupt file: say which, without a traceback
        raise DataError(f"dataset '{spec.name}': cannot read {path}: {e}") from e
    for note in notes:  # outside the try: under -W error a warning is not a corrupt file
        warnings.warn(DistillWarning(note), stacklevel=2)
    return _validated(spec.name, str(path), sha256_file(path), x, y, ids, meta)


def load_builtin(source: str, *, split: str = "test", name: str | None = None) -> Dataset:
    """Load a scikit-learn dataset with its documented deterministic split.

    Features are float32 (digits scaled to [0, 1] by /16); the split is a
    stratified 70/30 train/test split with seed 0 (``split="all"`` keeps every
    row); ids are ``"<source>-<row>"`` with the row in the original data.
    """
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    loaders = {
        "sklearn:digits": sklearn.datasets.load_digits,
        "sklearn:iris": sklearn.datasets.load_iris,
        "sklearn:wine": sklearn.datasets.load_wine,
        "sklearn:breast_cancer": sklearn.datasets.load_breast_cancer,
    }
    if source not in loaders:
        raise DataError(f"unknown built-in source {source!r}; expected one of {sorted(loaders)}")
    bunch = loaders[source]()
    x = np.asarray(bunch.data, dtype=np.float32)
    if source == "sklearn:digits":
        x = x / np.float32(16.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    rows = np.arange(len(y))
    if split != "all":
        train_rows, test_rows = train_test_split(rows, test_size=0.3, random_state=0, stratify=y)
        if split == "train":
            rows = train_rows
        elif split == "test":
            rows = test_rows
        else:
            raise DataError(f"built-in split must be 'train', 'test' or 'all', got {split!r}")
    x, y = x[rows], y[rows]
    ids = np.array([f"{source}-{r}" for r in rows])
    sha256 = sha256_arrays(x, y, rows, salt=f"{source}:{split}")
    return _validated(name or source, source, sha256, x, y, ids, {})


# -- readers ---------------------------------------------------------------


def _read_npz(path: Path, spec: DatasetSpec, notes: list[str]):
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        if "x" not in keys:
            raise DataError(f"dataset '{spec.name}': {path} has no array 'x' (found: {sorted(keys)})")
        x = npz["x"]
        y = npz["y"] if "y" in keys else None
        ids = npz["ids"] if "ids" in keys else None
        meta = {k[len("meta_") :]: npz[k] for k in sorted(keys) if k.startswith("meta_")}
    return x, y, ids, meta


def _read_pt(path: Path, spec: DatasetSpec, notes: list[str]):
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or "x" not in obj:
        raise DataError(f"dataset '{spec.name}': {path} must hold a dict with at least the key 'x'")

    def arr(v):
        if isinstance(v, torch.Tensor):
            # saved straight from training: may require grad, or be bfloat16 (which numpy lacks)
            v = v.detach().cpu()
            return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        return np.asarray(v)

    x = arr(obj["x"])
    y = arr(obj["y"]) if "y" in obj else None
    ids = arr(obj["ids"]) if "ids" in obj else None
    meta = {k[len("meta_") :]: arr(v) for k, v in obj.items() if k.startswith("meta_")}
    return x, y, ids, meta


def _read_csv(path: Path, spec: DatasetSpec, notes: list[str]):
    # utf-8-sig: spreadsheet exports start with a byte order mark that would rename the first column
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if row]  # blank lines are not examples
    if not rows:
        raise DataError(f"dataset '{spec.name}': {path} is empty")
    header, body = rows[0], rows[1:]
    columns = {name: [r[i] if i < len(r) else "" for r in body] for i, name in enumerate(header)}
    y = None
    if spec.label_column not in columns:
        likely = [c for c in header if c.strip().lower() in LABEL_LIKE and c != spec.id_column]
        if likely:
            notes.append(
                f"dataset '{spec.name}': {path} has no column '{spec.label_column}' (label_column), so column "
                f"'{likely[0]}' is read as a feature and the dataset has no labels; if '{likely[0]}' holds the "
                f'labels, set label_column = "{likely[0]}" in [tool.distill_eval.datasets.{spec.name}]'
            )
    if spec.label_column in columns:
        labels = columns.pop(spec.label_column)
        bad = next((v for v in labels if not _is_number(v)), None)
        if bad is not None:
            raise DataError(
                f"dataset '{spec.name}': {path}: label column '{spec.label_column}' must hold integer class "
                f"indices, found {bad!r}"
            )
        y = np.asarray([float(v) for v in labels])
        if np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
    ids = np.asarray(columns.pop(spec.id_column)) if spec.id_column in columns else None
    meta = {k[len("meta_") :]: _column(columns.pop(k)) for k in list(columns) if k.startswith("meta_")}
    features = list(columns)
    if not features:
        raise DataError(f"dataset '{spec.name}': {path} has no feature columns besides label, id and meta_*")
    try:
        x = np.array([[float(v) for v in columns[c]] for c in features], dtype=np.float32).T
    except ValueError:
        bad = next(c for c in features if not all(_is_number(v) for v in columns[c]))
        raise DataError(
            f"dataset '{spec.name}': {path}: feature column '{bad}' is not numeric; name the label column "
            f"with 'label_column' (now {spec.label_column!r}), ids with 'id_column' (now {spec.id_column!r}) "
            f"and prefix other columns with 'meta_'"
        ) from None
    return x.reshape(len(body), len(features)), y, ids, meta


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _column(values: list[str]) -> np.ndarray:
    """A CSV column as numbers when every value is numeric, else as strings."""
    if values and all(_is_number(v) for v in values):
        return np.asarray([float(v) for v in values])
    return np.asarray(values)


# -- validation ------------------------------------------------------------


def _validated(name, source, sha256, x, y, ids, meta) -> Dataset:
    where = f"dataset '{name}' ({source})"
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{where} has no examples")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where}: 'x' must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    n = x.shape[0]
    if y is not None:
        y = np.asarray(y)
        if y.shape != (n,):
            raise DataError(f"{where}: 'x' has {n} rows but 'y' has shape {y.shape}; expected ({n},)")
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(np.isfinite(y)) or not np.all(np.mod(y, 1) == 0):
                raise DataError(f"{where}: labels 'y' must be integer class indices, got non-integer values")
        elif not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: labels 'y' must be integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
        if y.min() < 0:
            raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    if ids is None:
        ids = np.array([str(i) for i in range(n)])
    else:
        ids = np.asarray(ids).astype(str)
        if ids.shape != (n,):
            raise DataError(f"{where}: 'x' has {n} rows but 'ids' has shape {ids.shape}")
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != n:
            dups = uniq[counts > 1][:3]
            raise DataError(f"{where}: ids must be unique; repeated: {', '.join(map(repr, dups.tolist()))}")
    clean_meta = {}
    for key, column in meta.items():
        column = np.asarray(column)
        if column.shape != (n,):
            raise DataError(f"{where}: meta column '{key}' has shape {column.shape}; expected ({n},)")
        clean_meta[key] = column
    return Dataset(name=name, x=x, y=y, ids=ids, meta=clean_meta, source=source, sha256=sha256)


def require_finite_inputs(data: Dataset, *, purpose: str) -> None:
    """Raise a DataError when some inputs ``x`` are NaN or infinite, naming the file and the rows' ids.

    Parameters
    ----------
    data : Dataset
        The dataset whose ``x`` is checked.
    purpose : str
        What needs finite inputs, for the message (e.g. ``"model 'student'"``).

    Raises
    ------
    DataError
        Naming the dataset and its file, the field ``'x'``, the first few
        offending ids and how many examples are affected.
    """
    x = np.asarray(data.x)
    if x.ndim == 0 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    shown = ", ".join(repr(str(i)) for i in data.ids[rows[:SHOWN_IDS]])
    more = f" and {len(rows) - SHOWN_IDS} more" if len(rows) > SHOWN_IDS else ""
    where = f" ({data.source})" if data.source else ""
    raise DataError(
        f"dataset '{data.name}'{where}: field 'x' holds NaN or infinite values in {len(rows)} of {data.n} "
        f"example(s), ids {shown}{more}; {purpose} needs finite inputs: fix or drop those rows"
    )


def ids_file_mask(path: Path, dataset: Dataset, *, what: str) -> np.ndarray:
    """A boolean mask of the dataset's examples whose ids a file lists (one id a line, ``#`` comments).

    Raises
    ------
    DataError
        When the file is missing or names ids the dataset does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: ids file not found: {path}")
    lines = path.read_text().splitlines()
    wanted = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
    mask = np.isin(dataset.ids, np.asarray(sorted(wanted), dtype=str))
    unknown = sorted(wanted - set(dataset.ids[mask].tolist()))
    if unknown:
        raise DataError(
            f"{what}: {path} names {len(unknown)} id(s) that are not in dataset '{dataset.name}', e.g. "
            f"{', '.join(map(repr, unknown[:3]))}"
        )
    return mask
