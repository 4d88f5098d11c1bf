"""Kind ``leakage``: evaluation examples that also occur in the training data.

Counts are checked against brute-force references (every evaluation row
against every training row), the default threshold against scipy's ``cdist``,
and the kind through real pytest sessions whose models cannot even be loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import cdist

from distill_eval import ConfigError, load_suite
from distill_eval.checks import KINDS, CheckContext
from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig
from distill_eval.data import Dataset, load_builtin
from distill_eval.errors import DataError
from distill_eval.metrics import default_near_distance, exact_matches, find_duplicates

N_EXACT, N_NEAR = 17, 9


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_builtin("sklearn:digits", split="train"), load_builtin("sklearn:digits", split="test")


def planted(train: Dataset, test: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test split plus 17 copied and 9 slightly perturbed training rows, shuffled.

    Returns the evaluation inputs, the rows that hold copies and the rows that hold perturbed copies.
    """
    rng = np.random.default_rng(0)
    picked = rng.choice(train.n, size=N_EXACT + N_NEAR, replace=False)
    copies = train.x[picked[:N_EXACT]]
    noise = rng.uniform(-0.004, 0.004, size=(N_NEAR, train.x.shape[1])).astype(np.float32)
    noise[:, 0] = 0.003  # every perturbed row differs from its source somewhere
    perturbed = train.x[picked[N_EXACT:]] + noise
    x = np.concatenate([test.x, copies, perturbed])
    order = rng.permutation(len(x))
    where = np.argsort(order)  # where each original row lands
    return x[order], where[test.n : test.n + N_EXACT], where[test.n + N_EXACT :]


def brute_exact(x_eval: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """Byte-for-byte equality of every pair, by broadcasting over the float32 bit patterns."""
    e = np.ascontiguousarray(x_eval, dtype=np.float32).reshape(len(x_eval), -1).view(np.uint32)
    t = np.ascontiguousarray(x_train, dtype=np.float32).reshape(len(x_train), -1).view(np.uint32)
    return (e[:, None, :] == t[None, :, :]).all(axis=2)


def brute_nearest(x_eval: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    flat = [np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in (x_eval, x_train)]
    return cdist(*flat).min(axis=1)


# --- metrics ------------------------------------------------------------------


def test_planted_duplicates_are_counted_exactly(digits) -> None:
    train, test = digits
    x, exact_rows, near_rows = planted(train, test)
    pairs = brute_exact(x, train.x)
    reference = pairs.any(axis=1)
    assert reference[exact_rows].all() and not reference[near_rows].any()

    found = find_duplicates(x, train.x, near=True)
    np.testing.assert_array_equal(found.exact, reference)
    assert found.n_exact == int(reference.sum())
    # each match really is identical, and it is the first identical training row
    hits = np.flatnonzero(found.exact)
    assert pairs[hits, found.train_index[hits]].all()
    np.testing.assert_array_equal(found.train_index[hits], pairs[hits].argmax(axis=1))
    np.testing.assert_array_equal(found.train_index[~found.exact & ~found.near], -1)

    threshold = found.near_distance
    nearest = brute_nearest(x, train.x)
    near_reference = ~reference & (nearest <= threshold)
    np.testing.assert_array_equal(found.near, near_reference)
    assert found.near[near_rows].all() and not found.near[exact_rows].any()
    # the test split's own rows are far from every training row: not counted
    far = np.setdiff1d(np.arange(len(x)), np.concatenate([exact_rows, near_rows]))
    assert nearest[far].min() > threshold and not found.leaked[far].any()
    np.testing.assert_allclose(found.distance[found.near], nearest[found.near], rtol=1e-12)
    np.testing.assert_array_equal(found.distance[found.exact], 0.0)
    assert np.isnan(found.distance[~found.leaked]).all()


def test_without_near_only_exact_duplicates_count(digits) -> None:
    train, test = digits
    x, _, near_rows = planted(train, test)
    found = find_duplicates(x, train.x)
    assert found.near_distance is None and not found.near.any()
    np.testing.assert_array_equal(found.leaked, brute_exact(x, train.x).any(axis=1))
    assert not found.exact[near_rows].any()


@pytest.mark.parametrize("threshold", [0.005, 0.02, 0.6, 0.7])
def test_an_explicit_near_distance_is_the_cut(digits, threshold: float) -> None:
    train, test = digits
    x, _, _ = planted(train, test)
    found = find_duplicates(x, train.x, near=True, near_distance=threshold)
    expected = ~brute_exact(x, train.x).any(axis=1) & (brute_nearest(x, train.x) <= threshold)
    np.testing.assert_array_equal(found.near, expected)
    assert found.near_distance == threshold


def test_default_near_distance_matches_a_brute_force_reference(digits) -> None:
    train, _ = digits
    distances = cdist(train.x.astype(np.float64), train.x.astype(np.float64))
    np.fill_diagonal(distances, np.inf)
    assert train.n <= 2000  # every row is used
    assert default_near_distance(train.x) == pytest.approx(0.1 * np.median(distances.min(axis=1)), rel=1e-12)
    assert find_duplicates(train.x[:5], train.x, near=True).near_distance == default_near_distance(train.x)


def test_default_near_distance_samples_rows_but_searches_all_of_them(digits) -> None:
    train, _ = digits
    x = np.concatenate([train.x, train.x[:50]])  # copies elsewhere in the training data count, at distance 0
    distances = cdist(x.astype(np.float64), x.astype(np.float64))
    np.fill_diagonal(distances, np.inf)
    rows = np.sort(np.random.default_rng(3).choice(len(x), size=300, replace=False))
    expected = 0.5 * np.median(distances[rows].min(axis=1))
    assert default_near_distance(x, max_rows=300, seed=3, factor=0.5) == pytest.approx(expected, rel=1e-12)


def test_bytes_decide_exactness() -> None:
    train = np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]], dtype=np.float32)
    x = np.array([[-0.0, 1.0], [np.nan, 2.0], [1.0, 1.0], [1.0, 1.0 + 1e-7]])
    np.testing.assert_array_equal(exact_matches(x, train), [-1, 1, 2, -1])  # float64 input, compared as float32
    finite = find_duplicates(x[[0, 2, 3]], train[[0, 2]], near=True, near_distance=1e-3)
    assert finite.exact.tolist() == [False, True, False]
    assert finite.near.tolist() == [True, False, True]  # -0.0 is not the same bytes, but at distance 0
    assert finite.distance[0] == 0.0 and finite.train_index.tolist() == [0, 1, 1]
    assert finite.distance[2] == pytest.approx(2.0**-23)  # one float32 ulp above 1


def test_examples_are_compared_whole_whatever_their_shape(digits) -> None:
    train, test = digits
    images = train.x.reshape(-1, 8, 8)
    x = np.concatenate([test.x[:10].reshape(-1, 8, 8), images[[4, 8]]])
    np.testing.assert_array_equal(exact_matches(x, images), [-1] * 10 + [4, 8])
    with pytest.raises(ValueError, match=r"same shape per example.*\(12, 8, 8\).*\(1257, 64\)"):
        exact_matches(x, train.x)


def test_bad_inputs_are_refused_with_what_was_found() -> None:
    with pytest.raises(ValueError, match="x_train has no rows"):
        find_duplicates(np.zeros((3, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"x_eval has 1 row\(s\) with NaN"):
        find_duplicates(np.array([[np.nan, 0.0]]), np.zeros((3, 2)), near=True)
    with pytest.raises(ValueError, match="near_distance must be a finite number > 0"):
        find_duplicates(np.zeros((3, 2)), np.zeros((3, 2)), near=True, near_distance=0.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        default_near_distance(np.zeros((1, 2)))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 30), st.just(3)), elements=st.sampled_from([0.0, 0.5, 1.0])),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 30), st.just(3)), elements=st.sampled_from([0.0, 0.5, 1.0])),
    st.randoms(use_true_random=False),
)
def test_exact_matches_agree_with_brute_force_in_any_row_order(x_eval, x_train, random) -> None:
    pairs = brute_exact(x_eval, x_train)
    expected = np.where(pairs.any(axis=1), pairs.argmax(axis=1), -1)
    np.testing.assert_array_equal(exact_matches(x_eval, x_train), expected)
    order = np.array(random.sample(range(len(x_eval)), len(x_eval)))
    np.testing.assert_array_equal(exact_matches(x_eval[order], x_train), expected[order])


# --- the kind, on a context --------------------------------------------------

PROJECT = ProjectConfig(
    rootdir=Path("."),
    models={"teacher": ModelSpec("teacher"), "student": ModelSpec("student")},
    datasets={"test": DatasetSpec("test"), "train": DatasetSpec("train")},
)


class DataOnly:
    """A context source with datasets and no models: reading an output is a test failure."""

    def __init__(self, *datasets: Dataset):
        self.datasets = {d.name: d for d in datasets}

    def dataset(self, name: str) -> Dataset:
        return self.datasets[name]

    def outputs(self, model: str, dataset: str):
        raise AssertionError(f"the leakage check read model '{model}'")


def dataset(name: str, x: np.ndarray) -> Dataset:
    return Dataset(
        name=name, x=np.asarray(x, dtype=np.float32), y=None, ids=np.array([f"{name}-{i}" for i in range(len(x))])
    )


def measure(tmp_path: Path, check: str, *datasets: Dataset, confidence: float = 0.95):
    path = tmp_path / "leak.toml"
    path.write_text(f'[suite]\nconfidence = {confidence}\n[[check]]\nkind = "leakage"\n{check}\n')
    suite = load_suite(path, PROJECT)
    return KINDS["leakage"].compute(CheckContext(suite, suite.checks[0], DataOnly(*datasets)), suite.checks[0].params)


def test_the_kind_reports_counts_rate_and_examples(tmp_path: Path, digits) -> None:
    train, test = digits
    x, exact_rows, near_rows = planted(train, test)
    evaluation = dataset("test", x)
    m = measure(tmp_path, 'train = "train"\nnear = true', evaluation, dataset("train", train.x), confidence=0.9)
    exact_mask = brute_exact(x, train.x).any(axis=1)
    exact = int(exact_mask.sum())
    near_ref = int((~exact_mask & (brute_nearest(x, train.x) <= default_near_distance(train.x))).sum())
    assert near_ref >= N_NEAR
    assert [*m.metrics] == ["exact_duplicates", "near_duplicates", "duplicate_rate"]
    assert m.metrics["exact_duplicates"].value == exact and m.metrics["exact_duplicates"].ci == (exact, exact)
    assert m.metrics["near_duplicates"].value == near_ref and m.metrics["near_duplicates"].ci == (near_ref, near_ref)
    rate = m.metrics["duplicate_rate"]
    assert rate.value == (exact + near_ref) / len(x)
    assert rate.ci == (rate.value, rate.value) and rate.census  # every example compared: no sampling error
    assert m.extras["near_distance"] == pytest.approx(default_near_distance(train.x))
    pairs = m.extras["duplicates"]
    assert len(pairs) == 20 and json.loads(json.dumps(pairs)) == pairs
    assert [p["distance"] for p in pairs[:exact]] == [0.0] * exact
    assert [p["id"] for p in pairs[:exact]] == [f"test-{i}" for i in np.flatnonzero(exact_mask)]
    assert set(exact_rows) <= set(np.flatnonzero(exact_mask))
    near = pairs[exact:]
    assert all(0 < p["distance"] <= m.extras["near_distance"] for p in near)
    assert [p["distance"] for p in near] == sorted(p["distance"] for p in near)
    assert {p["id"] for p in near} <= {f"test-{i}" for i in near_rows}
    for p in pairs:
        row, train_row = int(p["id"].split("-")[1]), int(p["train_id"].split("-")[1])
        assert np.linalg.norm(x[row].astype(np.float64) - train.x[train_row]) == pytest.approx(p["distance"], abs=1e-12)


def test_without_near_the_near_count_is_undefined(tmp_path: Path, digits) -> None:
    train, test = digits
    x, _, _ = planted(train, test)
    m = measure(tmp_path, 'train = "train"', dataset("test", x), dataset("train", train.x))
    assert m.metrics["near_duplicates"].value is None and m.metrics["near_duplicates"].note == "near = false"
    assert m.metrics["duplicate_rate"].value == m.metrics["exact_duplicates"].value / len(x)
    assert "near_distance" not in m.extras


def test_different_shapes_and_empty_training_data_are_data_errors(tmp_path: Path) -> None:
    evaluation = dataset("test", np.zeros((4, 6)))
    with pytest.raises(DataError, match=r"'test' and 'train'.*\(6,\) \(x of shape \(4, 6\)\).*\(2, 3\)"):
        measure(tmp_path, 'train = "train"', evaluation, dataset("train", np.zeros((5, 2, 3))))
    with pytest.raises(DataError, match="dataset 'train' has no examples"):
        measure(tmp_path, 'train = "train"', evaluation, dataset("train", np.zeros((0, 6))))
    nan = dataset("train", np.full((3, 6), np.nan))
    measure(tmp_path, 'train = "train"', evaluation, nan)  # exact search compares bytes: NaN is fine
    with pytest.raises(DataError, match=r"dataset 'train'.*'x' holds NaN or infinite values in 3 of 3 .*'train-0'"):
        measure(tmp_path, 'train = "train"\nnear = true', evaluation, nan)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("", "check 'leakage': missing required key 'train'"),
        (
            'train = "trian"',
            "'train' names dataset 'trian', which [tool.distill_eval.datasets] does not define (did you mean 'train'?)",
        ),
        ('train = "train"\nnear_distance = 0.5', "'near_distance' has no effect without 'near = true'"),
        ('train = "train"\nnear = true\nnear_distance = 0', "'near_distance' must be a number > 0, got an integer (0)"),
        ('train = "train"\nnear = "yes"', "'near' must be true or false"),
        ('train = "train"\nmax = { near_duplicates = 0 }', "a bound on 'near_duplicates' needs 'near = true'"),
        ('train = "train"\nmax = { duplicate_rat = 0 }', "(did you mean 'duplicate_rate'?)"),
    ],
)
def test_suite_mistakes_are_config_errors(tmp_path: Path, check: str, message: str) -> None:
    path = tmp_path / "leak.toml"
    path.write_text(f'[[check]]\nkind = "leakage"\n{check}\n')
    with pytest.raises(ConfigError) as info:
        load_suite(path, PROJECT)
    assert message in str(info.value)


def test_extra_datasets_names_the_training_set(tmp_path: Path) -> None:
    path = tmp_path / "leak.toml"
    path.write_text('[[check]]\nkind = "leakage"\ntrain = "train"\nnear = true\nnear_distance = 0.25\n')
    (check,) = load_suite(path, PROJECT).checks
    assert check.params == {"train": "train", "near": True, "near_distance": 0.25, "ngram": None}
    assert list(KINDS["leakage"].extra_datasets(check.params)) == [("train", "train")]


# --- the kind through pytest -------------------------------------------------

PYPROJECT = """
[tool.distill_eval]
device = "cpu"

[tool.distill_eval.models.teacher]
path = "missing_teacher.pt"

[tool.distill_eval.models.student]
path = "missing_student.pt"

[tool.distill_eval.datasets.test]
path = "test.npz"

[tool.distill_eval.datasets.train]
path = "train.npz"
"""

SUITE = """
[suite]
name = "leaks"

[[check]]
kind = "leakage"
id = "clean"
train = "train"
max = { duplicate_rate = 0.0 }

[[check]]
kind = "leakage"
id = "few"
train = "train"
near = true
max = { exact_duplicates = 20, near_duplicates = 9 }
"""


def project(pytester: pytest.Pytester, digits, suite: str) -> np.ndarray:
    """Write the data, the pyproject and the suite; return the evaluation inputs."""
    train, test = digits
    x, _, _ = planted(train, test)
    np.savez(pytester.path / "train.npz", x=train.x, y=train.y, ids=train.ids)
    np.savez(pytester.path / "test.npz", x=x, ids=np.array([f"eval-{i}" for i in range(len(x))]))
    pytester.makefile(".toml", pyproject=PYPROJECT)
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "leaks.toml").write_text(suite)
    return x


def test_the_kind_gates_without_loading_any_model(pytester: pytest.Pytester, digits) -> None:
    x = project(pytester, digits, SUITE)
    exact = int(brute_exact(x, digits[0].x).any(axis=1).sum())
    assert N_EXACT <= exact <= 20
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*leakage check 'clean' of suite 'leaks' failed: "
            "duplicate_rate = 0.0* [[]0.0*, 0.0*[]] > max 0 (gate: estimate)*"
        ]
    )
    result.stdout.no_fnmatch_line("*missing_*.pt*")
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert doc["models"] == {}
    assert set(doc["datasets"]) == {"test", "train"}
    clean, few = doc["suites"][0]["checks"]
    assert clean["outcome"] == "failed" and few["outcome"] == "passed"
    assert clean["metrics"]["exact_duplicates"] == {"value": exact, "ci": [exact, exact]}
    assert clean["metrics"]["duplicate_rate"]["value"] == pytest.approx(exact / len(x))
    assert clean["metrics"]["near_duplicates"] == {"value": None, "ci": None, "note": "near = false"}
    assert few["metrics"]["near_duplicates"]["value"] == N_NEAR  # the planted ones: the rest are far (see above)
    assert few["near_distance"] > 0 and len(few["duplicates"]) == 20
    assert all(p["train_id"].startswith("sklearn:digits-") for p in few["duplicates"])


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            'train = "trian"',
            "*suites/leaks.toml: check 'leakage': 'train' names dataset 'trian'*(did you mean 'train'?)*",
        ),
        ("", "*suites/leaks.toml: check 'leakage': missing required key 'train'*"),
    ],
)
def test_a_bad_train_name_is_a_collection_error(pytester: pytest.Pytester, digits, check: str, message: str) -> None:
    project(pytester, digits, f'[[check]]\nkind = "leakage"\n{check}\n')
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*Traceback*")


@pytest.mark.parametrize("gate", ["strict", "estimate", "lenient"])
def test_no_duplicates_passes_max_duplicate_rate_0_under_every_gate(
    pytester: pytest.Pytester, digits, gate: str
) -> None:
    # duplicate_rate is a census of the data, not a sample: its interval is the point, so a clean
    # evaluation set passes `max = 0` even under strict (a Wilson interval's upper end is never 0)
    train, test = digits
    project(pytester, digits, SUITE.split("\n[[check]]", 2)[0] + "\n[[check]]" + SUITE.split("\n[[check]]")[1])
    np.savez(pytester.path / "test.npz", x=test.x, ids=test.ids)
    result = pytester.runpytest("-p", "no:cacheprovider", "--distill", f"--distill-gate={gate}")
    result.assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    (clean,) = doc["suites"][0]["checks"]
    assert clean["metrics"]["duplicate_rate"] == {"value": 0.0, "ci": [0.0, 0.0]}
    # and one leaked row fails under every gate: the point interval is above 0
    np.savez(pytester.path / "test.npz", x=np.concatenate([test.x, train.x[:1]]))
    pytester.runpytest("-p", "no:cacheprovider", "--distill", f"--distill-gate={gate}").assert_outcomes(failed=1)
