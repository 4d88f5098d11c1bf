"""The streaming bootstrap of weighted sums, against plain weighted sums and the classical bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from distill_eval.metrics import bootstrap_intervals, weighted_sum
from distill_eval.metrics import sums as sums_module
from distill_eval.metrics.sums import WeightedSums, bootstrap_sums, poisson_weights


@pytest.fixture(params=["one-block", "blocks-of-64"])
def blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a pass in one block, or in blocks of 64 examples whose edges cut runs."""
    if request.param == "blocks-of-64":
        monkeypatch.setattr(sums_module, "_BLOCK_BYTES", 1)


def declared(n: int, rng: np.random.Generator, n_groups: int = 7):
    """Sums with one indicator column per example (so a pass reveals its own weights) and two families."""
    sums = WeightedSums(n)
    indicators = [sums.column(np.eye(n)[i]) for i in range(n)]
    values = rng.normal(size=n)
    groups = rng.integers(0, n_groups, size=n)
    other = rng.integers(0, 3, size=n)
    plain = sums.column(values)
    family = sums.grouped(groups, n_groups, values)
    counts = sums.grouped(other, 3)
    return sums, indicators, (values, groups, other), (plain, family, counts)


def test_a_pass_equals_the_weighted_sums_of_the_weights_it_drew(blocks: None) -> None:
    rng = np.random.default_rng(0)
    n, k = 150, 300
    sums, indicators, (values, groups, other), (plain, family, counts) = declared(n, rng)
    got = sums.resample(np.random.default_rng(1), k)
    weights = np.stack([got[h] for h in indicators], axis=1)  # (k, n): what each example weighed
    np.testing.assert_array_equal(weights, np.round(weights))
    np.testing.assert_allclose(got[plain], weighted_sum(weights, values), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        got[family], weighted_sum(weights, values, groups=groups, n_groups=7), rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(got[counts], weighted_sum(weights, None, groups=other, n_groups=3), atol=1e-6)


def test_a_pass_with_many_short_runs_still_equals_the_weighted_sums(blocks: None) -> None:
    """Hundreds of group combinations: blocks hold many runs of one or two examples."""
    rng = np.random.default_rng(2)
    n, k = 400, 200
    sums = WeightedSums(n)
    indicators = [sums.column(np.eye(n)[i]) for i in range(n)]
    values = rng.normal(size=n)
    a, b = rng.integers(0, 20, size=n), rng.integers(0, 20, size=n)
    fa, fb = sums.grouped(a, 20, values), sums.grouped(b, 20)
    got = sums.resample(np.random.default_rng(3), k)
    weights = np.stack([got[h] for h in indicators], axis=1)
    np.testing.assert_allclose(got[fa], weighted_sum(weights, values, groups=a, n_groups=20), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[fb], weighted_sum(weights, None, groups=b, n_groups=20), atol=1e-6)


def test_weights_are_poisson_one() -> None:
    w = poisson_weights(4, np.arange(5000), 400).ravel()
    assert w.dtype == np.float32
    assert w.mean() == pytest.approx(1.0, abs=0.005) and w.var() == pytest.approx(1.0, abs=0.01)
    observed = np.bincount(w.astype(int), minlength=6)[:6]
    expected = scipy.stats.poisson.pmf(np.arange(6), 1.0) * w.size
    assert scipy.stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_weights_are_independent_across_examples_and_resamples() -> None:
    # neighbouring examples and resamples (the counters that differ by one bit) do not correlate
    w = poisson_weights(11, np.arange(3000), 256).astype(np.float64)
    for a, b in ((w[:, :-1], w[:, 1:]), (w[:-1], w[1:]), (w[:-16], w[16:]), (w[:-64], w[64:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_a_weight_depends_only_on_seed_example_and_resample() -> None:
    full = poisson_weights(3, np.arange(1000), 300)
    picked = np.array([999, 5, 512, 6, 0])
    # other examples beside them, another order, fewer resamples: the same weights
    np.testing.assert_array_equal(poisson_weights(3, picked, 300), full[:, picked])
    np.testing.assert_array_equal(poisson_weights(3, picked, 77), full[:77, picked])
    out = np.empty((300, 5), dtype=np.float32)
    assert poisson_weights(3, picked, 300, out=out) is out
    assert not np.array_equal(poisson_weights(4, picked, 300), full[:, picked])


def test_one_slice_interval_does_not_move_when_another_slice_changes(blocks: None) -> None:
    # a slices check declares every slice's sums in one pass; the sort by slice memberships
    # used to decide which example drew which weights, so changing slice B moved slice A
    rng = np.random.default_rng(8)
    n = 3000
    teacher, student = rng.random(n) < 0.85, rng.random(n) < 0.8
    in_a = rng.random(n) < 0.3

    def interval_of_a(in_b: np.ndarray):
        sums = WeightedSums(n)
        handles = {}
        for name, mask in (("a", in_a), ("b", in_b)):
            member = mask.astype(np.intp)
            handles[name] = [sums.grouped(member, 2, v) for v in (None, student * 1.0, teacher * 1.0)]

        def retention(name):
            _, s, t = handles[name]
            return lambda sm: sm[s][:, 1] / sm[t][:, 1]

        def gap(name):
            size, s, t = handles[name]
            return lambda sm: (sm[t][:, 1] - sm[s][:, 1]) / sm[size][:, 1]

        stats = {"a:retention": retention("a"), "a:gap": gap("a"), "b:gap": gap("b")}
        res = bootstrap_sums(stats, sums, n_resamples=400, rng=np.random.default_rng(21))
        return res

    first = interval_of_a(rng.random(n) < 0.5)
    second = interval_of_a(rng.random(n) < 0.1)
    assert (first["b:gap"].low, first["b:gap"].high) != (second["b:gap"].low, second["b:gap"].high)
    for name in ("a:retention", "a:gap"):
        assert first[name] == second[name]  # bit for bit: estimate, ends, method, resamples


def test_same_seed_same_sums_and_another_seed_other_sums() -> None:
    rng = np.random.default_rng(5)
    sums, _, _, (plain, family, _) = declared(200, rng)
    first, again = sums.resample(np.random.default_rng(6), 100), sums.resample(np.random.default_rng(6), 100)
    other = sums.resample(np.random.default_rng(7), 100)
    np.testing.assert_array_equal(first[family], again[family])
    assert not np.array_equal(first[plain], other[plain])


def test_block_sums_equal_weighted_sums_of_block_indicators() -> None:
    rng = np.random.default_rng(8)
    sums, _, _, (plain, family, _) = declared(50, rng)
    block = rng.integers(0, 5, size=50)
    indicator = (block[None, :] == np.arange(5)[:, None]).astype(float)
    by_block, reference = sums.blocks(block, 5), sums.weighted(indicator)
    np.testing.assert_allclose(by_block[plain], reference[plain], rtol=1e-12)
    np.testing.assert_allclose(by_block[family], reference[family], rtol=1e-12, atol=1e-12)


def test_intervals_agree_with_the_classical_bootstrap() -> None:
    """Poisson and multinomial resampling agree to order 1/n: same intervals within Monte Carlo error."""
    rng = np.random.default_rng(9)
    n = 2000
    x = rng.exponential(size=n)
    hit = (rng.random(n) < 0.7).astype(float)
    sums = WeightedSums(n)
    total, sx, sh = sums.column(), sums.column(x), sums.column(hit)
    ours = bootstrap_sums(
        {"mean": lambda s: s[sx] / s[total], "ratio": lambda s: s[sx] / s[sh]},
        sums,
        n_resamples=4000,
        rng=np.random.default_rng(10),
    )
    classical = bootstrap_intervals(
        {
            "mean": lambda w: weighted_sum(w, x) / weighted_sum(w),
            "ratio": lambda w: weighted_sum(w, x) / weighted_sum(w, hit),
        },
        n,
        n_resamples=4000,
        rng=np.random.default_rng(11),
    )
    for name in ("mean", "ratio"):
        a, b = ours[name], classical[name]
        assert a.method == b.method == "bca" and a.estimate == pytest.approx(b.estimate, rel=1e-12)
        width = b.high - b.low
        assert a.low == pytest.approx(b.low, abs=0.06 * width) and a.high == pytest.approx(b.high, abs=0.06 * width)


def test_coverage_of_a_proportion_is_near_nominal() -> None:
    rng = np.random.default_rng(12)
    covered = 0
    for _ in range(200):
        hit = (rng.random(300) < 0.8).astype(float)
        sums = WeightedSums(300)
        total, hits = sums.column(), sums.column(hit)
        accuracy = {"acc": lambda s, hits=hits, total=total: s[hits] / s[total]}
        r = bootstrap_sums(accuracy, sums, n_resamples=400, rng=rng)["acc"]
        covered += r.low <= 0.8 <= r.high
    assert 176 <= covered <= 198  # nominal 190 of 200


def test_bad_declarations_are_refused() -> None:
    sums = WeightedSums(3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        sums.column([1.0, 2.0])
    with pytest.raises(ValueError, match="integers"):
        sums.grouped([0.5, 1.0, 0.0], 2)
    with pytest.raises(ValueError, match=r"\[0, n_groups\)"):
        sums.grouped([0, 1, 2], 2)
    with pytest.raises(ValueError, match="n must be"):
        WeightedSums(0)
    with pytest.raises(ValueError, match="must return an array of shape"):
        total = sums.column()
        bootstrap_sums({"bad": lambda s: s[total][:1]}, sums, n_resamples=10, rng=np.random.default_rng(0))
