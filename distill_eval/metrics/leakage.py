"""Train/test leakage: evaluation examples that also occur in the training data.

Inputs are compared as flattened float32 rows. An **exact duplicate** is an
evaluation row whose bytes equal those of some training row (same trailing
shape, same float32 bit pattern: ``0.0`` and ``-0.0`` differ, a NaN equals a
NaN with the same payload). A **near duplicate** is an evaluation row that is
not an exact duplicate but whose nearest training row, by Euclidean distance
(:class:`sklearn.neighbors.NearestNeighbors`), lies within a threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Duplicates", "default_near_distance", "exact_matches", "find_duplicates"]

#: rows per block when distances are recomputed in float64
_BLOCK = 65536

#: evaluation rows per nearest-neighbour query (progress is reported between queries)
_QUERY_ROWS = 8192


@dataclass(frozen=True)
class Duplicates:
    """Which evaluation examples occur in the training data, and where.

    Attributes
    ----------
    train_index : ndarray of shape (n_eval,)
        For each evaluation row, the training row it duplicates (exactly, or
        nearly when ``near[i]``), or -1.
    distance : ndarray of shape (n_eval,)
        Euclidean distance to that training row (0.0 for exact duplicates),
        NaN where ``train_index`` is -1.
    exact : ndarray of shape (n_eval,)
        Boolean mask of exact duplicates.
    near : ndarray of shape (n_eval,)
        Boolean mask of near duplicates (never overlaps ``exact``; all false
        when near-duplicates were not searched).
    near_distance : float or None
        The threshold used, or None when near-duplicates were not searched.
    """

    train_index: np.ndarray
    distance: np.ndarray
    exact: np.ndarray
    near: np.ndarray
    near_distance: float | None

    @property
    def n_exact(self) -> int:
        return int(self.exact.sum())

    @property
    def n_near(self) -> int:
        return int(self.near.sum())

    @property
    def leaked(self) -> np.ndarray:
        """Boolean mask of evaluation rows that are exact or near duplicates."""
        return self.exact | self.near


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array of shape (n, n_features), checked."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{name} must have a first axis of examples, got a scalar")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], int(np.prod(x.shape[1:])))
    if flat.shape[1] == 0:
        raise ValueError(f"{name} has no features: shape {x.shape}")
    return flat


def _pair(x_eval: np.ndarray, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x_eval, x_train = np.asarray(x_eval), np.asarray(x_train)
    if x_eval.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"x_eval and x_train must have the same shape per example, got x_eval of shape {x_eval.shape} "
            f"and x_train of shape {x_train.shape}"
        )
    e, t = _rows(x_eval, "x_eval"), _rows(x_train, "x_train")
    if t.shape[0] == 0:
        raise ValueError(f"x_train has no rows: shape {x_train.shape}")
    return e, t


def _check_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} row(s) with NaN or infinite values (first: row {int(np.argmax(bad))}); "
            "near-duplicate search needs finite inputs"
        )


def _keys(flat: np.ndarray) -> np.ndarray:
    """One opaque void scalar per row: its raw bytes, compared with memcmp."""
    return flat.view(np.dtype((np.void, flat.shape[1] * flat.itemsize))).ravel()


def _exact(e: np.ndarray, t: np.ndarray) -> np.ndarray:
    train_keys, eval_keys = _keys(t), _keys(e)
    distinct, first = np.unique(train_keys, return_index=True)  # first occurrence, in training order
    if len(eval_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(distinct, eval_keys), len(distinct) - 1)
    hit = distinct[pos] == eval_keys
    return np.where(hit, first[pos], -1).astype(np.int64)


def exact_matches(x_eval: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """For each evaluation row, a training row with exactly the same bytes.

    Rows are flattened and cast to float32, then compared byte for byte
    (sorted void views: exact, no hashing collisions, about a second for a
    million 64-feature rows).

    Parameters
    ----------
    x_eval : array of shape (n_eval, ...)
        Evaluation inputs.
    x_train : array of shape (n_train, ...)
        Training inputs, with the same shape per example.

    Returns
    -------
    ndarray of shape (n_eval,), int64
        Index of the first identical training row, or -1 where there is none.

    Examples
    --------
    >>> exact_matches([[0.0, 1.0], [2.0, 3.0]], [[2.0, 3.0], [0.0, 1.5], [2.0, 3.0]])
    array([-1,  0])
    """
    e, t = _pair(x_eval, x_train)
    return _exact(e, t)


def _distances(a: np.ndarray, b: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Euclidean distance in float64 from each row of ``a`` to row ``index[i]`` of ``b``."""
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), _BLOCK):
        stop = start + _BLOCK
        diff = a[start:stop].astype(np.float64) - b[index[start:stop]].astype(np.float64)
        out[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _index(t: np.ndarray):
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=1).fit(t)


def _default_near_distance(t: np.ndarray, index, *, max_rows: int, seed: int, factor: float) -> float:
    n = t.shape[0]
    if n < 2:
        raise ValueError(f"x_train needs at least 2 rows for a default near_distance, got {n}")
    rows = np.arange(n)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    _, idx = index.kneighbors(t[rows], n_neighbors=2)
    # the row itself is one of its two nearest (distance 0) unless exact copies tie with it; either way
    # the neighbour that is not the row itself is a nearest *other* row
    other = np.where(idx[:, 0] == rows, idx[:, 1], idx[:, 0])
    return float(factor * np.median(_distances(t[rows], t, other)))


def default_near_distance(x_train: np.ndarray, *, max_rows: int = 2000, seed: int = 0, factor: float = 0.1) -> float:
    """The default near-duplicate threshold: a tenth of the typical spacing of the training data.

    ``factor`` × the median, over training rows, of the Euclidean distance from
    the row to its nearest *other* training row (an exact copy elsewhere in
    the training data counts, at distance 0). When there are more than
    ``max_rows`` training rows, the median is taken over the sample
    ``np.sort(np.random.default_rng(seed).choice(n_train, max_rows, replace=False))``;
    the sampled rows' neighbours are still searched among all training rows.

    Parameters
    ----------
    x_train : array of shape (n_train, ...)
        Training inputs (flattened to float32 rows); at least 2 rows, finite.
    max_rows : int, default=2000
        Largest number of training rows whose nearest-neighbour distance is computed.
    seed : int, default=0
        Seed of the row sample.
    factor : float, default=0.1
        Multiplier of the median distance.

    Returns
    -------
    float
        The threshold; 0.0 when most training rows have an exact copy.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    t = _rows(x_train, "x_train")
    _check_finite(t, "x_train")
    return _default_near_distance(t, _index(t), max_rows=max_rows, seed=seed, factor=factor)


def find_duplicates(
    x_eval: np.ndarray,
    x_train: np.ndarray,
    *,
    near: bool = False,
    near_distance: float | None = None,
    max_rows: int = 2000,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Duplicates:
    """Find the evaluation rows that are exact (and optionally near) duplicates of training rows.

    Parameters
    ----------
    x_eval : array of shape (n_eval, ...)
        Evaluation inputs.
    x_train : array of shape (n_train, ...)
        Training inputs, with the same shape per example; at least one row.
    near : bool, default=False
        Also search near-duplicates: rows that are not exact duplicates but
        whose nearest training row (Euclidean distance between flattened
        float32 rows, :class:`sklearn.neighbors.NearestNeighbors`) is at
        distance ``<= near_distance``. Needs finite inputs.
    near_distance : float, optional
        The threshold (> 0). Default: :func:`default_near_distance` of
        ``x_train`` with ``max_rows`` and ``seed``.
    max_rows, seed : int
        Passed to :func:`default_near_distance`.
    progress : callable, optional
        ``(done, total)``: called after each block of the near-duplicate
        search, with the evaluation rows searched so far and in all.

    Returns
    -------
    Duplicates
        Per-row matches and masks; distances to the matched neighbour are
        recomputed in float64.

    Examples
    --------
    >>> d = find_duplicates([[0.0, 0.0], [1.0, 1.001], [5.0, 5.0]], [[0.0, 0.0], [1.0, 1.0]],
    ...                     near=True, near_distance=0.01)
    >>> d.exact.tolist(), d.near.tolist(), d.train_index.tolist()
    ([True, False, False], [False, True, False], [0, 1, -1])
    """
    if near_distance is not None and not (np.isfinite(near_distance) and near_distance > 0):
        raise ValueError(f"near_distance must be a finite number > 0, got {near_distance}")
    e, t = _pair(x_eval, x_train)
    train_index = _exact(e, t)
    exact = train_index >= 0
    distance = np.where(exact, 0.0, np.nan)
    near_mask = np.zeros(len(e), dtype=bool)
    threshold = None
    if near:
        _check_finite(e, "x_eval")
        _check_finite(t, "x_train")
        index = _index(t)
        if near_distance is None:
            threshold = _default_near_distance(t, index, max_rows=max_rows, seed=seed, factor=0.1)
        else:
            threshold = float(near_distance)
        rest = np.flatnonzero(~exact)
        if len(rest):
            nearest = np.empty(len(rest), dtype=np.int64)
            for start in range(0, len(rest), _QUERY_ROWS):  # row by row the same answer; blocks say how far
                block = rest[start : start + _QUERY_ROWS]
                nearest[start : start + len(block)] = index.kneighbors(e[block], n_neighbors=1)[1][:, 0]
                if progress is not None:
                    progress(start + len(block), len(rest))
            d = _distances(e[rest], t, nearest)
            close = d <= threshold
            near_mask[rest[close]] = True
            train_index[rest[close]] = nearest[close]
            distance[rest[close]] = d[close]
    return Duplicates(train_index=train_index, distance=distance, exact=exact, near=near_mask, near_distance=threshold)
