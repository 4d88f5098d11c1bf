"""Token datasets: .npz / .pt files (rectangular and ragged), their errors, and the built-in byte corpus."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_eval.errors import DataError
from distill_eval.lm.tokens import (
    BOS_ID,
    BYTE_VOCAB_SIZE,
    EOS_ID,
    PAD_ID,
    corpus_documents,
    decode_bytes,
    encode_bytes,
    load_byte_corpus,
    load_token_dataset,
    token_dataset,
)


def ragged(dtype=object) -> np.ndarray:
    rows = np.empty(3, dtype=dtype)
    rows[0], rows[1], rows[2] = np.array([5, 6, 7, 8]), np.array([9, 10]), [11, 12, 13]
    return rows


def test_a_rectangular_npz_gets_default_mask_labels_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "tok.npz"
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.savez(path, input_ids=ids, meta_source=np.array(["a", "b", "c"]))
    data = load_token_dataset(path)
    assert data.name == "tok" and data.source == str(path) and len(data.sha256) == 64
    np.testing.assert_array_equal(data.input_ids, ids)
    assert data.input_ids.dtype == np.int64
    np.testing.assert_array_equal(data.attention_mask, np.ones((3, 4)))
    np.testing.assert_array_equal(data.labels, ids)  # every next token is scored
    assert data.ids.tolist() == ["0", "1", "2"] and data.meta["source"].tolist() == ["a", "b", "c"]
    assert data.n_scored == 3 * 3  # the last position of each row predicts nothing


def test_a_ragged_npz_is_padded_on_the_right(tmp_path: Path) -> None:
    path = tmp_path / "ragged.npz"
    labels = ragged()
    labels[0] = np.array([-100, -100, 7, 8])  # a two-token prompt
    np.savez(path, input_ids=ragged(), labels=labels, ids=np.array(["x", "y", "z"]))
    data = load_token_dataset(path)
    np.testing.assert_array_equal(data.input_ids, [[5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0]])
    np.testing.assert_array_equal(data.attention_mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(data.labels, [[-100, -100, 7, 8], [9, 10, -100, -100], [11, 12, 13, -100]])
    np.testing.assert_array_equal(
        data.scored(), [[False, True, True, False], [True, False, False, False], [True, True, False, False]]
    )


def test_a_pt_file_with_lists_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "tok.pt"
    torch.save(
        {
            "input_ids": [torch.tensor([1, 2, 3]), torch.tensor([4, 5])],
            "attention_mask": [[1, 1, 1], [1, 1]],
            "labels": [[-100, 2, 3], [4, 5]],
            "meta_split": ["a", "b"],
        },
        path,
    )
    data = load_token_dataset(path, name="pt")
    np.testing.assert_array_equal(data.labels, [[-100, 2, 3], [4, 5, -100]])
    assert data.n_scored == 3 and data.meta["split"].tolist() == ["a", "b"]


def test_batches_are_cut_to_the_widest_attended_column() -> None:
    data = token_dataset(ragged(), name="r")
    got = [(b.start, b.input_ids.shape) for b in data.batches(2)]
    assert got == [(0, (2, 4)), (2, (1, 3))]
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(0))


def _save(tmp_path: Path, suffix: str = ".npz", **arrays) -> Path:
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pt":
        torch.save(arrays, path)
    else:
        np.savez(path, **arrays)
    return path


IDS = np.array([[1, 2, 3], [4, 5, 6]])

BAD_FILES = [
    ("no-input-ids", {"tokens": IDS}, "has no key 'input_ids' .found: \\['tokens'\\]."),
    ("misspelt-key", {"input_ids": IDS, "attention_masks": IDS}, "unknown key 'attention_masks' .did you mean 'att"),
    ("float-ids", {"input_ids": IDS + 0.5}, "'input_ids' must hold integers, got dtype float64"),
    ("negative-ids", {"input_ids": -IDS}, "'input_ids' must be >= 0, found -3"),
    ("one-dimensional", {"input_ids": np.arange(5)}, r"'input_ids' must have shape \(sequences, length\)"),
    ("mask-shape", {"input_ids": IDS, "attention_mask": np.ones((2, 4))}, "'attention_mask' sequence 0 has 4 tokens"),
    ("mask-values", {"input_ids": IDS, "attention_mask": IDS}, "'attention_mask' must hold only 0 and 1, found 6"),
    ("label-values", {"input_ids": IDS, "labels": IDS - 5}, "'labels' must be token ids >= 0 or -100 .* found -4"),
    ("label-rows", {"input_ids": IDS, "labels": IDS[:1]}, "'labels' has 1 sequences but 'input_ids' has 2"),
    (
        "label-hidden",
        {"input_ids": IDS, "attention_mask": np.array([[1, 1, 0], [1, 1, 1]])},
        None,  # default labels follow the mask: fine
    ),
    (
        "label-under-mask",
        {"input_ids": IDS, "attention_mask": np.array([[1, 1, 0], [1, 1, 1]]), "labels": IDS},
        "'labels' scores a token the attention mask hides .sequence 0, position 2.",
    ),
    ("no-scored", {"input_ids": IDS, "labels": np.full((2, 3), -100)}, "has no scored token"),
    ("one-token-rows", {"input_ids": IDS[:, :1]}, "has no scored token"),
    ("duplicate-ids", {"input_ids": IDS, "ids": np.array(["a", "a"])}, "'ids' must be unique; repeated: 'a'"),
    ("ids-shape", {"input_ids": IDS, "ids": np.array(["a"])}, r"'ids' has shape \(1,\); expected \(2,\)"),
    ("meta-shape", {"input_ids": IDS, "meta_x": np.ones(3)}, r"'meta_x' has shape \(3,\); expected \(2,\)"),
    ("ragged-lengths", {"input_ids": ragged(), "labels": ragged()[::-1]}, "'labels' sequence 0 has 3 tokens but"),
    ("flat-list", {"input_ids": np.array([1, 2, 3], dtype=object)}, "got a flat list of numbers; wrap a single"),
    ("nested-rows", {"input_ids": np.array([IDS, IDS], dtype=object)}, "'input_ids' sequence 0 must be a flat list"),
]


@pytest.mark.parametrize(("case", "arrays", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_name_the_file_and_the_key(tmp_path: Path, case: str, arrays: dict, message: str | None) -> None:
    path = _save(tmp_path, **arrays)
    if message is None:
        assert load_token_dataset(path).n_sequences == 2
        return
    with pytest.raises(DataError, match=message) as caught:
        load_token_dataset(path)
    assert str(caught.value).startswith(f"dataset 'bad' ({path})")


def test_a_pt_file_gets_the_same_checks(tmp_path: Path) -> None:
    path = _save(tmp_path, ".pt", input_ids=torch.tensor(IDS), labels=torch.tensor(IDS) - 5)
    with pytest.raises(DataError, match=f"dataset 'bad' \\({path}\\): 'labels' must be token ids >= 0 or -100"):
        load_token_dataset(path)
    torch.save([torch.tensor(IDS)], path)
    with pytest.raises(DataError, match="must hold a dict with at least the key 'input_ids', got list"):
        load_token_dataset(path)


def test_missing_unsupported_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset 'gone': file not found: .*gone.npz"):
        load_token_dataset(tmp_path / "gone.npz")
    (tmp_path / "t.csv").write_text("input_ids\n1\n")
    with pytest.raises(DataError, match=r"unsupported format '.csv' for tokens; expected .npz, .pt or .jsonl"):
        load_token_dataset(tmp_path / "t.csv")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"dataset 'junk': cannot read .*junk.npz"):
        load_token_dataset(tmp_path / "junk.npz")


def test_an_object_array_never_unpickles_anything_but_arrays(tmp_path: Path) -> None:
    rows = np.empty(2, dtype=object)
    rows[0], rows[1] = np.array([1, 2]), datetime.date(2020, 1, 1)  # any class: could run code
    path = _save(tmp_path, input_ids=rows)
    with pytest.raises(DataError, match=r"cannot read .*: an object array may only hold numbers and arrays, found a "):
        load_token_dataset(path)


def test_a_vocabulary_size_bounds_every_id() -> None:
    with pytest.raises(DataError, match="'input_ids' holds id 6, outside the vocabulary of 5 tokens"):
        token_dataset(IDS, vocab_size=5)
    with pytest.raises(DataError, match="'labels' holds id 9, outside the vocabulary of 7 tokens"):
        token_dataset(IDS, labels=IDS + 3, vocab_size=7)


def test_bytes_round_trip() -> None:
    text = "Beautiful is better than ugly. Ünïcödé ✓"
    ids = encode_bytes(text)
    assert ids.max() < 256 and decode_bytes(np.concatenate([[BOS_ID], ids, [EOS_ID, PAD_ID]])) == text


def test_the_byte_corpus_is_deterministic_and_split_by_document() -> None:
    test = load_byte_corpus("test", seq_len=64)
    again = load_byte_corpus("test", seq_len=64)
    train = load_byte_corpus("train", seq_len=64)
    assert test.sha256 == again.sha256 and test.sha256 != train.sha256
    np.testing.assert_array_equal(test.input_ids, again.input_ids)
    assert test.vocab_size == train.vocab_size == BYTE_VOCAB_SIZE
    assert test.input_ids.shape[1] == 64 and np.all(test.input_ids[:, 0] == BOS_ID)
    assert set(test.meta["document"]).isdisjoint(train.meta["document"])
    assert 0.03 < test.n_scored / (test.n_scored + train.n_scored) < 0.25  # about one document in ten
    # every byte and every document end is a scored target; padding only at the very end
    assert test.n_scored == int((test.input_ids != BOS_ID).sum() - (test.input_ids == PAD_ID).sum())
    assert np.all(test.attention_mask[:-1] == 1)
    # the stream is the split's documents in order, each followed by EOS
    docs = [text for name, text in corpus_documents() if hashlib.sha256(name.encode()).digest()[0] % 10 == 0]
    stream = test.input_ids[:, 1:].ravel()
    stream = stream[stream != PAD_ID]
    assert np.sum(stream == EOS_ID) == len(docs)
    assert decode_bytes(stream[: len(encode_bytes(docs[0]))]) == docs[0]


def test_the_byte_corpus_is_python_s_own_text() -> None:
    names = [name for name, _ in corpus_documents()]
    assert names[0] == "this" and "argparse" in names and "json.dumps" in names
    assert dict(corpus_documents())["this"].startswith("The Zen of Python, by Tim Peters")


@pytest.mark.parametrize(("args", "message"), [(("dev",), "splits 'train', 'test' and 'all'"), (("test", 1), ">= 2")])
def test_byte_corpus_options_are_checked(args: tuple, message: str) -> None:
    split, *rest = args
    with pytest.raises(DataError, match=message):
        load_byte_corpus(split, **({"seq_len": rest[0]} if rest else {}))


def test_the_content_hash_of_arrays_covers_every_column() -> None:
    base = token_dataset(IDS, meta={"a": np.array([1, 2])})
    assert base.sha256 == token_dataset(IDS, meta={"a": np.array([1, 2])}).sha256
    changed = [
        token_dataset(IDS, meta={"a": np.array([1, 3])}),
        token_dataset(IDS, meta={"b": np.array([1, 2])}),
        token_dataset(IDS, labels=np.where(IDS == 2, -100, IDS), meta={"a": np.array([1, 2])}),
        token_dataset(IDS, ids=np.array(["p", "q"]), meta={"a": np.array([1, 2])}),
    ]
    assert len({base.sha256, *(d.sha256 for d in changed)}) == 5


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_a_pt_file_holds_tokens_when_it_has_input_ids(tmp_path: Path, zipfile_format: bool) -> None:
    from distill_eval.config import DatasetSpec
    from distill_eval.lm.session import holds_tokens

    def spec(obj: object, name: str) -> DatasetSpec:
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=zipfile_format)
        return DatasetSpec(name="d", path=tmp_path / name)

    assert holds_tokens(spec({"input_ids": torch.zeros(2, 3, dtype=torch.int64)}, "tokens.pt"))
    assert not holds_tokens(spec({"x": torch.zeros(2, 3)}, "rows.pt"))
    assert not holds_tokens(spec(torch.zeros(2, 3), "tensor.pt"))
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    assert not holds_tokens(DatasetSpec(name="d", path=tmp_path / "broken.pt"))
