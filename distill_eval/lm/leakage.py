"""Train/test leakage on token data: evaluation sequences that also occur in the training data.

Two tests, both on the *attended* tokens (``attention_mask == 1``; padding never counts):

- an **exact duplicate** is an evaluation sequence whose attended tokens, or whose scored
  tokens (the labels the next-token scores are computed against), equal those of some
  training sequence;
- an **n-gram overlap** is an evaluation sequence holding at least one run of ``n``
  consecutive attended tokens (13 by default, the usual contamination test of language-model
  evaluations) that also occurs in some training sequence. A window that reaches a position
  outside the attention mask is no n-gram.

Sequences are compared by 128-bit BLAKE2b digests and n-grams by a 64-bit hash of their
tokens (each token mixed with SplitMix64, combined polynomially, the result mixed again): a
false match needs a hash collision (probability about ``pairs / 2**64``). The evaluation
data's digests and n-gram hashes are held in memory; the training data is read in blocks of
sequences, so memory beyond the evaluation data stays one block's worth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distill_eval.lm.tokens import TokenDataset, scored_positions

__all__ = ["DEFAULT_NGRAM", "TokenLeaks", "find_token_leaks", "ngram_hashes"]

#: the n of the n-gram overlap test when a check does not give ``ngram``
DEFAULT_NGRAM = 13

#: training sequences hashed per block
_BLOCK = 4096

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)  # odd: the polynomial combination is a bijection per position


@dataclass(frozen=True)
class TokenLeaks:
    """Which evaluation sequences occur in the training data, and where.

    Attributes
    ----------
    exact_train : ndarray of shape (n_eval,)
        int64: the first training sequence that an evaluation sequence duplicates exactly, or -1.
    ngram_train : ndarray of shape (n_eval,)
        int64: the first training sequence holding one of the evaluation sequence's n-grams
        (its first such n-gram in reading order), or -1.
    ngram : int
        The ``n`` of the n-grams.
    """

    exact_train: np.ndarray
    ngram_train: np.ndarray
    ngram: int

    @property
    def exact(self) -> np.ndarray:
        """Boolean mask of exact duplicates."""
        return self.exact_train >= 0

    @property
    def overlap(self) -> np.ndarray:
        """Boolean mask of sequences sharing an n-gram with the training data."""
        return self.ngram_train >= 0

    @property
    def leaked(self) -> np.ndarray:
        """Boolean mask of sequences flagged by either test."""
        return self.exact | self.overlap


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def ngram_hashes(input_ids: np.ndarray, attention_mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hash of every window of ``n`` consecutive tokens, and which windows are n-grams.

    Parameters
    ----------
    input_ids, attention_mask : array of shape (n_sequences, length)
        Token ids (>= 0) and the 0/1 attention mask.
    n : int
        The window length, >= 1.

    Returns
    -------
    hashes : ndarray of uint64 of shape (n_sequences, max(length - n + 1, 0))
        ``hashes[s, t]`` hashes ``input_ids[s, t:t + n]``; equal windows hash equally.
    valid : ndarray of bool, the same shape
        True where every token of the window is attended.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask) != 0
    s, length = ids.shape
    width = max(length - n + 1, 0)
    mixed = _mix(ids.astype(np.uint64) + _GOLDEN)
    h = np.zeros((s, width), dtype=np.uint64)
    for i in range(n):
        h = h * _BASE + mixed[:, i : i + width]
    attended = np.zeros((s, length + 1), dtype=np.int64)
    np.cumsum(mask, axis=1, out=attended[:, 1:])
    valid = (attended[:, n:] - attended[:, : length + 1 - n]) == n if width else np.zeros((s, 0), dtype=bool)
    return _mix(h), valid


def _digests(data: TokenDataset, start: int, stop: int) -> list[tuple[bytes, bytes | None]]:
    """Per sequence: the digest of its attended tokens, and of its scored tokens (None when it has none)."""
    ids = data.input_ids[start:stop]
    mask = data.attention_mask[start:stop] != 0
    scored = scored_positions(data.labels[start:stop], data.attention_mask[start:stop])
    targets = data.labels[start:stop, 1:]
    out = []
    for row in range(ids.shape[0]):
        tokens = np.ascontiguousarray(ids[row][mask[row]], dtype=np.int64)
        content = np.ascontiguousarray(targets[row][scored[row, :-1]], dtype=np.int64)
        whole = hashlib.blake2b(b"a" + tokens.tobytes(), digest_size=16).digest()
        part = hashlib.blake2b(b"s" + content.tobytes(), digest_size=16).digest() if content.size else None
        out.append((whole, part))
    return out


def find_token_leaks(
    evaluation: TokenDataset,
    train: TokenDataset,
    *,
    ngram: int = DEFAULT_NGRAM,
    block: int = _BLOCK,
    progress: Callable[[int, int], None] | None = None,
) -> TokenLeaks:
    """Find the evaluation sequences that duplicate, or share an n-gram with, a training sequence.

    Parameters
    ----------
    evaluation, train : TokenDataset
        The evaluation and training token data.
    ngram : int, default=13
        The n of the n-gram overlap test, >= 1.
    block : int, default=4096
        Training sequences hashed at a time.
    progress : callable, optional
        ``(done, total)``: called after each block with the training sequences read so far and in all.

    Returns
    -------
    TokenLeaks
        Per evaluation sequence, the first training sequence it duplicates and the first that
        shares one of its n-grams.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n_eval, n_train = evaluation.n_sequences, train.n_sequences

    # the evaluation side: digests -> the evaluation rows holding them; its distinct n-grams, sorted
    wanted: dict[bytes, list[int]] = {}
    for row, (whole, part) in enumerate(_digests(evaluation, 0, n_eval)):
        wanted.setdefault(whole, []).append(row)
        if part is not None:
            wanted.setdefault(part, []).append(row)
    e_hash, e_valid = ngram_hashes(evaluation.input_ids, evaluation.attention_mask, ngram)
    distinct = np.unique(e_hash[e_valid])
    first_train = np.full(distinct.size, -1, dtype=np.int64)

    exact_train = np.full(n_eval, -1, dtype=np.int64)
    for start in range(0, n_train, block):
        stop = min(start + block, n_train)
        for offset, (whole, part) in enumerate(_digests(train, start, stop)):
            for digest in (whole, part):
                rows = wanted.get(digest) if digest is not None else None
                if rows:
                    hit = np.asarray(rows)
                    hit = hit[exact_train[hit] < 0]
                    exact_train[hit] = start + offset
        if distinct.size:
            t_hash, t_valid = ngram_hashes(train.input_ids[start:stop], train.attention_mask[start:stop], ngram)
            seq = np.broadcast_to(np.arange(start, stop)[:, None], t_hash.shape)[t_valid]
            flat = t_hash[t_valid]
            pos = np.minimum(np.searchsorted(distinct, flat), distinct.size - 1)
            found = distinct[pos] == flat
            pos, seq = pos[found], seq[found]
            pos, first = np.unique(pos, return_index=True)  # row-major: the earliest training sequence
            new = first_train[pos] < 0
            first_train[pos[new]] = seq[first][new]
        if progress is not None:
            progress(stop, n_train)

    ngram_train = np.full(n_eval, -1, dtype=np.int64)
    if distinct.size:
        where = np.searchsorted(distinct, e_hash)
        where = np.minimum(where, distinct.size - 1)
        owner = np.where(e_valid, first_train[where], -1)
        has = (owner >= 0).any(axis=1)
        ngram_train[has] = owner[has, np.argmax(owner[has] >= 0, axis=1)]
    return TokenLeaks(exact_train=exact_train, ngram_train=ngram_train, ngram=ngram)
