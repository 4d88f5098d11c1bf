"""Datasets: the file formats, the built-in split checked against scikit-learn, hashes and errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch
from sklearn.model_selection import train_test_split

from distill_eval.config import DatasetSpec
from distill_eval.data import Dataset, ids_file_mask, load_builtin, load_dataset
from distill_eval.errors import DataError

BUILTINS = {
    "sklearn:digits": sklearn.datasets.load_digits,
    "sklearn:iris": sklearn.datasets.load_iris,
    "sklearn:wine": sklearn.datasets.load_wine,
    "sklearn:breast_cancer": sklearn.datasets.load_breast_cancer,
}


def _load(path: Path, **kwargs: str) -> Dataset:
    return load_dataset(DatasetSpec(name="eval", path=path, **kwargs))


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- file formats -------------------------------------------------------------------


def test_npz_reads_arrays_ids_and_meta_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2, 3))  # float64 on disk, images of 2x3
    y = np.array([0, 2, 1, 1, 0, 2])
    ids = np.array(["a", "b", "c", "d", "e", "f"])
    group = np.array(["x", "y", "x", "y", "x", "z"])
    score = np.linspace(0.0, 1.0, 6)
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=ids, meta_group=group, meta_score=score)

    data = _load(tmp_path / "d.npz")

    assert data.name == "eval" and data.n == 6
    assert data.x.dtype == np.float32 and data.x.shape == (6, 2, 3)
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    assert data.y is not None and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.y, y)
    assert data.ids.tolist() == ids.tolist()
    assert set(data.meta) == {"group", "score"}
    assert data.meta["group"].tolist() == group.tolist()
    np.testing.assert_array_equal(data.meta["score"], score)
    assert np.issubdtype(data.meta["score"].dtype, np.floating)


def test_npz_without_labels_or_ids_gets_unique_ids(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)))
    data = _load(tmp_path / "d.npz")
    assert data.y is None
    assert len(set(data.ids.tolist())) == 4


def test_pt_reads_a_dict_of_tensors(tmp_path: Path) -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 0, 3, 2, 1])
    score = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5], dtype=torch.float64)
    torch.save({"x": x, "y": y, "ids": ["p", "q", "r", "s", "t"], "meta_score": score}, tmp_path / "d.pt")

    data = _load(tmp_path / "d.pt")

    np.testing.assert_array_equal(data.x, x.numpy())
    np.testing.assert_array_equal(data.y, [1, 0, 3, 2, 1])
    assert data.ids.tolist() == ["p", "q", "r", "s", "t"]
    np.testing.assert_array_equal(data.meta["score"], score.numpy())


def test_pt_tensor_saved_with_requires_grad_loads(tmp_path: Path) -> None:
    # A tensor saved straight out of a training loop keeps requires_grad; it is still just data.
    x = torch.randn(3, 2, requires_grad=True)
    torch.save({"x": x, "y": torch.tensor([0, 1, 0])}, tmp_path / "d.pt")
    data = _load(tmp_path / "d.pt")
    np.testing.assert_array_equal(data.x, x.detach().numpy())


def test_pt_is_loaded_weights_only_so_a_pickle_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            import os

            return (os.makedirs, (str(marker),))

    torch.save({"x": torch.zeros(2, 2), "evil": Payload()}, tmp_path / "d.pt")
    with pytest.raises(DataError, match=r"dataset 'eval'.*cannot read"):
        _load(tmp_path / "d.pt")
    assert not marker.exists()


def test_csv_splits_label_id_meta_and_feature_columns(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "d.csv",
        "\n".join(
            [
                "f1,label,id,meta_group,f2,meta_score",
                "0.5,1,007,cat,2,10",
                "1.5,0,008,dog,-3,20.5",
                "2.5,2,009,cat,4e-1,30",
            ]
        ),
    )
    data = _load(path)
    # features in file order, without label/id/meta columns
    np.testing.assert_array_equal(data.x, np.array([[0.5, 2], [1.5, -3], [2.5, 0.4]], dtype=np.float32))
    np.testing.assert_array_equal(data.y, [1, 0, 2])
    assert data.y.dtype == np.int64
    assert data.ids.tolist() == ["007", "008", "009"]  # ids stay text: leading zeros kept
    assert data.meta["group"].tolist() == ["cat", "dog", "cat"]
    np.testing.assert_array_equal(data.meta["score"], [10.0, 20.5, 30.0])


def test_csv_custom_label_and_id_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "key,a,target,b\nr1,1,2,3\nr2,4,0,6\n")
    data = _load(path, label_column="target", id_column="key")
    np.testing.assert_array_equal(data.x, [[1, 3], [4, 6]])
    np.testing.assert_array_equal(data.y, [2, 0])
    assert data.ids.tolist() == ["r1", "r2"]


def test_csv_with_a_byte_order_mark_still_finds_the_label_column(tmp_path: Path) -> None:
    # Spreadsheet programs write UTF-8 CSVs with a BOM; it must not turn 'label' into a feature.
    (tmp_path / "d.csv").write_bytes("label,a\n1,0.5\n0,1.5\n".encode("utf-8-sig"))
    data = _load(tmp_path / "d.csv")
    np.testing.assert_array_equal(data.y, [1, 0])
    np.testing.assert_array_equal(data.x, [[0.5], [1.5]])


def test_csv_blank_lines_are_not_examples(tmp_path: Path) -> None:
    data = _load(_write_csv(tmp_path / "d.csv", "a,label\n1,0\n\n2,1\n\n"))
    np.testing.assert_array_equal(data.x, [[1], [2]])
    np.testing.assert_array_equal(data.y, [0, 1])


# -- built-in sources ---------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(BUILTINS))
def test_builtin_split_matches_an_independent_stratified_split(source: str) -> None:
    bunch = BUILTINS[source]()
    n = len(bunch.target)
    train_rows, test_rows = train_test_split(np.arange(n), test_size=0.3, random_state=0, stratify=bunch.target)
    expected_x = bunch.data / 16.0 if source == "sklearn:digits" else bunch.data

    train = load_builtin(source, split="train")
    test = load_builtin(source, split="test")

    for part, rows in ((train, train_rows), (test, test_rows)):
        assert part.ids.tolist() == [f"{source}-{r}" for r in rows]
        assert part.x.dtype == np.float32
        np.testing.assert_array_equal(part.x, expected_x[rows].astype(np.float32))
        np.testing.assert_array_equal(part.y, bunch.target[rows])
    # disjoint, and together every row exactly once
    assert not set(train.ids.tolist()) & set(test.ids.tolist())
    assert sorted(train.ids.tolist() + test.ids.tolist()) == sorted(f"{source}-{r}" for r in range(n))
    assert test.n == int(np.ceil(0.3 * n))
    # stratified: every class is split 70/30 to within one example
    classes, counts = np.unique(bunch.target, return_counts=True)
    test_counts = np.array([np.sum(test.y == c) for c in classes])
    assert np.all(np.abs(test_counts - 0.3 * counts) <= 1), (test_counts, counts)


def test_builtin_digits_features_are_scaled_to_unit_interval() -> None:
    data = load_builtin("sklearn:digits", split="all")
    assert data.n == 1797 and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0


def test_dataset_spec_with_source_loads_the_builtin() -> None:
    data = load_dataset(DatasetSpec(name="held_out", source="sklearn:iris", split="train"))
    assert data.name == "held_out" and data.source == "sklearn:iris"
    assert data.ids.tolist() == load_builtin("sklearn:iris", split="train").ids.tolist()
    assert data.describe()["source"] == "sklearn:iris"


def test_builtin_hash_is_stable_and_differs_between_splits() -> None:
    first = load_builtin("sklearn:wine", split="test").sha256
    assert first == load_builtin("sklearn:wine", split="test").sha256
    assert first != load_builtin("sklearn:wine", split="train").sha256
    assert first != load_builtin("sklearn:iris", split="test").sha256


def test_builtin_unknown_source_or_split_is_an_error() -> None:
    with pytest.raises(DataError, match=r"unknown built-in source 'sklearn:mnist'.*expected one of"):
        load_builtin("sklearn:mnist")
    with pytest.raises(DataError, match=r"split must be 'train', 'test' or 'all', got 'val'"):
        load_builtin("sklearn:iris", split="val")


# -- content hashes -----------------------------------------------------------------


def test_file_hash_is_the_sha256_of_the_bytes_and_tracks_content(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]))
    first = _load(path).sha256
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _load(path).sha256 == first

    np.savez(path, x=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 1]))  # one label changed
    assert _load(path).sha256 != first


# -- errors: each names the dataset and says what was expected -----------------------


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    np.savez(tmp_path / "d.npz", **arrays)
    return tmp_path / "d.npz"


BAD_NPZ = {
    "length mismatch": (
        {"x": np.zeros((5, 2)), "y": np.zeros(4, dtype=int)},
        r"'x' has 5 rows but 'y' has shape \(4,\); expected \(5,\)",
    ),
    "negative label": ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 2])}, r"labels must be >= 0, found -1"),
    "fractional label": ({"x": np.zeros((3, 2)), "y": np.array([0.0, 1.5, 2.0])}, r"must be integer class indices"),
    "text label": ({"x": np.zeros((2, 2)), "y": np.array(["a", "b"])}, r"must be integer class indices"),
    "duplicate ids": ({"x": np.zeros((3, 2)), "ids": np.array(["a", "b", "a"])}, r"ids must be unique.*'a'"),
    "empty": ({"x": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, r"has no examples"),
    "no x": ({"features": np.zeros((3, 2))}, r"has no array 'x' \(found: \['features'\]\)"),
    "ids length": ({"x": np.zeros((3, 2)), "ids": np.array(["a", "b"])}, r"'x' has 3 rows but 'ids' has shape"),
    "meta length": ({"x": np.zeros((3, 2)), "meta_g": np.array([1, 2])}, r"meta column 'g' has shape \(2,\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_inconsistent_npz_is_a_data_error(tmp_path: Path, case: str) -> None:
    arrays, expected = BAD_NPZ[case]
    with pytest.raises(DataError, match=r"dataset 'eval'.*" + expected):
        _load(_npz(tmp_path, **arrays))


def test_integral_float_labels_are_accepted(tmp_path: Path) -> None:
    data = _load(_npz(tmp_path, x=np.zeros((3, 1)), y=np.array([2.0, 0.0, 1.0])))
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.y, [2, 0, 1])


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset 'eval'.*file not found.*nope\.npz"):
        _load(tmp_path / "nope.npz")


def test_unsupported_suffix_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(
        DataError, match=r"dataset 'eval'.*unsupported format '\.parquet'; expected \.npz, \.pt or \.csv"
    ):
        _load(tmp_path / "d.parquet")


def test_corrupt_file_is_a_data_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"dataset 'eval': cannot read .*d\.npz"):
        _load(tmp_path / "d.npz")


def test_pt_without_a_dict_is_a_data_error(tmp_path: Path) -> None:
    torch.save(torch.zeros(3, 2), tmp_path / "d.pt")
    with pytest.raises(DataError, match=r"dataset 'eval'.*must hold a dict with at least the key 'x'"):
        _load(tmp_path / "d.pt")


def test_csv_non_numeric_feature_column_is_named(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "a,colour,label\n1,red,0\n2,blue,1\n")
    with pytest.raises(DataError, match=r"dataset 'eval'.*feature column 'colour' is not numeric.*'meta_'"):
        _load(path)


@pytest.mark.parametrize(("labels", "expected"), [(("1", "-2"), r">= 0"), (("cat", "dog"), r"integer class")])
def test_csv_bad_labels_are_data_errors(tmp_path: Path, labels: tuple[str, str], expected: str) -> None:
    path = _write_csv(tmp_path / "d.csv", f"a,label\n1,{labels[0]}\n2,{labels[1]}\n")
    with pytest.raises(DataError, match=r"dataset 'eval'.*" + expected):
        _load(path)


def test_csv_with_only_a_header_is_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset 'eval'.*has no examples"):
        _load(_write_csv(tmp_path / "d.csv", "a,b,label\n"))


# -- ids files ----------------------------------------------------------------------


def test_ids_file_mask_selects_the_listed_ids(tmp_path: Path) -> None:
    data = _load(_npz(tmp_path, x=np.zeros((5, 1)), ids=np.array(["a", "b", "c", "d", "e"])))
    ids_file = tmp_path / "known.txt"
    ids_file.write_text("# known failures\nd\n\n  b  \n")
    mask = ids_file_mask(ids_file, data, what="check 'copied_errors'")
    np.testing.assert_array_equal(mask, [False, True, False, True, False])


def test_ids_file_naming_unknown_ids_is_a_data_error(tmp_path: Path) -> None:
    data = _load(_npz(tmp_path, x=np.zeros((3, 1)), ids=np.array(["a", "b", "c"])))
    ids_file = tmp_path / "known.txt"
    ids_file.write_text("a\nzzz\n")
    with pytest.raises(
        DataError, match=r"check 'x': .*known\.txt names 1 id\(s\) that are not in dataset 'eval'.*'zzz'"
    ):
        ids_file_mask(ids_file, data, what="check 'x'")
    with pytest.raises(DataError, match=r"check 'x': ids file not found"):
        ids_file_mask(tmp_path / "missing.txt", data, what="check 'x'")
