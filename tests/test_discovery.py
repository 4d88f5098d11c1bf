"""Slice discovery against planted truth: broken groups are found, healthy students yield nothing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from distill_eval import expr
from distill_eval import metrics as M
from distill_eval.checks.discovery import Discovered, discover
from distill_eval.errors import CheckError

N = 4000
C = 10


class LazyFields(Mapping[str, np.ndarray]):
    """Like slices._Fields: computes a field on first read, and has no labels in agreement mode."""

    def __init__(self, values: Mapping[str, np.ndarray], *, labels: bool = True):
        self._values = dict(values)
        self._labels = labels
        self.read: list[str] = []

    def __getitem__(self, key: str) -> np.ndarray:
        if key == "label" and not self._labels:
            raise CheckError("check 's' (slices) needs labels, but dataset 'test' has none")
        if key not in self._values:
            raise KeyError(key)
        self.read.append(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        yield from sorted(expr.FIELDS)
        yield from (k for k in self._values if k.startswith("meta."))

    def __len__(self) -> int:
        return len(expr.FIELDS) + sum(k.startswith("meta.") for k in self._values)

    def __contains__(self, key: object) -> bool:
        return key in expr.FIELDS or key in self._values


def world(seed: int, n: int = N, x: np.ndarray | None = None, **meta: np.ndarray):
    """Random labels, a teacher with random logits, inputs and meta columns unrelated to anything."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, size=n)
    logits = rng.normal(size=(n, C))
    probs = M.softmax(logits)
    ids = np.array([f"ex{i}" for i in range(n)])
    if x is None:
        x = rng.normal(size=(n, 5))
    fields = {
        "label": labels,
        "id": ids,
        "teacher_pred": probs.argmax(axis=1),
        "teacher_conf": probs.max(axis=1),
        "teacher_entropy": M.entropy(probs),
        "meta.region": rng.choice(["north", "south", "east", "west"], p=[0.1, 0.3, 0.3, 0.3], size=n),
        "meta.age": rng.uniform(18, 90, size=n),
    }
    fields.update({f"meta.{k}": v for k, v in meta.items()})
    return rng, fields, ids, x, logits


def hits(rng: np.random.Generator, broken: np.ndarray, *, broken_rate: float = 0.4, base_rate: float = 0.88):
    teacher_hit = rng.random(len(broken)) < 0.9
    student_hit = np.where(broken, rng.random(len(broken)) < broken_rate, rng.random(len(broken)) < base_rate)
    return teacher_hit, student_hit


def run(fields, ids, x, logits, teacher_hit, student_hit, *, seed: int = 0, min_support: int = 30, top: int = 5):
    found = discover(
        fields,
        ids=ids,
        x=x,
        teacher_logits=logits,
        teacher_hit=teacher_hit,
        student_hit=student_hit,
        min_support=min_support,
        top=top,
        rng=np.random.default_rng(seed),
    )
    check_report(found, fields, ids, teacher_hit, student_hit, min_support=min_support, top=top)
    return found


def members(found: Discovered, fields, ids: np.ndarray) -> np.ndarray:
    """What a user gets: the pasted where-expression evaluated, or the listed ids."""
    if found.where is not None:
        return expr.parse(found.where).evaluate(fields, n=len(ids))
    return np.isin(ids, np.asarray(found.ids))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def check_report(found, fields, ids, teacher_hit, student_hit, *, min_support: int, top: int) -> None:
    """Invariants every report keeps, whatever the data."""
    assert len(found) <= top
    assert [f.effect for f in found] == sorted((f.effect for f in found), reverse=True)
    masks = [members(f, fields, ids) for f in found]
    for i, mask in enumerate(masks):  # no group is mostly inside one listed before it
        assert all((mask & earlier).sum() < 0.9 * mask.sum() for earlier in masks[:i])
    for f in found:
        assert (f.where is None) == (f.ids is not None) == f.source.startswith("cluster:")
        mask = members(f, fields, ids)
        assert f.support == mask.sum() >= min_support
        assert f.student_score == pytest.approx(student_hit[mask].mean())
        assert f.teacher_score == pytest.approx(teacher_hit[mask].mean())
        assert f.gap == pytest.approx(f.teacher_score - f.student_score)
        assert 0 <= f.p_value <= f.p_adjusted <= 0.05
        assert f.effect > 0


def test_a_broken_meta_value_is_found_with_a_where_that_selects_it() -> None:
    rng, fields, ids, x, logits = world(0)
    north = fields["meta.region"] == "north"
    teacher_hit, student_hit = hits(rng, north)

    found = run(LazyFields(fields), ids, x, logits, teacher_hit, student_hit)

    assert found, "the broken region was not found"
    first = found[0]
    assert first.where == "meta.region == 'north'"
    assert (first.name, first.source, first.ids) == ("meta.region == 'north'", "meta", None)
    np.testing.assert_array_equal(expr.parse(first.where).evaluate(fields, n=N), north)
    assert first.support == north.sum()
    assert first.gap > 0.4
    assert first.p_adjusted < 1e-6


def test_a_broken_region_of_input_space_is_found_as_an_input_cluster() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10.0, size=(6, 5))
    blob = rng.integers(0, 6, size=N)
    x = centres[blob] + rng.normal(size=(N, 5))
    _, fields, ids, x, logits = world(1, x=x)
    broken = blob == 2
    teacher_hit, student_hit = hits(rng, broken, broken_rate=0.45)

    found = run(fields, ids, x, logits, teacher_hit, student_hit)

    assert found, "the broken blob was not found"
    first = found[0]
    assert first.source == "cluster:inputs"
    assert first.name.startswith("input cluster ")
    assert first.where is None
    inside = members(first, fields, ids)
    assert (inside & broken).sum() / inside.sum() >= 0.9  # the worst group found lies in the blob
    blob = [f for f in found if f.source == "cluster:inputs" and jaccard(members(f, fields, ids), broken) >= 0.9]
    assert blob, "no discovered cluster matches the broken blob"


def test_a_numeric_column_broken_above_a_threshold_is_found_as_a_band() -> None:
    rng, fields, ids, x, logits = world(2)
    old = fields["meta.age"] >= 75
    teacher_hit, student_hit = hits(rng, old)

    found = run(fields, ids, x, logits, teacher_hit, student_hit)

    assert found
    first = found[0]
    assert first.source == "meta"
    assert first.where.startswith("meta.age >= ")  # the open-ended top band
    selected = members(first, fields, ids)
    assert (selected & old).sum() / selected.sum() >= 0.75  # mostly the broken examples
    assert (selected & old).sum() / old.sum() >= 0.95  # and nearly all of them


@pytest.mark.parametrize("seed", range(5))
def test_a_uniformly_worse_student_yields_nothing(seed: int) -> None:
    rng, fields, ids, x, logits = world(100 + seed)
    teacher_hit = rng.random(N) < 0.90
    student_hit = rng.random(N) < 0.85

    assert run(fields, ids, x, logits, teacher_hit, student_hit, seed=seed) == []


def test_an_identical_student_yields_nothing() -> None:
    rng, fields, ids, x, logits = world(3)
    teacher_hit = rng.random(N) < 0.9

    assert run(fields, ids, x, logits, teacher_hit, teacher_hit.copy()) == []


def test_groups_under_min_support_are_not_reported() -> None:
    rng, fields, ids, x, logits = world(4)
    tiny = np.zeros(N, dtype=bool)
    tiny[rng.choice(N, size=80, replace=False)] = True
    fields["meta.site"] = np.where(tiny, "tiny", "big")
    teacher_hit = np.ones(N, dtype=bool)
    student_hit = ~tiny | (rng.random(N) < 0.1)  # the student is broken on 'tiny' only

    assert run(fields, ids, x, logits, teacher_hit, student_hit, min_support=81) == []
    found = run(fields, ids, x, logits, teacher_hit, student_hit, min_support=60)
    assert found[0].where == "meta.site == 'tiny'"


def test_top_limits_the_report_to_the_largest_effects() -> None:
    rng, fields, ids, x, logits = world(5)
    region = fields["meta.region"]
    teacher_hit = rng.random(N) < 0.9
    rate = np.select([region == "north", region == "south"], [0.2, 0.6], default=0.9)
    student_hit = rng.random(N) < rate

    both = run(fields, ids, x, logits, teacher_hit, student_hit, top=2)
    assert [f.where for f in both] == ["meta.region == 'north'", "meta.region == 'south'"]
    one = run(fields, ids, x, logits, teacher_hit, student_hit, top=1)
    assert [f.where for f in one] == ["meta.region == 'north'"]


def test_the_same_seed_gives_the_same_report() -> None:
    rng, fields, ids, x, logits = world(6)
    teacher_hit, student_hit = hits(rng, fields["meta.region"] == "north")

    first = run(fields, ids, x, logits, teacher_hit, student_hit, seed=7)
    again = run(fields, ids, x, logits, teacher_hit, student_hit, seed=7)

    assert first and first == again


@pytest.mark.parametrize(
    ("column", "broken_value", "where"),
    [
        (np.array(["it's", 'say "hi"', "plain"]), "it's", 'meta.c == "it\'s"'),
        (np.array(["it's", 'say "hi"', "plain"]), 'say "hi"', "meta.c == 'say \"hi\"'"),
        (np.array([0.1, 0.2, 0.7]), 0.1, "meta.c == 0.1"),
        (np.array([-3, 4, 5]), -3, "meta.c == -3"),
        (np.array([2.0, 4.0, 6.0]), 2.0, "meta.c == 2"),
        (np.array([True, False]), True, "meta.c == True"),
        (np.array(["x", "y"], dtype=object), "x", "meta.c == 'x'"),
    ],
)
def test_where_expressions_select_exactly_the_group(column: np.ndarray, broken_value, where: str) -> None:
    rng, fields, ids, x, logits = world(7, n=2000)
    values = rng.choice(column, size=2000)
    fields["meta.c"] = values
    teacher_hit, student_hit = hits(rng, values == broken_value, broken_rate=0.2)

    found = run(fields, ids, x, logits, teacher_hit, student_hit)

    assert found[0].where == where
    np.testing.assert_array_equal(members(found[0], fields, ids), values == broken_value)


def test_band_edges_read_back_exactly() -> None:
    rng, fields, ids, x, logits = world(8)
    conf = fields["teacher_conf"]
    low = conf < np.quantile(conf, 0.25)
    teacher_hit, student_hit = hits(rng, low, broken_rate=0.3)

    found = run(fields, ids, x, logits, teacher_hit, student_hit)

    first = found[0]
    assert (first.source, first.where.split(" <")[0]) == ("derived", "teacher_conf")
    edge = float(first.where.split("< ")[1])
    np.testing.assert_array_equal(members(first, fields, ids), conf < edge)
    assert jaccard(members(first, fields, ids), low) >= 0.85


def test_agreement_mode_without_labels_still_searches() -> None:
    rng, fields, ids, x, logits = world(9)
    north = fields["meta.region"] == "north"
    agrees = np.where(north, rng.random(N) < 0.5, rng.random(N) < 0.95)
    lazy = LazyFields(fields, labels=False)

    found = run(lazy, ids, x, logits, np.ones(N, dtype=bool), agrees)

    assert found[0].where == "meta.region == 'north'"
    assert found[0].teacher_score == 1.0
    assert not any(key.startswith("student") for key in lazy.read)


def test_to_json_carries_where_or_ids() -> None:
    rng, fields, ids, x, logits = world(0)
    teacher_hit, student_hit = hits(rng, fields["meta.region"] == "north")
    out = run(fields, ids, x, logits, teacher_hit, student_hit)[0].to_json()
    assert out["where"] == "meta.region == 'north'" and "ids" not in out
    assert set(out) == {
        "name",
        "source",
        "where",
        "support",
        "student_score",
        "teacher_score",
        "gap",
        "effect",
        "p_value",
        "p_adjusted",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"student_hit": np.ones(N - 1, dtype=bool)}, "student_hit must have shape"),
        ({"teacher_logits": np.zeros((N, 0))[:, None]}, "teacher_logits must have shape"),
        ({"x": np.zeros((N - 1, 5))}, "x must have one row per id"),
        ({"min_support": 0}, "min_support must be an int >= 1"),
        ({"top": 0}, "top must be an int >= 1"),
        ({"alpha": 1.0}, "alpha must be in"),
        ({"teacher_hit": np.full(N, 2)}, "teacher_hit must hold true/false values"),
    ],
)
def test_inputs_are_validated(change, message) -> None:
    _, fields, ids, x, logits = world(0)
    kwargs = {
        "ids": ids,
        "x": x,
        "teacher_logits": logits,
        "teacher_hit": np.ones(N, dtype=bool),
        "student_hit": np.ones(N, dtype=bool),
        "min_support": 30,
        "top": 5,
        "rng": np.random.default_rng(0),
    }
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        discover(fields, **kwargs)
