"""Slice discovery: find, unprompted, the groups where the student loses most against the teacher.

A ``slices`` check with ``discover = true`` does not only measure the slices a
user declared; it also searches for groups of examples on which the student
falls behind the teacher more than it does elsewhere. Searching many groups
and reporting the best ones is a recipe for false alarms, so the search and
the evidence are kept apart: groups are *chosen* on one half of the data and
*tested* on the other half, which the choice never saw.

The method
----------
Let ``d = teacher_hit - student_hit`` for each example: 1 where only the
teacher is right (the student lost), -1 where only the student is right, 0
where they agree. (With ``metric = "agreement"`` the teacher "is right"
everywhere and the student is right where it agrees with the teacher.) A
group's **effect** is the mean of ``d`` inside it minus the mean outside it: how
much more the student loses there than on the rest of the data.

1. **Split.** The examples are shuffled (with the check's seeded generator) into
   an *exploration* half and a *confirmation* half.
2. **Candidates.** Every group below whose whole-dataset support reaches
   ``min_support`` and which has at least ``ceil(min_support / 2)`` members in
   the exploration half (group sizes depend only on the data, never on who is
   right, so this filter spends no evidence):

   * each **meta column**. Categorical columns (text, true/false, or numbers
     with at most 20 distinct values) give one group per value,
     ``meta.region == 'north'``, ``meta.shift == 3``. Numeric columns with more
     values give four bands cut at the quartiles of the exploration half,
     ``meta.age >= 31.5 and meta.age < 47.0``, the outermost bands open-ended
     (``meta.age < 31.5``, ``meta.age >= 62.0``); missing (NaN) values fall in
     no band.
   * **derived fields** of the teacher's output and the data: quartile bands
     of ``teacher_conf`` and ``teacher_entropy`` (from the exploration half),
     one group per ``label`` value (when the data has labels) and per
     ``teacher_pred`` value. Fields computed from the student, and
     ``teacher_correct``, are left out on purpose: grouping by them selects on
     the very outcome being measured.
   * **k-means clusters** of the inputs (flattened, standardised with the
     exploration half's mean and standard deviation) and of the teacher's
     logits (each row centred, since adding a constant to a row of logits
     changes nothing). Inputs or logits with more than 64 dimensions are first
     projected on their 32 leading principal components. Clusters are fitted
     on the exploration half only (at most 10,000 of its examples), with a
     fixed ``random_state`` drawn from the generator, and every example,
     confirmation half included, is assigned to its nearest centre with
     ``predict``. Two granularities are used: ``k = 8`` (fewer when the data
     is small: ``k <= n / (2 * min_support)``) and the ``k`` in ``2..8`` with
     the best silhouette on a sample of the exploration half, so that natural
     groups of the data are not cut in two by a fixed ``k``. No ``where``
     expression can describe a cluster, so clusters are reported by the ids
     of their members.

   Every ``where`` candidate's members are found by parsing and evaluating its
   own expression (:func:`distill_eval.expr.parse`), so pasting the reported
   expression into a suite selects exactly the reported examples. Numbers are
   written with Python's ``repr``, which reads back to the same value.
3. **Choose (exploration half).** Candidates are ranked by their effect on the
   exploration half minus one standard error of it (a small group's effect is
   noisy, and would otherwise crowd out large groups by luck). Going down the
   ranking, a candidate is skipped when 90% or more of its members lie in
   one already kept (a part of a group that scored better adds nothing); only
   candidates with a positive effect are kept, at most ``2 * top`` of them.
4. **Test (confirmation half).** Each kept candidate gets a one-sided Welch
   t-test of ``d`` inside the group against ``d`` outside it, on the
   confirmation half only (the alternative: the student loses more inside).
   The p-values are Holm-adjusted across all the candidates tested, which
   bounds the chance of reporting *any* group where the student is not worse
   by ``alpha``.
5. **Report.** Groups with ``p_adjusted <= alpha`` are ordered by their effect
   on the confirmation half (then by p-value); a group with 90% or more of
   its members inside a group listed before it is dropped (it is the same
   finding, or a part of it that is no worse than the whole), and at most
   ``top`` are returned. Their support and scores are measured on the whole
   dataset. A group may still be listed after a part of it that did worse:
   a natural cluster of the inputs, say, after one of its halves from the
   finer clustering.

On token data
-------------
:func:`discover_tokens` runs the same method on the scored tokens of a language
model's evaluation data, where each token is an example (``d`` compares the
two models' next-token predictions) with three changes, all because the tokens
of one sequence are not independent draws (a hard passage makes every one of
its tokens hard):

* **The split is by sequence.** Whole sequences are shuffled into the two
  halves, so no sequence has tokens in both: a group chosen on the exploration
  half cannot be confirmed by the other tokens of the sequences it was chosen on.
* **The test respects the sequences.** A group's effect is the difference of
  two ratios of per-sequence sums, ``m_in - m_out`` with ``m_in = sum_s
  D_in(s) / N_in`` and ``N_in = sum_s n_in(s)`` (``D_in(s)``: the sum of ``d``
  over sequence ``s``'s tokens inside the group, ``n_in(s)``: their number;
  likewise outside). Sequences are the independent units, so its variance is
  estimated from them: by the delta method the effect moves like the sum of
  ``u(s) = (D_in(s) - m_in n_in(s)) / N_in - (D_out(s) - m_out n_out(s)) /
  N_out``, and ``Var = G / (G - 1) * sum_s u(s)^2`` over the ``G`` sequences
  of the half. This is the cluster-robust (sandwich) standard error of the slope in
  the regression of ``d`` on group membership, clustered by sequence (Cameron
  & Miller 2015, "A practitioner's guide to cluster-robust inference"), and the
  one-sided p-value reads ``effect / se`` on Student's t with ``G - 1`` degrees
  of freedom. It estimates the same variance as the cluster bootstrap of the
  check's intervals, in closed form, since every candidate is scored on both
  halves. A token-level t-test would treat correlated tokens as independent
  and find "significant" groups where the student merely had a few bad
  sequences. The inside and the outside of a group share sequences; ``u(s)``
  takes both parts of a sequence together, so their correlation is accounted
  for. A group needs members in at least 5 sequences of the confirmation half
  (and as many sequences outside it) to be tested at all: a sandwich estimate
  from fewer sequences is unreliable, so such a group is never reported.
  The ranking on the exploration half uses the same estimate.
* **The candidates** are quartile bands of ``position``, ``teacher_entropy``,
  ``teacher_conf`` and ``token_frequency``, one group per ``label`` token and
  per ``teacher_pred`` token with enough support, and the ``meta`` columns of
  the sequences, as above; every one is a ``where`` expression over the
  per-token fields, evaluated to find its members. There are no k-means
  clusters: a token's "input" is its whole prefix, and clusters of single
  tokens' next-token distributions would mostly rediscover the teacher's
  predicted token, which is already a candidate.

``support`` and ``min_support`` count tokens; the result also gives the number of
sequences holding a group's members.

An empty result means no group passed the test: either the student loses
about equally everywhere, or the groups it struggles on are smaller than
``min_support``, or they are not described by any meta column, band,
label, prediction or cluster that was tried, or the evaluation data is too
small to tell.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from distill_eval import expr
from distill_eval.errors import DistillError, ExpressionError

__all__ = ["Discovered", "discover", "discover_tokens"]

_MAX_LEVELS = 20  # numeric columns with at most this many distinct values are categorical
_QUARTILES = (0.25, 0.5, 0.75)
_BANDED_FIELDS = ("teacher_conf", "teacher_entropy")
_GROUPED_FIELDS = ("label", "teacher_pred")
_TOKEN_BANDED_FIELDS = ("position", "teacher_entropy", "teacher_conf", "token_frequency")
_MIN_SEQUENCES = 5  # sequences of the confirmation half a token group (and its outside) must reach to be tested
_MAX_K = 8
_FIT_ROWS = 10_000  # exploration examples that fit the scaler, the projection and k-means
_SILHOUETTE_ROWS = 1_000
_MAX_DIMS = 64  # above this, project on _PCA_DIMS principal components before clustering
_PCA_DIMS = 32
_CHUNK = 8_192  # rows transformed at once, to bound memory on large inputs
_DUPLICATE = 0.9  # share of a group's members inside a better one at which it is the same finding
_PHASES = 4  # for progress: where candidates, input clusters, logit clusters, choice and test


@dataclass(frozen=True)
class Discovered:
    """A group of examples on which the student loses significantly more than elsewhere.

    Attributes
    ----------
    name : str
        Human-readable, e.g. ``"meta.region == 'north'"``,
        ``"teacher_conf in [0.41, 0.63)"``, ``"input cluster 3 of 8"``.
    source : str
        Where the group comes from: ``"meta"``, ``"derived"``,
        ``"cluster:inputs"`` or ``"cluster:teacher_logits"``.
    where : str or None
        A ``where`` expression that selects exactly this group, ready to paste
        into a suite; ``None`` for clusters.
    ids : tuple of str or None
        The member ids, for clusters (which no ``where`` expression can
        describe); ``None`` otherwise.
    support : int
        Members in the whole dataset.
    student_score, teacher_score : float
        Each model's score on the members (whole dataset): accuracy, or for the
        student agreement with the teacher (and 1 for the teacher) in agreement mode.
    gap : float
        ``teacher_score - student_score``.
    effect : float
        On the confirmation half: the mean loss ``teacher_hit - student_hit``
        inside the group minus the mean loss outside it.
    p_value : float
        One-sided Welch t-test of that effect, on the confirmation half.
    p_adjusted : float
        ``p_value`` Holm-adjusted across every candidate tested on the
        confirmation half.
    sequences : int or None
        Token data: the sequences holding the members (``support`` counts
        tokens); ``None`` for classification data.
    student_score_ci, teacher_score_ci, gap_ci : tuple of float or None
        Token data: intervals of the scores and the gap on the whole dataset,
        from the check's bootstrap over sequences; ``None`` where not computed.
    """

    name: str
    source: str
    where: str | None
    ids: tuple[str, ...] | None
    support: int
    student_score: float
    teacher_score: float
    gap: float
    effect: float
    p_value: float
    p_adjusted: float
    sequences: int | None = None
    student_score_ci: tuple[float, float] | None = None
    teacher_score_ci: tuple[float, float] | None = None
    gap_ci: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (``where`` or ``ids``, whichever applies)."""
        out: dict[str, Any] = {"name": self.name, "source": self.source}
        if self.where is not None:
            out["where"] = self.where
        if self.ids is not None:
            out["ids"] = list(self.ids)
        out.update(
            support=self.support,
            student_score=self.student_score,
            teacher_score=self.teacher_score,
            gap=self.gap,
            effect=self.effect,
            p_value=self.p_value,
            p_adjusted=self.p_adjusted,
        )
        if self.sequences is not None:
            out["sequences"] = self.sequences
        for key in _INTERVALS:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Discovered:
        """The inverse of :meth:`to_json`."""
        ids = doc.get("ids")
        return cls(
            name=doc["name"],
            source=doc["source"],
            where=doc.get("where"),
            ids=tuple(ids) if ids is not None else None,
            **{key: doc[key] for key in ("support", "student_score", "teacher_score", "gap", "effect")},
            p_value=doc["p_value"],
            p_adjusted=doc["p_adjusted"],
            sequences=doc.get("sequences"),
            **{key: (tuple(doc[key]) if doc.get(key) is not None else None) for key in _INTERVALS},
        )


_INTERVALS = ("student_score_ci", "teacher_score_ci", "gap_ci")


@dataclass(frozen=True)
class _Candidate:
    name: str
    source: str
    where: str | None
    mask: np.ndarray  # (n,) bool, over the whole dataset


def discover(
    fields: Mapping[str, Any],
    *,
    ids: np.ndarray,
    x: np.ndarray,
    teacher_logits: np.ndarray,
    teacher_hit: np.ndarray,
    student_hit: np.ndarray,
    min_support: int,
    top: int,
    rng: np.random.Generator,
    alpha: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> list[Discovered]:
    """Find the groups of examples where the student loses most against the teacher.

    See the module docstring for the method: candidates chosen on a random
    half of the data, tested on the other half, Holm-adjusted.

    Parameters
    ----------
    fields : mapping of str to array of shape (n_samples,)
        The per-example fields of the ``where`` language (``label``,
        ``teacher_pred``, ``teacher_conf``, ``teacher_entropy``, ... and
        ``meta.<column>``), as :class:`distill_eval.checks.slices._Fields`
        gives them. Iterating it names the meta columns; only the fields used
        are read. A field that raises ``KeyError`` or a ``DistillError`` when
        read (``label`` without labels) is skipped.
    ids : array of shape (n_samples,)
        Example ids (reported for cluster members).
    x : array of shape (n_samples, ...)
        The inputs; flattened per example for clustering.
    teacher_logits : array of shape (n_samples, n_classes)
        The teacher's logits.
    teacher_hit, student_hit : array of bool, shape (n_samples,)
        Where each model is right; in agreement mode ``teacher_hit`` is all
        True and ``student_hit`` marks agreement with the teacher.
    min_support : int
        Smallest group reported (members in the whole dataset); candidates
        need half of it in the exploration half.
    top : int
        Most groups returned.
    rng : numpy.random.Generator
        Draws the split and the clustering seeds; the same state gives the
        same result.
    alpha : float, default=0.05
        Family-wise error rate: a group is reported when its Holm-adjusted
        p-value is at most ``alpha``.
    progress : callable, optional
        ``(done, total)``: called after each of the search's phases (the
        ``where`` candidates, the input clusters, the logit clusters, the test).

    Returns
    -------
    list of Discovered
        At most ``top`` groups, largest effect first; empty when none is
        significant.

    Raises
    ------
    ValueError
        If the arrays disagree in length or the options are out of range.
    """
    ids, x, teacher_logits, teacher_hit, student_hit = _validated(
        ids, x, teacher_logits, teacher_hit, student_hit, min_support, top, alpha
    )
    d = teacher_hit.astype(np.float64) - student_hit.astype(np.float64)  # 1: only the teacher is right
    n = len(ids)
    explore = np.zeros(n, dtype=bool)
    explore[rng.permutation(n)[: n // 2]] = True
    seed_inputs, seed_logits = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
    if n < 4 or np.all(d == d[0]):  # nowhere can the student lose more than elsewhere
        return []

    phase = progress or (lambda done, total: None)
    half = math.ceil(min_support / 2)
    candidates = _where_candidates(fields, n, explore, min_support)
    phase(1, _PHASES)
    k_max = min(_MAX_K, n // (2 * min_support))
    flat = x.reshape(n, -1)
    logits = teacher_logits - teacher_logits.mean(axis=1, keepdims=True)
    candidates += _clusters(flat, explore, k_max, seed_inputs, standardise=True, source="cluster:inputs", what="input")
    phase(2, _PHASES)
    candidates += _clusters(
        logits, explore, k_max, seed_logits, standardise=False, source="cluster:teacher_logits", what="teacher-logit"
    )
    phase(3, _PHASES)
    candidates = [c for c in candidates if _supported(c.mask, explore, min_support, half)]
    if not candidates:
        return []

    d_explore = d[explore]
    confirm = ~explore

    def spread(mask: np.ndarray) -> tuple[float, float]:
        inside = mask[explore]
        return _effect(d_explore[inside], d_explore[~inside])

    def test(mask: np.ndarray) -> tuple[float, float]:
        return _welch(d[confirm & mask], d[confirm & ~mask])

    return [
        _discovered(c, ids, teacher_hit, student_hit, effect, p, p_adj)
        for effect, p, p_adj, c in _select(candidates, spread, test, top=top, alpha=alpha)
    ]


def _select(
    candidates: list[_Candidate],
    spread: Callable[[np.ndarray], tuple[float, float]],
    test: Callable[[np.ndarray], tuple[float, float]],
    *,
    top: int,
    alpha: float,
) -> list[tuple[float, float, float, _Candidate]]:
    """Steps 3 to 5 of the method: choose on the exploration half, test on the other, Holm, drop repeats.

    ``spread(mask)`` is a group's effect and its standard error on the exploration half;
    ``test(mask)`` its effect and one-sided p-value on the confirmation half. Returns
    ``(effect, p, p_adjusted, candidate)`` of the groups reported, largest effect first.
    """
    kept = _choose(candidates, spread, limit=2 * top)
    if not kept:
        return []
    tested = [test(c.mask) for c in kept]
    p_adjusted = _holm(np.array([p for _, p in tested]))

    found = []
    for c, (effect, p), p_adj in zip(kept, tested, p_adjusted, strict=True):
        if p_adj <= alpha:
            found.append((effect, p, float(p_adj), c))
    found.sort(key=lambda item: (-item[0], item[1], item[3].name))
    reported: list[tuple[float, float, float, _Candidate]] = []
    for item in found:
        if any(_inside(item[3].mask, r[3].mask) >= _DUPLICATE for r in reported):
            continue
        reported.append(item)
        if len(reported) == top:
            break
    return reported


def discover_tokens(
    fields: Mapping[str, Any],
    *,
    sequence: np.ndarray,
    teacher_hit: np.ndarray,
    student_hit: np.ndarray,
    min_support: int,
    top: int,
    rng: np.random.Generator,
    alpha: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> list[Discovered]:
    """Find the groups of scored tokens where the student loses most against the teacher.

    See the module docstring ("On token data"): candidates chosen on a random
    half of the *sequences*, tested on the other half with a test whose
    variance comes from whole sequences, Holm-adjusted.

    Parameters
    ----------
    fields : mapping of str to array of shape (n_tokens,)
        The per-token fields of the ``where`` language (``position``,
        ``label``, ``teacher_pred``, ``teacher_conf``, ``teacher_entropy``,
        ``token_frequency``, ... and ``meta.<column>``), as
        :class:`distill_eval.checks.slices._TokenFields` gives them.
    sequence : array of int of shape (n_tokens,)
        The sequence of each scored token (:attr:`TokenStats.sequence`).
    teacher_hit, student_hit : array of bool, shape (n_tokens,)
        Where each model's next-token prediction is right (in agreement mode
        ``teacher_hit`` is all True and ``student_hit`` marks top-1 agreement).
    min_support : int
        Smallest group reported, in tokens of the whole dataset; candidates
        need half of it in the exploration half.
    top : int
        Most groups returned.
    rng : numpy.random.Generator
        Draws the split; the same state gives the same result.
    alpha : float, default=0.05
        Family-wise error rate of the Holm-adjusted p-values.
    progress : callable, optional
        ``(done, total)``: called after the candidates and after the test.

    Returns
    -------
    list of Discovered
        At most ``top`` groups, largest effect first, each with a ``where``;
        ``support`` counts tokens and ``sequences`` the sequences they lie in.

    Raises
    ------
    ValueError
        If the arrays disagree in length or the options are out of range.
    """
    seq = np.asarray(sequence)
    if seq.ndim != 1 or seq.size == 0 or seq.dtype.kind not in "iu":
        raise ValueError(f"sequence must be a non-empty array of integer sequence indices, got {seq.dtype} {seq.shape}")
    n = seq.size
    teacher_hit, student_hit = _validated_hits(n, teacher_hit, student_hit, min_support, top, alpha)
    d = teacher_hit.astype(np.float64) - student_hit.astype(np.float64)
    unit = np.unique(seq, return_inverse=True)[1]
    explore = _split_sequences(unit, rng)
    if unit.max() < 3 or np.all(d == d[0]):  # fewer than 4 sequences, or nowhere worse than elsewhere
        return []

    phase = progress or (lambda done, total: None)
    half = math.ceil(min_support / 2)
    candidates = _where_candidates(fields, n, explore, min_support, banded=_TOKEN_BANDED_FIELDS)
    candidates = [c for c in candidates if _supported(c.mask, explore, min_support, half)]
    phase(1, 2)
    if not candidates:
        return []
    explored = _SequenceContrast(d, unit, explore)
    confirmed = _SequenceContrast(d, unit, ~explore)
    found = _select(candidates, explored.spread, confirmed.test, top=top, alpha=alpha)
    phase(2, 2)
    out = []
    for effect, p, p_adj, c in found:
        group = _discovered(c, None, teacher_hit, student_hit, effect, p, p_adj)  # every candidate has a where
        out.append(dataclasses.replace(group, sequences=int(np.unique(unit[c.mask]).size)))
    return out


def _split_sequences(unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The exploration half of the tokens: a random half of the sequences (``unit``: 0..G-1), all their tokens."""
    g = int(unit.max()) + 1
    chosen = np.zeros(g, dtype=bool)
    chosen[rng.permutation(g)[: g // 2]] = True
    return chosen[unit]


class _SequenceContrast:
    """A group's mean ``d`` minus the rest's, over the tokens of some sequences, with a cluster-robust SE.

    See the module docstring ("On token data") for the estimate and why.
    """

    def __init__(self, d: np.ndarray, unit: np.ndarray, half: np.ndarray):
        self._half = half
        self._d = d[half]
        self._unit = np.unique(unit[half], return_inverse=True)[1]
        self._g = int(self._unit.max()) + 1 if self._unit.size else 0
        self._count = np.bincount(self._unit, minlength=self._g).astype(np.float64)
        self._sum = np.bincount(self._unit, weights=self._d, minlength=self._g)

    def _moments(self, mask: np.ndarray) -> tuple[float, float, int, int]:
        """Effect, standard error, and the sequences with tokens inside and outside the group."""
        inside = mask[self._half]
        n_in = np.bincount(self._unit, weights=inside.astype(np.float64), minlength=self._g)
        d_in = np.bincount(self._unit, weights=self._d * inside, minlength=self._g)
        n_out, d_out = self._count - n_in, self._sum - d_in
        total_in, total_out = float(n_in.sum()), float(n_out.sum())
        if total_in == 0 or total_out == 0 or self._g < 2:
            return math.nan, math.nan, 0, 0
        mean_in, mean_out = float(d_in.sum()) / total_in, float(d_out.sum()) / total_out
        u = (d_in - mean_in * n_in) / total_in - (d_out - mean_out * n_out) / total_out
        se = math.sqrt(self._g / (self._g - 1) * float(np.sum(u * u)))
        return mean_in - mean_out, se, int(np.count_nonzero(n_in)), int(np.count_nonzero(n_out))

    def spread(self, mask: np.ndarray) -> tuple[float, float]:
        """The group's effect and its standard error."""
        effect, se, _, _ = self._moments(mask)
        return effect, se

    def test(self, mask: np.ndarray) -> tuple[float, float]:
        """The group's effect and the one-sided p-value that the student loses more inside it."""
        effect, se, seq_in, seq_out = self._moments(mask)
        if not math.isfinite(effect) or min(seq_in, seq_out) < _MIN_SEQUENCES:
            return effect, 1.0
        if se == 0:  # d constant inside and outside every sequence: the t statistic is ±inf, or undefined
            return effect, 0.0 if effect > 0 else 1.0
        from scipy import stats

        return effect, float(stats.t.sf(effect / se, df=self._g - 1))


# -- inputs ----------------------------------------------------------------------


def _validated(ids, x, teacher_logits, teacher_hit, student_hit, min_support, top, alpha):
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"ids must be a non-empty array of shape (n_samples,), got shape {ids.shape}")
    n = len(ids)
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] != n:
        raise ValueError(f"x must have one row per id ({n}), got shape {x.shape}")
    teacher_logits = np.asarray(teacher_logits, dtype=np.float64)
    if teacher_logits.ndim != 2 or teacher_logits.shape[0] != n:
        raise ValueError(f"teacher_logits must have shape ({n}, n_classes), got {teacher_logits.shape}")
    if not np.all(np.isfinite(teacher_logits)):
        raise ValueError("teacher_logits contain non-finite values (NaN or inf)")
    teacher_hit, student_hit = _validated_hits(n, teacher_hit, student_hit, min_support, top, alpha)
    return ids.astype(str), x, teacher_logits, teacher_hit, student_hit


def _validated_hits(n, teacher_hit, student_hit, min_support, top, alpha) -> tuple[np.ndarray, np.ndarray]:
    hits = []
    for name, hit in (("teacher_hit", teacher_hit), ("student_hit", student_hit)):
        hit = np.asarray(hit)
        if hit.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {hit.shape}")
        if hit.dtype != bool and not np.isin(hit, (0, 1)).all():
            raise ValueError(f"{name} must hold true/false values, got dtype {hit.dtype} with other values")
        hits.append(hit.astype(bool))
    for name, value in (("min_support", min_support), ("top", top)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return hits[0], hits[1]


def _read(fields: Mapping[str, Any], key: str, n: int) -> np.ndarray | None:
    """A field's values, or None where the data does not have it."""
    try:
        values = np.asarray(fields[key])
    except (KeyError, DistillError):
        return None
    if values.shape != (n,):
        raise ValueError(f"field {key!r} must have shape ({n},), got {values.shape}")
    return values


def _kind(values: np.ndarray) -> tuple[str, np.ndarray] | None:
    """``("string" | "bool" | "number", values)`` as the where language will read them, or None."""
    kind = values.dtype.kind
    if kind == "b":
        return "bool", values
    if kind in "US":
        return "string", values.astype(str)
    if kind in "iu":
        return "number", values
    if kind == "f":
        return "number", values.astype(np.float64)
    if kind == "O":
        items = values.tolist()
        if all(isinstance(v, str) for v in items):
            return "string", values.astype(str)
        if all(isinstance(v, bool | np.bool_) for v in items):
            return "bool", values.astype(bool)
        if all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in items):
            return "number", values.astype(np.float64)
    return None


# -- candidates with a where expression --------------------------------------------


def _where_candidates(
    fields: Mapping[str, Any],
    n: int,
    explore: np.ndarray,
    min_support: int,
    *,
    banded: tuple[str, ...] = _BANDED_FIELDS,
    grouped: tuple[str, ...] = _GROUPED_FIELDS,
) -> list[_Candidate]:
    specs: list[tuple[str, str, str]] = []  # (name, source, where)
    meta = [key for key in fields if isinstance(key, str) and key.startswith("meta.")]
    for key in meta:
        column = key[len("meta.") :]
        if not column.isidentifier() or column.startswith("__"):
            continue  # the where language cannot name it
        values = _read(fields, key, n)
        typed = _kind(values) if values is not None else None
        if typed is None:
            continue
        kind, values = typed
        if kind == "number" and len(np.unique(values[np.isfinite(values)])) > _MAX_LEVELS:
            specs += [(name, "meta", where) for name, where in _bands(key, values, explore)]
        else:
            specs += [(w, "meta", w) for w in _levels(key, kind, values, explore, min_support)]
    for key in banded:
        values = _read(fields, key, n)
        if values is not None and values.dtype.kind in "iuf":
            specs += [(name, "derived", where) for name, where in _bands(key, values.astype(np.float64), explore)]
    for key in grouped:
        values = _read(fields, key, n)
        if values is not None and values.dtype.kind in "iu":
            specs += [(w, "derived", w) for w in _levels(key, "number", values, explore, min_support)]

    candidates = []
    for name, source, where in specs:
        try:
            mask = expr.parse(where).evaluate(fields, n=n)
        except ExpressionError:
            continue  # values the language cannot compare; nothing a user could paste either
        candidates.append(_Candidate(name, source, where, mask))
    return candidates


def _levels(key: str, kind: str, values: np.ndarray, explore: np.ndarray, min_support: int) -> list[str]:
    """``key == value`` for each value frequent enough to be a candidate."""
    valid = np.ones(len(values), dtype=bool) if kind != "number" else np.isfinite(values)
    levels, counts = np.unique(values[valid], return_counts=True)
    explored_levels, explored_counts = np.unique(values[valid & explore], return_counts=True)
    explored = dict(zip(explored_levels.tolist(), explored_counts.tolist(), strict=True))
    half = math.ceil(min_support / 2)
    return [
        f"{key} == {_literal(level)}"
        for level, count in zip(levels.tolist(), counts.tolist(), strict=True)
        if count >= min_support and explored.get(level, 0) >= half
    ]


def _bands(key: str, values: np.ndarray, explore: np.ndarray) -> list[tuple[str, str]]:
    """Quartile bands of a numeric field, cut on the exploration half: (name, where) pairs."""
    sample = values[explore]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return []
    edges = [float(e) for e in np.unique(np.quantile(sample, _QUARTILES))]
    bounds = [None, *edges, None]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        if lo is None and hi is None:
            continue
        if lo is None:
            out.append((f"{key} < {hi:.4g}", f"{key} < {_literal(hi)}"))
        elif hi is None:
            out.append((f"{key} >= {lo:.4g}", f"{key} >= {_literal(lo)}"))
        else:
            out.append((f"{key} in [{lo:.4g}, {hi:.4g})", f"{key} >= {_literal(lo)} and {key} < {_literal(hi)}"))
    return out


def _literal(value: Any) -> str:
    """A literal of the where language that reads back as exactly ``value``."""
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


# -- clusters ----------------------------------------------------------------------


def _clusters(
    features: np.ndarray,
    explore: np.ndarray,
    k_max: int,
    seed: int,
    *,
    standardise: bool,
    source: str,
    what: str,
) -> list[_Candidate]:
    """k-means clusters fitted on the exploration half, at k_max and at the best-silhouette k."""
    if k_max < 2 or features.shape[1] == 0:
        return []
    # One thread: the fits are small (at most _FIT_ROWS rows), and spinning OpenMP/BLAS
    # threads slow down by orders of magnitude when the machine is busy (CI, pytest-xdist).
    with threadpool_limits(limits=1):
        return _fit_clusters(features, explore, k_max, seed, standardise=standardise, source=source, what=what)


def _fit_clusters(
    features: np.ndarray,
    explore: np.ndarray,
    k_max: int,
    seed: int,
    *,
    standardise: bool,
    source: str,
    what: str,
) -> list[_Candidate]:
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(explore)
    if len(rows) > _FIT_ROWS:
        rows = np.sort(rng.choice(rows, size=_FIT_ROWS, replace=False))
    fit = np.asarray(features[rows], dtype=np.float64)
    if not np.all(np.isfinite(fit)):
        return []
    centre = fit.mean(axis=0) if standardise else np.zeros(fit.shape[1])
    scale = fit.std(axis=0) if standardise else np.ones(fit.shape[1])
    scale[scale == 0] = 1.0
    fit = (fit - centre) / scale
    # scikit-learn loads only when a suite asks for discovery (the plugin imports every kind)
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning

    pca = None
    if fit.shape[1] > _MAX_DIMS:
        pca = PCA(n_components=min(_PCA_DIMS, len(rows)), svd_solver="randomized", random_state=seed).fit(fit)
        fit = pca.transform(fit)
    space = np.empty((features.shape[0], fit.shape[1]))
    for start in range(0, features.shape[0], _CHUNK):
        chunk = (np.asarray(features[start : start + _CHUNK], dtype=np.float64) - centre) / scale
        if not np.all(np.isfinite(chunk)):
            return []
        space[start : start + _CHUNK] = pca.transform(chunk) if pca is not None else chunk

    out = []
    for k in sorted({k_max, _best_k(fit, k_max, rng, seed)}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k
            model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit)
        labels = model.predict(space)
        for c in range(k):
            mask = labels == c
            out.append(_Candidate(f"{what} cluster {c + 1} of {k}", source, None, mask))
    return out


def _best_k(fit: np.ndarray, k_max: int, rng: np.random.Generator, seed: int) -> int:
    """The k in 2..k_max whose k-means clustering of a sample has the best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    sample = fit if len(fit) <= _SILHOUETTE_ROWS else fit[rng.choice(len(fit), size=_SILHOUETTE_ROWS, replace=False)]
    best, best_score = k_max, -np.inf
    for k in range(2, k_max + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(sample)
        if len(np.unique(labels)) < 2:
            continue
        score = silhouette_score(sample, labels)
        if score > best_score:
            best, best_score = k, score
    return best


# -- statistics --------------------------------------------------------------------


def _supported(mask: np.ndarray, explore: np.ndarray, min_support: int, half: int) -> bool:
    support = int(mask.sum())
    inside = int((mask & explore).sum())
    outside = int(explore.sum()) - inside
    return support >= min_support and inside >= half and outside >= 2 and len(mask) - support >= 2


def _choose(
    candidates: list[_Candidate], spread: Callable[[np.ndarray], tuple[float, float]], *, limit: int
) -> list[_Candidate]:
    """The candidates to test: best on the exploration half, positive effect, no near-duplicates."""
    scored = []
    for i, c in enumerate(candidates):
        effect, se = spread(c.mask)
        if effect > 0:
            scored.append((effect - se, -effect, i))
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    kept: list[_Candidate] = []
    for _, _, i in scored:
        c = candidates[i]
        if any(_inside(c.mask, k.mask) >= _DUPLICATE for k in kept):
            continue
        kept.append(c)
        if len(kept) == limit:
            break
    return kept


def _moments(values: np.ndarray) -> tuple[int, float, float]:
    """Count, mean and sample standard deviation (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return 0, math.nan, 0.0
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    return n, mean, std


def _effect(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """Mean of ``inside`` minus mean of ``outside``, and its (Welch) standard error."""
    n_in, mean_in, std_in = _moments(inside)
    n_out, mean_out, std_out = _moments(outside)
    if n_in == 0 or n_out == 0:
        return math.nan, math.nan
    return mean_in - mean_out, math.sqrt(std_in**2 / n_in + std_out**2 / n_out)


def _welch(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """Effect and one-sided Welch t-test p-value that ``inside`` has the larger mean."""
    n_in, mean_in, std_in = _moments(inside)
    n_out, mean_out, std_out = _moments(outside)
    if n_in < 2 or n_out < 2:
        return (mean_in - mean_out if n_in and n_out else math.nan), 1.0
    effect = mean_in - mean_out
    if std_in == 0 and std_out == 0:  # both constant: the t statistic is ±inf, or undefined
        return effect, 0.0 if effect > 0 else 1.0
    # The same test as scipy.stats.ttest_ind(inside, outside, equal_var=False, alternative="greater"),
    # from moments computed here: ttest_ind warns when a group is constant, which d often is.
    from scipy import stats

    result = stats.ttest_ind_from_stats(
        mean_in, std_in, n_in, mean_out, std_out, n_out, equal_var=False, alternative="greater"
    )
    return effect, float(result.pvalue)


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of the p-values ``p`` (family-wise error control)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def _inside(group: np.ndarray, other: np.ndarray) -> float:
    """The share of ``group``'s members that are also in ``other``."""
    size = int(np.count_nonzero(group))
    return int(np.count_nonzero(group & other)) / size if size else 1.0


def _discovered(c: _Candidate, ids, teacher_hit, student_hit, effect: float, p: float, p_adj: float) -> Discovered:
    teacher_score = float(teacher_hit[c.mask].mean())
    student_score = float(student_hit[c.mask].mean())
    return Discovered(
        name=c.name,
        source=c.source,
        where=c.where,
        ids=None if c.where is not None else tuple(ids[c.mask].tolist()),
        support=int(c.mask.sum()),
        student_score=student_score,
        teacher_score=teacher_score,
        gap=teacher_score - student_score,
        effect=float(effect),
        p_value=float(p),
        p_adjusted=p_adj,
    )
