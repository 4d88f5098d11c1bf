"""Token-weighted and per-sequence means, bootstrapped by resampling sequences.

The tokens of one sequence are not independent draws (a hard passage makes every one of its
tokens hard), so an interval that resamples tokens is too narrow. Here the resampling unit is
the sequence: every per-token value is first summed per sequence, and a token-weighted mean
``sum_t f_t / sum_t 1`` becomes the ratio of two per-sequence sums,
``sum_s F_s / sum_s N_s``, which is exactly the kind of statistic
:func:`distill_eval.metrics.sums.bootstrap_sums` evaluates under resampling weights (one
Poisson weight per *sequence*). This is the cluster bootstrap (Davison & Hinkley 1997,
section 3.8) through the one bootstrap engine the package has.

Examples
--------
>>> import numpy as np
>>> sequence = np.array([0, 0, 0, 1, 1, 2])  # the sequence of each scored token
>>> kl = np.array([0.1, 0.3, 0.2, 0.9, 0.7, 0.0])
>>> sums = SequenceSums(sequence)
>>> mean_kl = sums.token_mean(kl)
>>> round(float(mean_kl(sums.totals())[0]), 4), round(token_weighted_mean(kl), 4)
(0.3667, 0.3667)
>>> ci = cluster_bootstrap({"kl": mean_kl}, sums, n_resamples=200, rng=np.random.default_rng(0))
>>> ci["kl"].low <= ci["kl"].estimate <= ci["kl"].high
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from distill_eval.metrics.stats import BootstrapInterval
from distill_eval.metrics.sums import Sums, SumStatistic, WeightedSums, bootstrap_sums

__all__ = [
    "SequenceSums",
    "cluster_bootstrap",
    "per_sequence_means",
    "sequence_mean",
    "token_weighted_mean",
]


def _token_values(values: ArrayLike | None, n: int, name: str) -> NDArray[np.float64]:
    if values is None:
        return np.ones(n)
    out = np.asarray(values, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one value per token, got {out.shape}")
    return out


def _where(where: ArrayLike | None, n: int) -> NDArray[np.bool_]:
    if where is None:
        return np.ones(n, dtype=bool)
    out = np.asarray(where)
    if out.shape != (n,) or out.dtype != bool:
        raise ValueError(f"where must be a boolean array of shape ({n},), got {out.dtype} of shape {out.shape}")
    return out


def token_weighted_mean(values: ArrayLike, *, where: ArrayLike | None = None) -> float:
    """The mean over tokens, every token weighing the same (TRL's and torchtune's normalisation).

    Parameters
    ----------
    values : array of shape (n_tokens,)
        One value per scored token.
    where : array of bool of shape (n_tokens,), optional
        Only these tokens.

    Returns
    -------
    float
        ``nan`` when no token is selected.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {v.shape}")
    w = _where(where, v.size)
    return float(v[w].mean()) if w.any() else float("nan")


def per_sequence_means(
    values: ArrayLike, sequence: ArrayLike, *, where: ArrayLike | None = None
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Each sequence's mean over its (selected) tokens.

    Parameters
    ----------
    values : array of shape (n_tokens,)
        One value per scored token.
    sequence : array of int of shape (n_tokens,)
        The sequence of each token.
    where : array of bool of shape (n_tokens,), optional
        Only these tokens.

    Returns
    -------
    sequences : ndarray of int64
        The sequences with at least one selected token, ascending.
    means : ndarray of float64
        Their means.
    """
    seq = _sequence(sequence)
    v = _token_values(values, seq.size, "values")
    w = _where(where, seq.size)
    units, unit = np.unique(seq[w], return_inverse=True)
    return units.astype(np.int64), np.bincount(unit, weights=v[w]) / np.bincount(unit)


def sequence_mean(values: ArrayLike, sequence: ArrayLike, *, where: ArrayLike | None = None) -> float:
    """The mean over sequences of each sequence's mean (every sequence weighing the same, as MiniLLM).

    Parameters
    ----------
    values, sequence, where
        As :func:`per_sequence_means`.

    Returns
    -------
    float
        ``nan`` when no token is selected.
    """
    means = per_sequence_means(values, sequence, where=where)[1]
    return float(means.mean()) if means.size else float("nan")


def _sequence(sequence: ArrayLike) -> NDArray[np.int64]:
    seq = np.asarray(sequence)
    if seq.ndim != 1 or seq.size == 0:
        raise ValueError(f"sequence must be a non-empty one-dimensional array, got shape {seq.shape}")
    if seq.dtype.kind not in "iu":
        raise ValueError(f"sequence must hold integer sequence indices, got dtype {seq.dtype}")
    return seq.astype(np.int64, copy=False)


class SequenceSums:
    """Per-sequence sums of per-token values, for a bootstrap that resamples sequences.

    Wraps a :class:`~distill_eval.metrics.sums.WeightedSums` with one example per sequence
    that has at least one scored token. Declare what the statistics read, then pass the
    statistics to :func:`cluster_bootstrap`.

    Parameters
    ----------
    sequence : array of int of shape (n_tokens,)
        The sequence of each scored token (e.g. :attr:`TokenStats.sequence`).

    Attributes
    ----------
    units : ndarray of int64
        The sequences that are resampled, ascending.
    sums : WeightedSums
        The underlying sums, one example per unit.
    tokens, sequences : handle
        The number of tokens and the number of sequences (declared up front).
    """

    def __init__(self, sequence: ArrayLike):
        seq = _sequence(sequence)
        self.n_tokens = int(seq.size)
        self.units, self._unit = np.unique(seq, return_inverse=True)
        self.sums = WeightedSums(len(self.units))
        self.tokens = self.sums.column(np.bincount(self._unit).astype(np.float64))
        self.sequences = self.sums.column()

    def token_sum(self, values: ArrayLike | None = None, *, where: ArrayLike | None = None) -> Any:
        """Declare the sum of ``values`` over (selected) tokens; a handle into :class:`Sums`.

        Parameters
        ----------
        values : array of shape (n_tokens,), optional
            Default 1 per token (a count).
        where : array of bool of shape (n_tokens,), optional
            Only these tokens.
        """
        return self.sums.column(self.per_sequence(values, where=where))

    def per_sequence(self, values: ArrayLike | None = None, *, where: ArrayLike | None = None) -> NDArray[np.float64]:
        """Each unit's sum of ``values`` over its (selected) tokens, aligned with :attr:`units`.

        What :meth:`token_sum` declares; a stored per-sequence record (e.g. an accepted
        baseline's) is declared back with ``sums.sums.column(record)``.
        """
        v = _token_values(values, self.n_tokens, "values") * _where(where, self.n_tokens)
        return np.bincount(self._unit, weights=v, minlength=len(self.units))

    def token_mean(self, values: ArrayLike, *, where: ArrayLike | None = None) -> SumStatistic:
        """A statistic: the token-weighted mean of ``values`` over (selected) tokens.

        Parameters
        ----------
        values : array of shape (n_tokens,)
            One value per token.
        where : array of bool of shape (n_tokens,), optional
            Only these tokens.
        """
        total = self.token_sum(values, where=where)
        count = self.tokens if where is None else self.token_sum(where=where)
        return lambda s: s[total] / s[count]

    def sequence_mean(self, values: ArrayLike, *, where: ArrayLike | None = None) -> SumStatistic:
        """A statistic: the mean over sequences of each sequence's mean of ``values``.

        Sequences without a selected token take no part.

        Parameters
        ----------
        values : array of shape (n_tokens,)
            One value per token.
        where : array of bool of shape (n_tokens,), optional
            Only these tokens.
        """
        w = _where(where, self.n_tokens)
        v = _token_values(values, self.n_tokens, "values")
        n_units = len(self.units)
        count = np.bincount(self._unit, weights=w.astype(np.float64), minlength=n_units)
        total = np.bincount(self._unit, weights=v * w, minlength=n_units)
        present = count > 0
        means = self.sums.column(np.divide(total, count, out=np.zeros(n_units), where=present))
        members = self.sums.column(present.astype(np.float64))
        return lambda s: s[means] / s[members]

    def token_quantiles(
        self, values: ArrayLike, quantiles: Sequence[float], *, resolution: int = 128
    ) -> dict[float, SumStatistic]:
        """Statistics: quantiles of ``values`` over tokens, as functions of per-sequence histogram counts.

        The tokens are binned at the empirical quantiles of ``values`` (every ``1/resolution``,
        and ten times finer within 0.05 of each requested quantile); a quantile of a weighted
        sample is read off the weighted cumulative counts, interpolating linearly within a
        bin, so it resamples sequences like every other statistic here. On the data itself it
        agrees with ``numpy.quantile`` to within a fraction of the bin it falls in.

        Parameters
        ----------
        values : array of shape (n_tokens,)
            One value per token.
        quantiles : sequence of float
            In ``[0, 1]``.
        resolution : int, default 128
            Bins over the whole range.

        Returns
        -------
        dict of float to statistic
            One statistic per requested quantile.
        """
        v = _token_values(values, self.n_tokens, "values")
        grid = [np.linspace(0.0, 1.0, resolution + 1)]
        for q in quantiles:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantiles must lie in [0, 1], got {q}")
            grid.append(np.clip(np.linspace(q - 0.05, q + 0.05, resolution + 1), 0.0, 1.0))
        edges = np.unique(np.quantile(v, np.unique(np.concatenate(grid))))
        if edges.size < 2:  # every value the same: every quantile is that value
            constant = float(edges[0])
            return {q: (lambda s, c=constant: np.full(s.k, c)) for q in quantiles}
        index = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, edges.size - 2)
        bins = [self.token_sum(where=index == b) for b in range(edges.size - 1)]

        def statistic(s: Sums, q: float) -> np.ndarray:
            counts = np.stack([s[b] for b in bins], axis=1)
            cumulative = np.cumsum(counts, axis=1)
            target = q * cumulative[:, -1:]
            j = np.minimum((cumulative < target).sum(axis=1), counts.shape[1] - 1)
            rows = np.arange(counts.shape[0])
            before = np.where(j > 0, cumulative[rows, np.maximum(j - 1, 0)], 0.0)
            inside = counts[rows, j]
            fraction = np.where(inside > 0, (target[:, 0] - before) / np.where(inside > 0, inside, 1.0), 0.0)
            return edges[j] + np.clip(fraction, 0.0, 1.0) * (edges[j + 1] - edges[j])

        return {q: (lambda s, q=q: statistic(s, q)) for q in quantiles}

    def totals(self) -> Sums:
        """The sums with every sequence weighing 1 (what point estimates read)."""
        return self.sums.totals()


def cluster_bootstrap(
    statistics: Mapping[str, SumStatistic],
    sums: SequenceSums,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator,
    method: Mapping[str, str] | str = "bca",
    support: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, BootstrapInterval]:
    """Bootstrap intervals of token statistics, resampling whole sequences, paired across statistics.

    Parameters
    ----------
    statistics : mapping of str to callable
        Named statistics of the sums declared on ``sums`` (e.g. :meth:`SequenceSums.token_mean`,
        or any function of its handles that does not depend on the scale of the weights).
    sums : SequenceSums
        The per-sequence sums.
    n_resamples, confidence, rng, method, support
        As :func:`distill_eval.metrics.sums.bootstrap_sums`.

    Returns
    -------
    dict of str to BootstrapInterval
        As :func:`distill_eval.metrics.sums.bootstrap_sums`.
    """
    return bootstrap_sums(
        statistics,
        sums.sums,
        n_resamples=n_resamples,
        confidence=confidence,
        rng=rng,
        method=method,
        support=support,
    )
