"""Token leakage (exact duplicates, shared n-grams) against a brute-force Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from distill_eval.lm.leakage import find_token_leaks, ngram_hashes
from distill_eval.lm.tokens import IGNORE_INDEX, token_dataset


def _attended(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    return [[int(t) for t, m in zip(row, mrow, strict=True) if m] for row, mrow in zip(ids, mask, strict=True)]


def reference(evaluation, train, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per evaluation sequence: exact duplicate? shares an n-gram of consecutive attended positions?"""

    def windows(data) -> list[set[tuple[int, ...]]]:
        out = []
        for row, mrow in zip(data.input_ids, data.attention_mask, strict=True):
            grams = set()
            for t in range(len(row) - n + 1):
                if all(mrow[t : t + n]):
                    grams.add(tuple(int(v) for v in row[t : t + n]))
            out.append(grams)
        return out

    def scored(data) -> list[tuple[int, ...]]:
        sc = data.scored()
        return [tuple(int(v) for v in data.labels[s, 1:][sc[s, :-1]]) for s in range(data.n_sequences)]

    e_whole = [tuple(r) for r in _attended(evaluation.input_ids, evaluation.attention_mask)]
    t_whole = {tuple(r) for r in _attended(train.input_ids, train.attention_mask)}
    e_part, t_part = scored(evaluation), {p for p in scored(train) if p}
    exact = np.array([w in t_whole or (p and p in t_part) for w, p in zip(e_whole, e_part, strict=True)], dtype=bool)
    train_grams = set().union(*windows(train))
    overlap = np.array([bool(g & train_grams) for g in windows(evaluation)], dtype=bool)
    return exact, overlap


def _random(rng: np.random.Generator, s: int, length: int, vocab: int, name: str):
    ids = rng.integers(0, vocab, size=(s, length))
    lengths = rng.integers(length // 2, length + 1, size=s)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def test_planted_duplicates_and_ngrams_match_the_reference() -> None:
    rng = np.random.default_rng(0)
    n = 13
    t_ids, t_mask = _random(rng, 60, 40, 50, "train")
    e_ids, e_mask = _random(rng, 40, 40, 50, "eval")
    # planted: eval 3 is train 7 exactly; eval 10 holds train 20's tokens 5..18 (a 13-gram and more)
    e_ids[3], e_mask[3] = t_ids[7], t_mask[7]
    e_ids[10, 2:15], e_mask[10, :17] = t_ids[20, 5:18], 1
    # planted: eval 30 shares only a 12-gram (not counted at n = 13)
    e_ids[30, 0:12], e_mask[30, :20] = t_ids[25, 0:12], 1
    e_ids[30, 12] = (t_ids[25, 12] + 1) % 50
    evaluation = token_dataset(e_ids, e_mask, name="eval")
    train = token_dataset(t_ids, t_mask, name="train")
    found = find_token_leaks(evaluation, train, ngram=n, block=7)  # several blocks
    exact, overlap = reference(evaluation, train, n)
    assert found.exact.tolist() == exact.tolist()
    assert found.overlap.tolist() == overlap.tolist()
    assert found.exact[3] and found.exact_train[3] == 7
    assert found.overlap[10] and found.ngram_train[10] == 20
    assert not found.overlap[30]
    assert exact.sum() == 1 and overlap.sum() == 2  # random tokens over 50 ids share no other 13-gram
    # a shorter n finds the 12-gram; the reference agrees at every n
    for k in (1, 2, 3, 12):
        found = find_token_leaks(evaluation, train, ngram=k, block=16)
        assert found.overlap.tolist() == reference(evaluation, train, k)[1].tolist(), k
    assert find_token_leaks(evaluation, train, ngram=12).overlap[30]


def test_clean_data_finds_nothing() -> None:
    rng = np.random.default_rng(1)
    t_ids, t_mask = _random(rng, 50, 30, 1000, "train")
    e_ids, e_mask = _random(rng, 50, 30, 1000, "eval")
    found = find_token_leaks(token_dataset(e_ids, e_mask), token_dataset(t_ids, t_mask), ngram=13)
    assert not found.leaked.any()
    assert (found.exact_train == -1).all() and (found.ngram_train == -1).all()


def test_ngrams_across_padding_or_the_mask_do_not_count() -> None:
    gram = np.arange(1, 14)
    # training: the 13 tokens are in the row, but position 6 is masked out (a hole) -> no 13-gram
    t_ids = np.concatenate([gram, [0, 0]])[None, :]
    t_mask = np.ones_like(t_ids)
    t_mask[0, 6] = 0
    t_mask[0, 13:] = 0
    # evaluation: the 13 tokens, the last one padding (masked) -> no 13-gram either
    e_ids = np.stack([np.concatenate([gram, [0, 0]]), np.concatenate([[99, 98], gram])])
    e_mask = np.ones_like(e_ids)
    e_mask[0, 12:] = 0
    train = token_dataset(t_ids, t_mask, name="train")
    evaluation = token_dataset(e_ids, e_mask, name="eval")
    found = find_token_leaks(evaluation, train, ngram=13)
    assert not found.overlap.any()
    assert reference(evaluation, train, 13)[1].tolist() == [False, False]
    # with the hole attended, the second evaluation sequence (gram at offset 2) overlaps; the first still not
    t_mask[0, 6] = 1
    found = find_token_leaks(evaluation, token_dataset(t_ids, t_mask, name="train"), ngram=13)
    assert found.overlap.tolist() == [False, True]


def test_scored_content_duplicates_count_although_prompts_differ() -> None:
    # the same completion after different prompts: the scored tokens are equal, the attended ones not
    t_ids = np.array([[5, 6, 7, 8, 9, 10]])
    t_lab = np.array([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, 10]])
    e_ids = np.array([[1, 2, 7, 8, 9, 10], [5, 6, 7, 8, 9, 11]])
    e_lab = np.array([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, 10], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, 11]])
    train = token_dataset(t_ids, labels=t_lab)
    evaluation = token_dataset(e_ids, labels=e_lab)
    found = find_token_leaks(evaluation, train, ngram=13)
    assert found.exact.tolist() == [True, False]
    assert reference(evaluation, train, 13)[0].tolist() == [True, False]


def test_ngram_hashes_equal_windows_hash_equally() -> None:
    ids = np.array([[1, 2, 3, 1, 2, 3, 4]])
    h, valid = ngram_hashes(ids, np.ones_like(ids), 3)
    assert valid.all() and h.shape == (1, 5)
    assert h[0, 0] == h[0, 3] and len(set(h[0].tolist())) == 4
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngram_hashes(ids, np.ones_like(ids), 0)
