"""The streaming bootstrap: every statistic of a check from weighted sums over examples.

Almost every metric a check bounds is a function of a few sums over examples: an accuracy is
``sum(hit) / sum(1)``, an ECE is built from per-bin sums of ``hit - confidence``, a slice's
retention from per-slice sums of two hit indicators. A resample only changes the weight of
each example, so a resampled metric is the same function of *weighted* sums. This module
declares those sums once (:class:`WeightedSums`) and evaluates every resample of every
statistic in one pass over the examples (:func:`bootstrap_sums`), without ever holding a
``resamples x examples`` weight matrix:

- resampling weights are Poisson(1), independent per example and resample (the Poisson
  bootstrap: Hanley & MacGibbon 2006; Chamandy et al. 2012), and each is a hash of (seed,
  example index, resample index) (:func:`poisson_weights`), so they are generated block by
  block of examples, in cache, and a statistic of some examples (one slice's) gets the same
  resamples whatever else the check declares;
- examples are sorted once by the combination of every grouping the statistics use (bins,
  classes, slice memberships), so a block of examples is a few runs of constant groups, and the
  sums of all columns over a run are one small matrix product;
- the point estimate and the jackknife (for BCa) are computed exactly from per-group totals.

A pass costs about 2.3 ns per example and resample to draw the weights (on one core; two
other threads draw while one sums) plus well under a nanosecond per example, resample and
column to sum them: about 2-4 s for 10^6 examples x 1000 resamples on two cores
(benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special as _special
from threadpoolctl import threadpool_limits

from distill_eval.metrics.stats import BootstrapInterval, _check_bootstrap_args, _intervals, weighted_sum

__all__ = ["SumStatistic", "Sums", "WeightedSums", "bootstrap_sums"]

_JACKKNIFE_BLOCKS = 100
_BLOCK_BYTES = 8 * 2**20  # one block of float32 weights, resamples x examples, stays in cache
# blocks drawn ahead, each by its own thread. Drawing a block costs about twice summing it, so two
# drawers keep the summing thread busy; on two cores it mostly waits and shares one with them
# (10^6 x 1000 weights: 2.4 s with one drawer, 1.8 s with two, on the 2-core VM).
_AHEAD = 2


def _poisson_cuts() -> NDArray[np.uint16]:
    """16-bit thresholds: a uniform 16-bit ``u`` maps to the count ``sum(u >= cuts)``.

    Each Poisson(1) probability is represented to within 2**-17; counts above 8 (probability
    1e-6) are folded into 8.
    """
    cdf = _special.pdtr(np.arange(8), 1.0)  # the Poisson(1) CDF
    return np.round(cdf * 65536).astype(np.int64).clip(max=65535).astype(np.uint16)


_CUTS = _poisson_cuts()


_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2**64 / golden ratio, odd)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(seed: int, counters: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64's output for each counter (Steele, Lea & Flood 2014), in place on ``counters``.

    The generator's ``c``-th output is a bijective mix of ``seed + (c + 1) * gamma``, so every
    output is a pure function of ``(seed, c)``: a counter-based generator, vectorised.
    """
    z = counters
    z += np.uint64(1)
    z *= _GAMMA
    z += np.uint64(seed)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


#: resamples that share one row of hashes: resample ``64 c + 16 lane + q`` reads bits
#: ``16 lane .. 16 lane + 15`` of hash row ``16 c + q``, so each lane fills 16 consecutive rows
_LANE_ROWS = 16
_CHUNK = 4 * _LANE_ROWS


def poisson_weights(
    seed: int,
    examples: ArrayLike,
    n_resamples: int,
    *,
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Poisson(1) resampling weights of ``examples`` in resamples ``0 .. n_resamples - 1``, float32.

    The weight of example ``i`` in resample ``r`` depends only on ``(seed, i, r)``: it is read
    from 16 bits of the SplitMix64 hash of ``seed`` and the counter ``i * 2**32 + h``, where
    hash row ``h = 16 (r // 64) + r % 16`` serves four resamples (one per 16-bit lane). Which
    other examples are drawn, in which order or block, and how many resamples there are change
    nothing, so a statistic of some examples (one slice's) has the same resamples whatever is
    declared beside it.

    Parameters
    ----------
    seed : int
        In ``[0, 2**64)``.
    examples : array-like of int of shape (m,)
        Example indices, in ``[0, 2**32)``.
    n_resamples : int
        Rows of the result.
    out : ndarray of float32 of shape (n_resamples, m), optional
        Filled and returned if given: reusing one buffer is three times faster than touching
        fresh memory for every block.

    Returns
    -------
    ndarray of float32 of shape (n_resamples, m)
        Counts 0, 1, ..., 8; each Poisson(1) probability is represented to within 2**-17 and
        counts above 8 (probability 1e-6) are folded into 8.

    Examples
    --------
    >>> w = poisson_weights(7, [3, 10, 11], 5)
    >>> bool(np.array_equal(poisson_weights(7, [11, 3], 5), w[:, [2, 0]]))
    True
    """
    shifted = np.asarray(examples, dtype=np.uint64) << np.uint64(32)
    m = shifted.size
    if out is None:
        out = np.empty((n_resamples, m), dtype=np.float32)
    chunks = -(-n_resamples // _CHUNK)
    step = max(1, 2**17 // max(_LANE_ROWS * m, 1))  # chunks at a time: the hashes stay in cache
    for c0 in range(0, chunks, step):
        c1 = min(chunks, c0 + step)
        rows = np.arange(c0 * _LANE_ROWS, c1 * _LANE_ROWS, dtype=np.uint64)
        z = _splitmix64(seed, shifted[None, :] + rows[:, None]).reshape(c1 - c0, _LANE_ROWS, m)
        r0, r1 = c0 * _CHUNK, c1 * _CHUNK
        target = out[r0:r1] if r1 <= n_resamples else np.empty((r1 - r0, m), dtype=np.float32)
        lanes = target.reshape(c1 - c0, 4, _LANE_ROWS, m)
        for lane in range(4):
            u = (z >> np.uint64(16 * lane)).astype(np.uint16)  # the cast keeps the low 16 bits
            total = np.greater_equal(u, _CUTS[0]).view(np.uint8)
            for cut in _CUTS[1:]:
                total += np.greater_equal(u, cut).view(np.uint8)
            lanes[:, lane] = total
        if r1 > n_resamples:
            out[r0:] = target[: n_resamples - r0]
    return out


@dataclass(frozen=True)
class _Handle:
    """What :meth:`WeightedSums.column` and :meth:`WeightedSums.grouped` return."""

    index: int
    grouped: bool


class WeightedSums:
    """The per-example columns whose weighted sums a family of statistics reads.

    Parameters
    ----------
    n : int
        Number of examples.

    Examples
    --------
    >>> sums = WeightedSums(4)
    >>> total, hits = sums.column(), sums.column([1, 0, 1, 1])
    >>> per_bin = sums.grouped([0, 0, 1, 1], 2, [0.5, -0.5, 0.25, 0.25])
    >>> s = sums.totals()
    >>> float(s[hits][0] / s[total][0]), s[per_bin][0].tolist()
    (0.75, [0.0, 0.5])
    """

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self.n = int(n)
        self._columns: list[NDArray[np.float64]] = []  # distinct value columns
        self._dense: list[int] = []  # value column of each plain sum
        self._families: list[tuple[NDArray[np.intp], int, int]] = []  # (groups, n_groups, value column)
        # what each array given was turned into, by identity: the same values (the total weight)
        # or groups (one slice's mask) become one column or one sort key however often declared
        self._value_ids: dict[int, tuple[object, int]] = {}
        self._group_ids: dict[int, tuple[object, NDArray[np.intp]]] = {}

    @staticmethod
    def _once(seen: dict[int, tuple[object, Any]], given: object, convert: Callable[[], Any]) -> Any:
        known = seen.get(id(given))
        if known is None or known[0] is not given:  # holding `given` keeps its id from being reused
            known = seen[id(given)] = (given, convert())
        return known[1]

    def _value_column(self, values: ArrayLike | None) -> int:
        def add() -> int:
            column = np.ones(self.n) if values is None else np.asarray(values, dtype=np.float64)
            if column.shape != (self.n,):
                raise ValueError(f"values must have shape ({self.n},), got {column.shape}")
            self._columns.append(column)
            return len(self._columns) - 1

        return self._once(self._value_ids, values, add)

    def column(self, values: ArrayLike | None = None) -> _Handle:
        """Declare ``sum_i w_i * values_i`` (``values=None``: the total weight); sums are shape (k,)."""
        self._dense.append(self._value_column(values))
        return _Handle(len(self._dense) - 1, grouped=False)

    def grouped(self, groups: ArrayLike, n_groups: int, values: ArrayLike | None = None) -> _Handle:
        """Declare one sum per group, ``sum_{i: groups_i = g} w_i * values_i``; sums are shape (k, n_groups)."""
        g = np.asarray(groups)
        if g.shape != (self.n,):
            raise ValueError(f"groups must have shape ({self.n},), got {g.shape}")
        if g.dtype.kind not in "iub":
            raise ValueError(f"groups must be integers, got dtype {g.dtype}")
        if n_groups < 1 or g.min() < 0 or g.max() >= n_groups:
            raise ValueError(f"groups must lie in [0, n_groups) = [0, {n_groups}), got [{g.min()}, {g.max()}]")
        sort_key = self._once(self._group_ids, groups, lambda: g.astype(np.intp))
        self._families.append((sort_key, int(n_groups), self._value_column(values)))
        return _Handle(len(self._families) - 1, grouped=True)

    def totals(self) -> Sums:
        """The unweighted sums (every weight 1): what the point estimate reads, in float64."""
        dense = np.array([[self._columns[c].sum() for c in self._dense]]).reshape(1, len(self._dense))
        families = [np.bincount(g, weights=self._columns[c], minlength=k)[None, :] for g, k, c in self._families]
        return Sums(dense, families)

    def weighted(self, weights: ArrayLike) -> Sums:
        """The sums under explicit weight rows of shape (k, n), e.g. one resample's counts.

        The plain reference for what a resampling pass computes (one ``weighted_sum`` per sum).
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != self.n:
            raise ValueError(f"weights must have shape (k, {self.n}), got {w.shape}")
        dense = np.zeros((w.shape[0], len(self._dense)))
        for j, c in enumerate(self._dense):
            dense[:, j] = weighted_sum(w, self._columns[c])
        families = [weighted_sum(w, self._columns[c], groups=g, n_groups=k) for g, k, c in self._families]
        return Sums(dense, families)

    def blocks(self, block: NDArray[np.intp], n_blocks: int) -> Sums:
        """Sums over each block of examples (``block[i]`` in ``[0, n_blocks)``): one row per block."""
        dense = np.zeros((n_blocks, len(self._dense)))
        for j, c in enumerate(self._dense):
            dense[:, j] = np.bincount(block, weights=self._columns[c], minlength=n_blocks)
        families = [
            np.bincount(block * k + g, weights=self._columns[c], minlength=n_blocks * k).reshape(n_blocks, k)
            for g, k, c in self._families
        ]
        return Sums(dense, families)

    def resample(self, rng: np.random.Generator, n_resamples: int) -> Sums:
        """The weighted sums of ``n_resamples`` Poisson-bootstrap resamples, in one streaming pass."""
        n = self.n
        if self._families:
            # sort by the combination of every grouping: a block is then a few runs of constant groups
            key = np.zeros(n, dtype=np.int64)
            radix = 1
            distinct = {id(g): (g, k) for g, k, _ in self._families}.values()  # families often share groups
            for g, k in distinct:
                if radix * k >= 2**62:  # too many combinations for one integer: rank what is there
                    key = np.unique(key, return_inverse=True)[1].astype(np.int64)
                    radix = int(key.max()) + 1
                key += g.astype(np.int64) * radix
                radix *= k
            order = np.argsort(key, kind="stable")
            sorted_key = key[order]
            runs = np.concatenate([[0], np.flatnonzero(np.diff(sorted_key)) + 1, [n]])
            run_groups = [g[order[runs[:-1]]] for g, _, _ in self._families]
        else:
            order = np.arange(n)
            runs = np.array([0, n])
            run_groups = []
        # plain sums: one product per block; grouped sums: per run of constant groups
        dense_columns = sorted(set(self._dense))
        run_columns = sorted({c for _, _, c in self._families})
        dense_values = np.empty((len(dense_columns), n), dtype=np.float32)  # a block's product is one sgemm
        run_values = np.empty((len(run_columns), n), dtype=np.float32)
        for target, columns in ((dense_values, dense_columns), (run_values, run_columns)):
            for row, c in enumerate(columns):
                target[row] = self._columns[c][order]

        dense = np.zeros((n_resamples, len(dense_columns)))
        families = [np.zeros((k, n_resamples)) for _, k, _ in self._families]  # a group's row is contiguous
        family_rows = [run_columns.index(c) for _, _, c in self._families]
        width = max(64, _BLOCK_BYTES // (4 * n_resamples))
        seed = int(rng.integers(2**63, dtype=np.int64))
        blocks = range(0, n, width)  # each block's first example
        buffers = [np.empty((n_resamples, min(width, n)), dtype=np.float32) for _ in range(_AHEAD + 1)]

        def weights(b: int) -> NDArray[np.float32]:
            # an example's weights hang on its own index, not on its block or its place in the
            # sort, so the result never depends on threads, timing or the other statistics'
            # groupings; buffers rotate: one is summed while the next ones are drawn
            examples = order[blocks[b] : blocks[b] + width]
            out = buffers[b % len(buffers)] if examples.size == buffers[0].shape[1] else None
            return poisson_weights(seed, examples, n_resamples, out=out)

        # Drawing weights costs more than summing them: other threads draw while this one sums
        # with a single-threaded BLAS (a threaded one would spin on the cores the draws need).
        with ThreadPoolExecutor(max_workers=_AHEAD) as pool, threadpool_limits(1, user_api="blas"):
            pending = [pool.submit(weights, b) for b in range(min(_AHEAD, len(blocks)))]
            for b, start in enumerate(blocks):
                block = pending.pop(0).result()
                stop = start + block.shape[1]
                if dense_columns:
                    dense += block @ dense_values[:, start:stop].T
                if families:
                    self._sum_runs(block, start, stop, runs, run_values, run_groups, families, family_rows)
                if b + _AHEAD < len(blocks):  # its buffer was the one just summed
                    pending.append(pool.submit(weights, b + _AHEAD))
        picked = [dense_columns.index(c) for c in self._dense]
        families_out = [f.T for f in families]
        return Sums(dense[:, picked], families_out)

    @staticmethod
    def _sum_runs(block, start, stop, runs, run_values, run_groups, families, family_rows) -> None:
        """Add one block's per-run sums of the grouped value columns into every family."""
        first = int(np.searchsorted(runs, start, side="right")) - 1  # the run holding `start`
        last = int(np.searchsorted(runs, stop, side="left"))  # one past the run holding `stop - 1`
        cuts = np.clip(runs[first:last], start, stop) - start  # each run's first position in the block
        bounds = np.append(cuts, stop - start)
        for r in range(last - first):  # one small product per run (faster than reduceat + add.at)
            lo, hi = bounds[r], bounds[r + 1]
            part = block[:, lo:hi] @ run_values[:, start + lo : start + hi].T
            for f, row in enumerate(family_rows):
                families[f][run_groups[f][first + r]] += part[:, row]


class Sums:
    """One set of weighted sums: ``sums[handle]`` has one row per resample.

    A column's sums have shape (k,), a grouped family's (k, n_groups).
    """

    def __init__(self, dense: NDArray[np.float64], families: list[NDArray[np.float64]]):
        self._dense = dense
        self._families = families
        self.k = dense.shape[0]

    def __getitem__(self, handle: _Handle) -> NDArray[np.float64]:
        return self._families[handle.index] if handle.grouped else self._dense[:, handle.index]

    def __sub__(self, other: Sums) -> Sums:
        return Sums(self._dense - other._dense, [a - b for a, b in zip(self._families, other._families, strict=True)])


SumStatistic = Callable[[Sums], np.ndarray]
"""A statistic of weighted sums: maps :class:`Sums` with ``k`` rows to ``k`` values."""


def bootstrap_sums(
    statistics: Mapping[str, SumStatistic],
    sums: WeightedSums,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator,
    method: Mapping[str, str] | str = "bca",
    support: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, BootstrapInterval]:
    """Bootstrap confidence intervals for statistics of weighted sums, paired, in one pass.

    Every statistic is evaluated on the same resamples, so intervals of differences between
    two models scored on the same examples are paired. A statistic must not depend on the
    scale of the weights (a ratio of sums, like every mean).

    Parameters
    ----------
    statistics : mapping of str to callable
        Named statistics, :class:`Sums` -> array of shape (k,).
    sums : WeightedSums
        The columns the statistics read.
    n_resamples, confidence, rng, method, support
        As :func:`distill_eval.metrics.stats.bootstrap_intervals`.

    Returns
    -------
    intervals : dict of str to BootstrapInterval
        As :func:`distill_eval.metrics.stats.bootstrap_intervals`.

    Notes
    -----
    Resampling weights are independent Poisson(1) counts rather than the multinomial counts
    of ``n`` draws: the Poisson bootstrap, which agrees with the classical one to order
    ``1/n`` and lets each block of examples draw its own weights. The total weight of a
    resample varies, so a statistic is NaN on the rare resample that leaves its examples
    empty (those are dropped, as in :func:`~distill_eval.metrics.stats.bootstrap_intervals`).
    The BCa acceleration comes from a delete-a-block jackknife over ``min(n, 100)`` blocks of
    a random partition, computed exactly from per-block sums.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> hit = (rng.random(2000) < 0.8).astype(float)
    >>> sums = WeightedSums(2000)
    >>> total, hits = sums.column(), sums.column(hit)
    >>> res = bootstrap_sums({"accuracy": lambda s: s[hits] / s[total]}, sums, rng=rng)
    >>> bool(res["accuracy"].low < hit.mean() < res["accuracy"].high)
    True
    """
    n = sums.n
    methods, supports = _check_bootstrap_args(statistics, n, n_resamples, confidence, rng, method, support)
    totals = sums.totals()
    estimates = {name: float(_evaluate(name, stat, totals)[0]) for name, stat in statistics.items()}
    resampled_sums = sums.resample(rng, n_resamples)
    resampled = {name: _evaluate(name, stat, resampled_sums) for name, stat in statistics.items()}
    del resampled_sums

    def jackknife(names: list[str]) -> dict[str, NDArray[np.float64]]:
        blocks = min(n, _JACKKNIFE_BLOCKS)
        block = np.empty(n, dtype=np.intp)
        block[rng.permutation(n)] = np.arange(n) % blocks
        left_out = _repeat(totals, blocks) - sums.blocks(block, blocks)
        return {name: _evaluate(name, statistics[name], left_out) for name in names}

    return _intervals(estimates, resampled, jackknife, methods, supports, confidence, n_resamples, n)


def _repeat(sums: Sums, k: int) -> Sums:
    return Sums(np.repeat(sums._dense, k, axis=0), [np.repeat(f, k, axis=0) for f in sums._families])


def _evaluate(name: str, statistic: SumStatistic, sums: Sums) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic(sums), dtype=np.float64)
    if values.shape != (sums.k,):
        raise ValueError(
            f"statistic {name!r} must return an array of shape ({sums.k},) for sums of {sums.k} resamples, "
            f"got shape {values.shape}"
        )
    return values
