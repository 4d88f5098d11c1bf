"""Token-weighted and per-sequence means; the bootstrap resamples sequences, through the weighted-sums engine."""

from __future__ import annotations

import numpy as np
import pytest

from distill_eval.lm.cluster import (
    SequenceSums,
    cluster_bootstrap,
    per_sequence_means,
    sequence_mean,
    token_weighted_mean,
)
from distill_eval.metrics.sums import WeightedSums, bootstrap_sums

SEQUENCE = np.array([4, 4, 4, 7, 7, 9, 9, 9, 9, 12])
VALUES = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 0.0, 0.0, 4.0, 4.0, 5.0])


def test_means_by_hand() -> None:
    assert token_weighted_mean(VALUES) == pytest.approx(49 / 10)
    units, means = per_sequence_means(VALUES, SEQUENCE)
    assert units.tolist() == [4, 7, 9, 12] and means.tolist() == [2.0, 15.0, 2.0, 5.0]
    assert sequence_mean(VALUES, SEQUENCE) == pytest.approx(24 / 4)
    where = VALUES > 1.5  # drops sequence 9's zeros and sequence 4's first token
    assert token_weighted_mean(VALUES, where=where) == pytest.approx(48 / 7)
    assert sequence_mean(VALUES, SEQUENCE, where=where) == pytest.approx((2.5 + 15 + 4 + 5) / 4)
    assert np.isnan(token_weighted_mean(VALUES, where=np.zeros(10, dtype=bool)))
    assert np.isnan(sequence_mean(VALUES, SEQUENCE, where=np.zeros(10, dtype=bool)))


def test_point_estimates_of_the_statistics_equal_the_plain_means() -> None:
    sums = SequenceSums(SEQUENCE)
    where = VALUES > 1.5
    stats = {
        "token": sums.token_mean(VALUES),
        "token_where": sums.token_mean(VALUES, where=where),
        "sequence": sums.sequence_mean(VALUES),
        "sequence_where": sums.sequence_mean(VALUES, where=where),
    }
    totals = sums.totals()
    got = {name: float(stat(totals)[0]) for name, stat in stats.items()}
    assert got == pytest.approx(
        {
            "token": token_weighted_mean(VALUES),
            "token_where": token_weighted_mean(VALUES, where=where),
            "sequence": sequence_mean(VALUES, SEQUENCE),
            "sequence_where": sequence_mean(VALUES, SEQUENCE, where=where),
        }
    )
    assert totals[sums.tokens][0] == 10 and totals[sums.sequences][0] == 4


def test_a_resample_weighs_whole_sequences() -> None:
    """Under any weights per sequence, a statistic is the token mean with each token weighing its sequence's weight."""
    rng = np.random.default_rng(0)
    sequence = np.sort(rng.integers(0, 30, size=400))
    values = rng.normal(size=400)
    where = rng.random(400) < 0.7
    sums = SequenceSums(sequence)
    token, token_where, seq = sums.token_mean(values), sums.token_mean(values, where=where), sums.sequence_mean(values)
    weights = rng.poisson(1.0, size=(50, len(sums.units))).astype(float)
    resampled = sums.sums.weighted(weights)
    per_token = weights[:, np.searchsorted(sums.units, sequence)]  # each token weighs its sequence's weight
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(token(resampled), (per_token * values).sum(1) / per_token.sum(1))
        np.testing.assert_allclose(
            token_where(resampled), (per_token * values * where).sum(1) / (per_token * where).sum(1)
        )
        means = per_sequence_means(values, sequence)[1]
        np.testing.assert_allclose(seq(resampled), (weights * means).sum(1) / weights.sum(1))


def test_the_interval_is_a_sequence_bootstrap_wider_than_a_token_bootstrap() -> None:
    """Every token of a sequence carries its sequence's value: resampling sequences is the honest bootstrap."""
    rng = np.random.default_rng(1)
    n_sequences, per_sequence = 60, 16
    sequence_values = rng.normal(size=n_sequences)
    sequence = np.repeat(np.arange(n_sequences), per_sequence)
    values = sequence_values[sequence]

    sums = SequenceSums(sequence)
    clustered = cluster_bootstrap({"mean": sums.token_mean(values)}, sums, rng=np.random.default_rng(5))["mean"]

    by_sequence = WeightedSums(n_sequences)
    total, count = by_sequence.column(sequence_values), by_sequence.column()
    seq_level = bootstrap_sums(
        {"mean": lambda s: s[total] / s[count]}, by_sequence, rng=np.random.default_rng(5)
    )["mean"]  # fmt: skip

    by_token = WeightedSums(values.size)
    t_total, t_count = by_token.column(values), by_token.column()
    token_level = bootstrap_sums(
        {"mean": lambda s: s[t_total] / s[t_count]}, by_token, rng=np.random.default_rng(5)
    )["mean"]  # fmt: skip

    assert clustered.estimate == pytest.approx(values.mean())
    assert (clustered.low, clustered.high) == pytest.approx((seq_level.low, seq_level.high), rel=1e-6)
    clustered_width = clustered.high - clustered.low
    token_width = token_level.high - token_level.low
    assert clustered_width > 3 * token_width  # sqrt(16) = 4 times wider in expectation


def test_paired_differences_share_resamples() -> None:
    rng = np.random.default_rng(2)
    sequence = np.repeat(np.arange(40), 8)
    teacher = rng.normal(size=sequence.size)
    student = teacher + 0.5 + 0.01 * rng.normal(size=sequence.size)  # a near-constant gap
    sums = SequenceSums(sequence)
    t, s = sums.token_mean(teacher), sums.token_mean(student)
    got = cluster_bootstrap(
        {"gap": lambda x: s(x) - t(x), "student": s}, sums, n_resamples=300, rng=np.random.default_rng(0)
    )
    assert got["gap"].high - got["gap"].low < 0.05 < got["student"].high - got["student"].low


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: SequenceSums(np.array([], dtype=int)), "non-empty one-dimensional"),
        (lambda: SequenceSums(np.array([0.5, 1.0])), "integer sequence indices"),
        (lambda: SequenceSums(SEQUENCE).token_sum(VALUES[:3]), r"values must have shape \(10,\)"),
        (lambda: SequenceSums(SEQUENCE).token_mean(VALUES, where=VALUES), "where must be a boolean array"),
        (lambda: per_sequence_means(VALUES, SEQUENCE[:4]), r"values must have shape \(4,\)"),
        (lambda: token_weighted_mean(np.ones((2, 2))), "one-dimensional"),
    ],
)
def test_malformed_arrays_are_value_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
