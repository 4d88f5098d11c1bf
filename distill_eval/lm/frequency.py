"""How common each predicted token is in a reference corpus: per-token frequency and rank.

A distilled student often keeps the teacher's skill on frequent tokens and loses it on rare
ones. These per-token values let a ``slices`` check cut the scored tokens by the frequency
of their label in a reference corpus (by default the evaluated data itself, or e.g. the
training set), counting only scored tokens (labels ``!= -100``, in the unshifted convention).

Examples
--------
>>> import numpy as np
>>> freq = TokenFrequency(np.array([5, 5, 5, 7, 7, 9]))
>>> freq.per_million(np.array([5, 9, 3])).round(1).tolist()
[500000.0, 166666.7, 0.0]
>>> freq.rank(np.array([5, 7, 9, 3])).tolist()
[1, 2, 3, 4]
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["TokenFrequency"]


class TokenFrequency:
    """Counts of the scored tokens of a reference corpus, read per token of another.

    Parameters
    ----------
    reference : array of int of shape (n_reference_tokens,)
        The label of every scored token of the reference corpus
        (:meth:`~distill_eval.lm.tokens.TokenDataset.scored_labels`).

    Attributes
    ----------
    ids, counts : ndarray of int64
        The distinct reference tokens, ascending, and how often each occurs.
    total : int
        Scored tokens in the reference.
    """

    def __init__(self, reference: ArrayLike):
        ref = np.asarray(reference)
        if ref.ndim != 1 or ref.dtype.kind not in "iu":
            raise ValueError(f"reference must be a one-dimensional array of token ids, got {ref.dtype} {ref.shape}")
        self.ids, self.counts = np.unique(ref.astype(np.int64), return_counts=True)
        self.total = int(ref.size)
        # competition ranking: tokens with equal counts share the best rank (1 + tokens counted more often)
        ordered = np.sort(self.counts)
        self._ranks = 1 + (ordered.size - np.searchsorted(ordered, self.counts, side="right"))

    def _lookup(self, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        lab = np.asarray(labels, dtype=np.int64)
        index = np.clip(np.searchsorted(self.ids, lab), 0, max(self.ids.size - 1, 0))
        found = self.ids[index] == lab if self.ids.size else np.zeros(lab.shape, dtype=bool)
        return index, found

    def per_million(self, labels: ArrayLike) -> np.ndarray:
        """Occurrences of each label per million scored reference tokens (0 where the reference lacks it).

        Parameters
        ----------
        labels : array of int
            Token ids.

        Returns
        -------
        ndarray of float64
            The same shape as ``labels``.
        """
        index, found = self._lookup(labels)
        if self.total == 0:
            return np.zeros(index.shape)
        return np.where(found, self.counts[index] * (1e6 / self.total), 0.0)

    def rank(self, labels: ArrayLike) -> np.ndarray:
        """Each label's rank in the reference by count: 1 is the most frequent.

        Tied tokens share the best rank among them; a token absent from the reference ranks
        one past the distinct reference tokens.

        Parameters
        ----------
        labels : array of int
            Token ids.

        Returns
        -------
        ndarray of int64
            The same shape as ``labels``.
        """
        index, found = self._lookup(labels)
        absent = self.ids.size + 1
        if self.ids.size == 0:
            return np.full(index.shape, absent, dtype=np.int64)
        return np.where(found, self._ranks[index], absent).astype(np.int64)
