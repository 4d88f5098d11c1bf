"""Model outputs: computed once per (model, dataset), cached on disk by content.

:class:`ModelOutputs` is the one interface through which checks read what a
model produced, so a future output type (token-level logits too large to hold
whole) changes this module, not every check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval._hashing import sha256_file
from distill_eval._io import atomic_write
from distill_eval.errors import ModelError

__all__ = ["ModelOutputs", "OutputCache", "compute_logits"]

#: bump when the cached representation changes, so old entries are never read
CACHE_FORMAT = 1


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
        """Softmax probabilities, float64, shape (n_samples, n_classes)."""
        from distill_eval.metrics import softmax

        return softmax(self.logits)

    @cached_property
    def preds(self) -> np.ndarray:
        """Top-1 predictions (first index wins ties), shape (n_samples,)."""
        return np.argmax(self.logits, axis=1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """Top-1 probability, shape (n_samples,)."""
        return self.probs.max(axis=1)


def compute_logits(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    batch_size: int,
    model: str,
    dataset: str,
) -> np.ndarray:
    """Run ``predict`` over ``x`` in batches and validate the result.

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
    assert out is not None  # datasets are never empty (checked when loaded)
    bad = ~np.isfinite(out)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ModelError(
            f"model '{model}' produced {int(bad.sum())} non-finite logits (NaN or Inf) on dataset '{dataset}', "
            f"in {len(rows)} of {n} examples (first rows: {rows[:5].tolist()})"
        )
    return out


class OutputCache:
    """Logits on disk, one ``.npy`` file per key plus a ``.json`` sidecar.

    The key is a sha256 over the model's files, the dataset's content and
    every setting that changes outputs (device, batch size, torch version);
    an entry is written to a temporary file and renamed into place, and its
    checksum is verified on every read, so a torn or corrupted entry is never
    served.
    """

    def __init__(self, root: Path, *, enabled: bool = True):
        self.root = Path(root) / "outputs"
        self.enabled = enabled

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
            info = json.loads(meta.read_text())
            if info.get("cache_format") != CACHE_FORMAT or sha256_file(data) != info.get("sha256"):
                raise ValueError("unknown cache format or checksum mismatch")
            return np.load(data, allow_pickle=False), info, None
        except Exception as e:  # noqa: BLE001 — any unreadable entry is recomputed, never trusted
            return None, {}, f"cache entry {data} is corrupted ({e}); recomputing"

    def store(self, key: str, logits: np.ndarray, info: dict[str, Any]) -> None:
        """Write an entry atomically (temporary file + rename; data before its sidecar)."""
        if not self.enabled:
            return
        data, meta = self._paths(key)
        atomic_write(data, lambda f: np.save(f, np.ascontiguousarray(logits), allow_pickle=False))
        sidecar = dict(
            info,
            cache_format=CACHE_FORMAT,
            sha256=sha256_file(data),
            shape=list(logits.shape),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        atomic_write(meta, json.dumps(sidecar, indent=1).encode())
