"""Token-frequency where-fields and slice discovery on token data (units resampled and split by sequence)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from distill_eval import expr
from distill_eval.checks import discovery
from distill_eval.checks.discovery import Discovered, _welch, discover_tokens
from distill_eval.lm.frequency import TokenFrequency
from distill_eval.lm.tokens import IGNORE_INDEX, token_dataset

# -- token frequency -----------------------------------------------------------------


def test_scored_labels_are_the_shifted_labels_of_scored_positions() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (6, 12))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    labels[2, :5] = IGNORE_INDEX  # a prompt: not scored
    data = token_dataset(ids, mask, labels)
    expected = [  # brute force: the logits at t score labels[t + 1] when both are attended and it is not -100
        labels[s, t + 1]
        for s in range(6)
        for t in range(11)
        if mask[s, t] and mask[s, t + 1] and labels[s, t + 1] != IGNORE_INDEX
    ]
    assert data.scored_labels().tolist() == expected
    assert len(expected) == data.n_scored


def test_frequency_and_rank_match_a_hand_count() -> None:
    rng = np.random.default_rng(1)
    reference = rng.choice(30, size=5000, p=np.arange(30, 0, -1) / np.arange(30, 0, -1).sum())
    reference = np.concatenate([reference, [40, 41, 41]])  # a tie at count 1 and 2 among rare tokens
    queried = np.concatenate([np.arange(45), rng.integers(0, 45, 200)])  # 30..39, 42..44: never in the reference
    counts = Counter(reference.tolist())
    freq = TokenFrequency(reference)
    expected_freq = [counts.get(t, 0) / len(reference) * 1e6 for t in queried.tolist()]
    # rank: 1 + distinct tokens counted strictly more often (ties share the best rank); absent: distinct + 1
    expected_rank = [
        1 + sum(c > counts[t] for c in counts.values()) if t in counts else len(counts) + 1 for t in queried.tolist()
    ]
    np.testing.assert_allclose(freq.per_million(queried), expected_freq, rtol=1e-12)
    assert freq.rank(queried).tolist() == expected_rank
    # the same ranking as scipy's "min" method on the negated counts
    tokens = sorted(counts)
    ranks = stats.rankdata([-counts[t] for t in tokens], method="min")
    assert freq.rank(np.array(tokens)).tolist() == ranks.astype(int).tolist()
    assert freq.rank(np.array([counts.most_common(1)[0][0]])).tolist() == [1]


def test_frequency_of_an_empty_reference_is_zero_and_every_rank_is_one() -> None:
    freq = TokenFrequency(np.array([], dtype=np.int64))
    assert freq.per_million(np.array([3, 4])).tolist() == [0.0, 0.0]
    assert freq.rank(np.array([3, 4])).tolist() == [1, 1]


# -- discovery -------------------------------------------------------------------------


def token_world(seed: int, *, n_seq: int = 160, length: int = 40, spread: float = 0.0):
    """Sequences of labels drawn from a skewed vocabulary; a teacher right 80% of the time, a student that
    loses 15% of the teacher's right tokens, independently of every field.

    ``spread``: how much sequences differ in how often the student loses (a per-sequence rate
    drawn from a Beta distribution with that much variance), making a sequence's tokens correlated.
    """
    rng = np.random.default_rng(seed)
    vocab = 24
    p = 1.0 / np.arange(1, vocab + 1)
    sequence = np.repeat(np.arange(n_seq) * 3 + 7, length)  # sparse, non-contiguous sequence indices
    n = sequence.size
    label = rng.choice(vocab, size=n, p=p / p.sum())
    teacher_hit = rng.random(n) < 0.8
    # drawn apart from teacher_hit: were it the label wherever the teacher is right, groups of it would differ in
    # how often the teacher is right, hence in how often the student can lose (a real effect, not a null)
    teacher_pred = rng.choice(vocab, size=n, p=p / p.sum())
    position = np.tile(np.arange(1, length + 1), n_seq)
    conf = rng.uniform(0.2, 1.0, n)
    topic = rng.choice(["code", "prose", "math", "lists"], size=n_seq)
    fields = {
        "label": label,
        "teacher_pred": teacher_pred,
        "position": position,
        "teacher_conf": conf,
        "teacher_entropy": -np.log(conf),
        "token_frequency": TokenFrequency(label).per_million(label),
        "meta.topic": np.repeat(topic, length),
    }
    # the student's base loss rate, per sequence
    if spread:
        a = 0.15 * (1 / spread - 1)
        rate = np.repeat(rng.beta(a, a * (1 - 0.15) / 0.15, size=n_seq), length)
    else:
        rate = np.full(n, 0.15)
    student_hit = teacher_hit & (rng.random(n) >= rate)
    return sequence, fields, teacher_hit, student_hit


def run(fields, sequence, teacher_hit, student_hit, *, seed: int = 0, min_support: int = 60, top: int = 5):
    found = discover_tokens(
        fields,
        sequence=sequence,
        teacher_hit=teacher_hit,
        student_hit=student_hit,
        min_support=min_support,
        top=top,
        rng=np.random.default_rng(seed),
    )
    n = sequence.size
    assert len(found) <= top
    for f in found:  # what a user gets by pasting the where: exactly the reported tokens and numbers
        mask = expr.parse(f.where).evaluate(fields, n=n)
        assert f.ids is None and f.support == mask.sum() >= min_support
        assert f.sequences == np.unique(sequence[mask]).size
        assert f.student_score == pytest.approx(student_hit[mask].mean())
        assert f.teacher_score == pytest.approx(teacher_hit[mask].mean())
        assert 0 <= f.p_value <= f.p_adjusted <= 0.05 and f.effect > 0
    return found


def test_a_student_wrong_on_one_label_token_is_found_by_that_token() -> None:
    sequence, fields, teacher_hit, student_hit = token_world(0)
    broken = fields["label"] == 5
    student_hit = student_hit & ~broken  # wrong exactly on label 5, as elsewhere otherwise
    found = run(fields, sequence, teacher_hit, student_hit)
    assert found and found[0].where == "label == 5"
    assert found[0].p_adjusted < 1e-6
    assert found[0].support == broken.sum()
    # any other group reported holds broken tokens (e.g. the frequency band label 5 falls in)
    assert all(broken[expr.parse(f.where).evaluate(fields)].any() for f in found)


def test_a_student_wrong_from_position_20_on_is_found_as_a_late_position_band() -> None:
    sequence, fields, teacher_hit, student_hit = token_world(1)
    late = fields["position"] >= 20
    student_hit = student_hit & ~late
    found = run(fields, sequence, teacher_hit, student_hit)
    assert found and "position" in found[0].where and found[0].p_adjusted < 1e-6
    mask = expr.parse(found[0].where).evaluate(fields, n=sequence.size)
    assert late[mask].all()  # the band lies inside the broken positions
    assert all("position" in f.where or (late & expr.parse(f.where).evaluate(fields)).any() for f in found)


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_a_uniformly_worse_student_yields_nothing_at_alpha(spread: float) -> None:
    # with correlated sequences (spread 0.3) the student has bad sequences, but no group is worse than others
    reported = 0
    for seed in range(20):
        sequence, fields, teacher_hit, student_hit = token_world(100 + seed, n_seq=80, spread=spread)
        reported += bool(run(fields, sequence, teacher_hit, student_hit, seed=seed))
    # family-wise alpha 0.05: one report in 20 is expected; 4 or more has probability < 2%
    assert reported <= 3, reported


def test_a_token_level_test_would_find_groups_of_sequences_the_sequence_test_does_not() -> None:
    # The reason for the clustered test: with correlated sequences, a topic (a group of whole
    # sequences) often looks worse to a token-level Welch test by chance; the sequence test rarely.
    welch = clustered = 0
    for seed in range(40):
        sequence, fields, teacher_hit, student_hit = token_world(200 + seed, n_seq=80, spread=0.5)
        d = teacher_hit.astype(float) - student_hit
        unit = np.unique(sequence, return_inverse=True)[1]
        contrast = discovery._SequenceContrast(d, unit, np.ones(d.size, dtype=bool))
        group = fields["meta.topic"] == "code"
        welch += _welch(d[group], d[~group])[1] < 0.05
        clustered += contrast.test(group)[1] < 0.05
    # at level 0.05, 2 in 40 are expected of a test that holds its level
    assert welch >= 8 and clustered <= 4, (welch, clustered)


def test_the_sequence_test_matches_a_cluster_robust_regression() -> None:
    # effect and standard error against an independent computation: OLS of d on [1, in-group] with the
    # CR1-style sandwich G/(G-1) * (X'X)^-1 (sum_g X_g' e_g e_g' X_g) (X'X)^-1 (no small-sample n/(n-k) factor)
    sequence, fields, teacher_hit, student_hit = token_world(3, n_seq=50, spread=0.3)
    d = teacher_hit.astype(float) - student_hit
    group = fields["position"] < 12
    unit = np.unique(sequence, return_inverse=True)[1]
    effect, se = discovery._SequenceContrast(d, unit, np.ones(d.size, dtype=bool)).spread(group)
    x = np.column_stack([np.ones(d.size), group.astype(float)])
    bread = np.linalg.inv(x.T @ x)
    beta = bread @ x.T @ d
    resid = d - x @ beta
    meat = np.zeros((2, 2))
    for g in np.unique(unit):
        score = x[unit == g].T @ resid[unit == g]
        meat += np.outer(score, score)
    g_count = np.unique(unit).size
    cov = g_count / (g_count - 1) * bread @ meat @ bread
    assert effect == pytest.approx(beta[1], rel=1e-10)
    assert se == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-8)


def test_the_split_never_puts_one_sequence_in_both_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    halves = []
    original = discovery._SequenceContrast.__init__

    def spy(self, d, unit, half):
        halves.append(half.copy())
        original(self, d, unit, half)

    monkeypatch.setattr(discovery._SequenceContrast, "__init__", spy)
    sequence, fields, teacher_hit, student_hit = token_world(4)
    order = np.random.default_rng(0).permutation(sequence.size)  # tokens of a sequence need not be adjacent
    shuffled = {k: v[order] for k, v in fields.items()}
    run(shuffled, sequence[order], teacher_hit[order], student_hit[order] & (shuffled["label"] != 2))
    explore, confirm = halves
    assert (explore ^ confirm).all()  # every token in exactly one half
    seq = sequence[order]
    assert not set(seq[explore]) & set(seq[confirm])
    assert abs(len(set(seq[explore])) - len(set(seq[confirm]))) <= 1


def test_the_same_seed_gives_the_same_report_and_json_round_trips() -> None:
    sequence, fields, teacher_hit, student_hit = token_world(5)
    student_hit = student_hit & (fields["label"] != 3)
    first = run(fields, sequence, teacher_hit, student_hit, seed=7)
    assert first == run(fields, sequence, teacher_hit, student_hit, seed=7)
    group = first[0]
    assert Discovered.from_json(group.to_json()) == group
    with_ci = Discovered.from_json({**group.to_json(), "gap_ci": [0.1, 0.2]})
    assert with_ci.gap_ci == (0.1, 0.2) and with_ci.to_json()["gap_ci"] == [0.1, 0.2]


def test_groups_in_too_few_sequences_are_not_reported() -> None:
    # the student is wrong on every token of 3 sequences: many tokens, but too few sequences to tell
    sequence, fields, teacher_hit, student_hit = token_world(6, n_seq=100)
    bad = np.isin(sequence, np.unique(sequence)[:3])
    fields["meta.batch"] = np.where(bad, "odd", "even")
    found = run(fields, sequence, teacher_hit, student_hit & ~bad, min_support=30)
    assert all(f.where != "meta.batch == 'odd'" for f in found)
