""".jsonl text datasets: text and prompt/completion lines through a local tokenizer, and their errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from distill_eval.errors import DataError
from distill_eval.lm.tokens import (
    BOS_ID,
    BYTE_VOCAB_SIZE,
    IGNORE_INDEX,
    encode_bytes,
    load_jsonl_tokens,
    load_token_dataset,
)

WORDS = ["<unk>", "<s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny word-level Hugging Face tokenizer, built in-process and saved as a directory."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")
    out = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(out)
    return out


def word_ids(text: str) -> list[int]:
    """The reference tokenizer: split on whitespace, look up each word."""
    return [WORDS.index(w) if w in WORDS else 0 for w in text.split()]


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_text_and_prompt_completion_lines_with_a_hugging_face_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = write(
        tmp_path / "mixed.jsonl",
        {"text": "the cat sat on the mat .", "meta": {"topic": "cats", "n": 1}},
        "",  # blank lines are skipped
        {"prompt": "the dog", "completion": "ran on a mat", "meta": {"topic": "dogs", "n": 2}},
        {"prompt": "", "completion": "a cat", "meta": {"topic": "cats", "n": 3}},
    )
    data = load_token_dataset(path, tokenizer=str(tokenizer_dir))
    bos = WORDS.index("<s>")
    rows = [
        ([bos, *word_ids("the cat sat on the mat .")], [IGNORE_INDEX, *word_ids("the cat sat on the mat .")]),
        ([bos, *word_ids("the dog ran on a mat")], [IGNORE_INDEX] * 3 + word_ids("ran on a mat")),
        ([bos, *word_ids("a cat")], [IGNORE_INDEX, *word_ids("a cat")]),
    ]
    assert data.n_sequences == 3 and data.vocab_size == len(WORDS) and data.name == "mixed"
    for s, (ids, labels) in enumerate(rows):
        n = len(ids)
        assert data.input_ids[s, :n].tolist() == ids
        assert data.labels[s, :n].tolist() == labels
        assert data.attention_mask[s].tolist() == [1] * n + [0] * (data.input_ids.shape[1] - n)
        assert (data.labels[s, n:] == IGNORE_INDEX).all()
    # the prompt's tokens are context only: scored positions are the completion's (shifted by one)
    scored = data.scored()
    assert scored[1].tolist()[:6] == [False, False, True, True, True, True]
    assert data.n_scored == 7 + 4 + 2
    assert data.ids.tolist() == ["line-1", "line-3", "line-4"]  # line numbers of the file
    assert data.meta["topic"].tolist() == ["cats", "dogs", "cats"] and data.meta["n"].tolist() == [1, 2, 3]


def test_the_byte_tokenizer_needs_nothing_installed(tmp_path: Path) -> None:
    path = write(tmp_path / "b.jsonl", {"id": "x", "prompt": "Q: ", "completion": "é!"}, {"id": 7, "text": "hi"})
    data = load_token_dataset(path, tokenizer="bytes")
    assert data.vocab_size == BYTE_VOCAB_SIZE and data.ids.tolist() == ["x", "7"]
    prompt, completion = encode_bytes("Q: ").tolist(), encode_bytes("é!").tolist()
    assert data.input_ids[0].tolist() == [BOS_ID, *prompt, *completion]
    assert data.labels[0].tolist() == [IGNORE_INDEX] * 4 + completion
    assert data.input_ids[1, :3].tolist() == [BOS_ID, *encode_bytes("hi").tolist()]


def test_bos_false_drops_it_and_the_first_token_is_context(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"text": "the cat sat"})
    data = load_jsonl_tokens(path, tokenizer_dir, bos=False)
    assert data.input_ids[0].tolist() == word_ids("the cat sat")
    assert data.n_scored == 2  # 'cat' and 'sat'; the first token has nothing before it


def test_a_loaded_tokenizer_object_is_accepted(tmp_path: Path, tokenizer_dir: Path) -> None:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    path = write(tmp_path / "t.jsonl", {"text": "a dog ran"})
    from_dir = load_jsonl_tokens(path, tokenizer_dir)
    from_object = load_jsonl_tokens(path, tok)
    np.testing.assert_array_equal(from_dir.input_ids, from_object.input_ids)
    assert from_dir.sha256 == from_object.sha256


def test_max_length_cuts_text_at_the_end_and_prompts_at_the_start(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"text": "abcdefgh"}, {"prompt": "0123456789", "completion": "xyz"})
    data = load_jsonl_tokens(path, "bytes", max_length=6)
    assert data.input_ids.shape[1] == 6
    assert data.input_ids[0].tolist() == [BOS_ID, *encode_bytes("abcde").tolist()]
    # BOS kept, the prompt's start dropped, the whole completion kept and scored
    assert data.input_ids[1].tolist() == [BOS_ID, *encode_bytes("89xyz").tolist()]
    assert data.labels[1].tolist() == [IGNORE_INDEX] * 3 + encode_bytes("xyz").tolist()
    # a completion longer than the limit loses its end
    long = write(tmp_path / "l.jsonl", {"prompt": "p", "completion": "abcdefgh"})
    cut = load_jsonl_tokens(long, "bytes", max_length=4)
    assert cut.input_ids[0].tolist() == [BOS_ID, *encode_bytes("abc").tolist()]
    assert cut.labels[0].tolist() == [IGNORE_INDEX, *encode_bytes("abc").tolist()]


def test_the_content_hash_follows_the_tokens(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"text": "the cat"})
    with_bos = load_jsonl_tokens(path, tokenizer_dir)
    assert load_jsonl_tokens(path, tokenizer_dir).sha256 == with_bos.sha256
    assert load_jsonl_tokens(path, tokenizer_dir, bos=False, max_length=None).sha256 != with_bos.sha256
    assert load_jsonl_tokens(path, "bytes").sha256 != with_bos.sha256


BAD = [
    ("invalid json", ['{"text": "a"}', '{"text": "b",}'], "line 2: invalid JSON"),
    ("not an object", ['["a"]'], "line 1: expected a JSON object"),
    ("unknown key", [{"prompt": "a", "completions": "b"}], "unknown key 'completions' (did you mean 'completion'?)"),
    ("missing completion", [{"text": "ab"}, {"prompt": "a"}], "line 2: missing key 'completion'"),
    ("missing prompt", [{"completion": "a"}], "line 1: missing key 'prompt'"),
    ("neither", [{"id": 1}], "line 1: missing key 'prompt' (expected 'text', or 'prompt' and 'completion')"),
    ("both", [{"text": "a", "prompt": "b", "completion": "c"}], "line 1: has 'text' and 'prompt'/'completion'"),
    ("text not a string", [{"text": ["a", "b"]}], "line 1: 'text' must be a string, got a list"),
    ("empty completion", [{"text": "ab"}, {"prompt": "a", "completion": ""}], "line 2: 'completion' gives no tokens"),
    ("nothing scored", [{"text": "abc"}, {"text": "a"}], "line 2: 'text' leaves no scored token"),
    ("ids on some lines", [{"id": "a", "text": "ab"}, {"text": "cd"}], "line 2: missing key 'id'"),
    ("repeated id", [{"id": "a", "text": "ab"}, {"id": "a", "text": "cd"}], "line 2: 'id' 'a' repeats line 1"),
    ("id a list", [{"id": [1], "text": "ab"}], "line 1: 'id' must be a string or an integer, got a list"),
    ("meta not an object", [{"text": "ab", "meta": 3}], "line 1: 'meta' must be an object"),
    ("meta key missing", [{"text": "ab", "meta": {"k": 1}}, {"text": "cd"}], "line 2: 'meta' has no key 'k'"),
    ("meta mixed types", [{"text": "ab", "meta": {"k": 1}}, {"text": "cd", "meta": {"k": "x"}}], "is a string"),
    ("meta null", [{"text": "ab", "meta": {"k": None}}], "'meta.k' must be a string, number or boolean, got null"),
    ("empty file", ["", "  "], "holds no lines"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "lines", "message"), BAD, ids=[c[0] for c in BAD])
def test_bad_lines_name_the_file_the_line_and_the_key(tmp_path: Path, case: str, lines: list, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(DataError) as info:
        load_token_dataset(path, tokenizer="bytes", bos=False)
    text = str(info.value)
    assert f"dataset 'bad' ({path})" in text and message in text, text


def test_options_and_tokenizers_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "t.jsonl", {"text": "abc"})
    with pytest.raises(DataError, match=r"needs a tokenizer: a local Hugging Face tokenizer directory, or \"bytes\""):
        load_token_dataset(path)
    with pytest.raises(DataError, match=r"tokenizer directory not found: .*nope"):
        load_token_dataset(path, tokenizer=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"cannot load the tokenizer in .*empty"):
        load_token_dataset(path, tokenizer=tmp_path / "empty")
    with pytest.raises(DataError, match="max_length must be an integer >= 2"):
        load_token_dataset(path, tokenizer="bytes", max_length=1)
    with pytest.raises(DataError, match="outside the vocabulary of 100 tokens"):
        load_token_dataset(path, tokenizer="bytes", vocab_size=100)  # 'a' is 97, BOS is 256
    npz = tmp_path / "ids.npz"
    np.savez(npz, input_ids=np.arange(6).reshape(2, 3))
    with pytest.raises(DataError, match=r"'tokenizer', 'max_length' only applies to .jsonl text; a .npz file"):
        load_token_dataset(npz, tokenizer="bytes", max_length=4)
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_token_dataset(tmp_path / "latin1.jsonl", tokenizer="bytes")


def test_a_missing_transformers_says_how_to_install_it(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "t.jsonl", {"text": "the cat"})
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(DataError, match=r"needs the transformers package: pip install 'distill-eval\[hf\]'"):
        load_token_dataset(path, tokenizer=tokenizer_dir)
    # the byte tokenizer still works without it
    assert load_token_dataset(path, tokenizer="bytes").n_sequences == 1
