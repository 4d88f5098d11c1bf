"""Token datasets: ``.npz`` / ``.pt`` files of token ids, ``.jsonl`` text, and a built-in byte-level corpus.

A :class:`TokenDataset` holds ``S`` sequences as arrays of shape ``(S, L)``: ``input_ids``,
``attention_mask`` and ``labels`` in the Hugging Face *unshifted* convention (``labels`` is
aligned with ``input_ids``; the logits at position ``t`` score ``labels[t + 1]``; ``-100``
marks a token that is not scored, e.g. a prompt or padding). Ragged sequences are padded on
the right with id 0, attention 0 and label ``-100``; left padding given in a file is kept.

File layout (``np.savez`` or ``torch.save`` of a dict):

``input_ids`` (required)
    Integer token ids >= 0: an array of shape ``(S, L)``, or ragged: an object array or
    list of ``S`` one-dimensional sequences.
``attention_mask`` (optional)
    0/1, the same shape (or the same row lengths); default 1 over every given token.
``labels`` (optional)
    Integer ids >= 0 or ``-100``, the same shape; ``-100`` wherever the attention mask is 0.
    Default: ``input_ids`` where attended, else ``-100`` (every next token is scored).
``ids`` (optional)
    One unique string per sequence; default ``"0"``, ``"1"``, ...
``meta_<name>`` (optional)
    One value per sequence, usable to slice the results.

Any other key is an error (a misspelt ``attention_mask`` must not be silently ignored).
Object arrays in an ``.npz`` (ragged rows) are read with an unpickler that builds numpy arrays
and nothing else, and ``.pt`` files with ``torch.load(weights_only=True)``: loading data never
runs code from the file.

A ``.jsonl`` file holds text, one JSON object per line, tokenized here with a local tokenizer
(:func:`load_jsonl_tokens`): ``{"text": ...}`` (every next token scored) or ``{"prompt": ...,
"completion": ...}`` (only the completion's tokens scored), each with an optional ``"id"``
and ``"meta"`` object.
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import io
import json
import os
import pickle
import sysconfig
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval._hashing import sha256_arrays, sha256_file
from distill_eval._suggest import did_you_mean
from distill_eval.errors import DataError

__all__ = [
    "BOS_ID",
    "BYTE_VOCAB_SIZE",
    "EOS_ID",
    "IGNORE_INDEX",
    "PAD_ID",
    "TokenBatch",
    "TokenDataset",
    "decode_bytes",
    "encode_bytes",
    "load_byte_corpus",
    "load_jsonl_tokens",
    "load_token_dataset",
    "token_dataset",
]

#: the label of a token that is not scored (PyTorch's ``CrossEntropyLoss`` default)
IGNORE_INDEX = -100
#: the byte-level vocabulary: bytes 0-255, then these three special tokens
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
BYTE_VOCAB_SIZE = 259

_KEYS = ("input_ids", "attention_mask", "labels", "ids")


@dataclass(frozen=True)
class TokenBatch:
    """One batch of sequences, cut to the columns any of them attends.

    Attributes
    ----------
    start : int
        Index of the batch's first sequence in the dataset.
    input_ids, attention_mask, labels : ndarray of shape (batch, length)
        int64 arrays, ready for ``torch.from_numpy``.
    """

    start: int
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class TokenDataset:
    """Sequences of token ids with their scored positions.

    Attributes
    ----------
    name : str
        The dataset's name.
    input_ids : ndarray of shape (n_sequences, max_length)
        int64 token ids; padding is 0.
    attention_mask : ndarray of shape (n_sequences, max_length)
        int64, 1 where a token is real.
    labels : ndarray of shape (n_sequences, max_length)
        int64 target ids, unshifted, ``-100`` where not scored.
    ids : ndarray of shape (n_sequences,)
        Unique string ids.
    meta : mapping of str to ndarray of shape (n_sequences,)
        Per-sequence columns.
    source : str
        The file path or built-in source.
    sha256 : str
        Content hash.
    vocab_size : int or None
        The vocabulary size, where the source knows it (the byte corpus does).
    eos_id : int or None
        The end-of-sequence token, where the source knows it (the byte corpus and the byte
        tokenizer: :data:`EOS_ID`; a Hugging Face tokenizer: its ``eos_token_id``).
    decode : callable or None
        ``ids -> str``: the text of token ids, where the source can tell (the byte corpus, a
        tokenizer); None for a file of ids.
    """

    name: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    meta: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    sha256: str = ""
    vocab_size: int | None = None
    eos_id: int | None = None
    decode: Callable[[np.ndarray], str] | None = field(default=None, repr=False)

    @property
    def n_sequences(self) -> int:
        """Number of sequences."""
        return int(self.input_ids.shape[0])

    def scored(self) -> np.ndarray:
        """Which positions' logits are scored: array of bool of shape (n_sequences, max_length).

        Position ``t`` is scored when ``labels[t + 1] != -100`` and both ``t`` and ``t + 1`` are
        attended; the last position never is.
        """
        return scored_positions(self.labels, self.attention_mask)

    @property
    def n_scored(self) -> int:
        """Number of scored tokens."""
        return int(self.scored().sum())

    def scored_labels(self) -> np.ndarray:
        """The target id of every scored token, in (sequence, position) order: array of int64.

        The logits at a scored position ``t`` are scored against ``labels[t + 1]``; these are those
        labels, in the order of :class:`~distill_eval.lm.pairstats.TokenStats` rows.
        """
        return self.labels[:, 1:][self.scored()[:, :-1]]

    def batches(self, batch_size: int) -> Iterator[TokenBatch]:
        """Consecutive batches of ``batch_size`` sequences, each cut after its last attended column.

        Parameters
        ----------
        batch_size : int
            Sequences per batch (the last batch may be smaller).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        for start in range(0, self.n_sequences, batch_size):
            rows = slice(start, start + batch_size)
            mask = self.attention_mask[rows]
            attended = np.flatnonzero(mask.any(axis=0))
            width = int(attended[-1]) + 1 if attended.size else 1
            yield TokenBatch(
                start=start,
                input_ids=self.input_ids[rows, :width],
                attention_mask=mask[:, :width],
                labels=self.labels[rows, :width],
            )

    def describe(self) -> dict[str, object]:
        """Provenance for results: source, sha256, sequences and scored tokens."""
        return {"source": self.source, "sha256": self.sha256, "n": self.n_sequences, "tokens": self.n_scored}


def scored_positions(labels: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The positions whose logits are scored, in the unshifted convention.

    Parameters
    ----------
    labels, attention_mask : array of shape (n_sequences, length)
        Unshifted labels (``-100`` = not scored) and the 0/1 attention mask.

    Returns
    -------
    scored : ndarray of bool of shape (n_sequences, length)
        ``scored[s, t]``: the logits at ``t`` are scored against ``labels[s, t + 1]``.
    """
    labels = np.asarray(labels)
    attended = np.asarray(attention_mask) != 0
    scored = np.zeros(labels.shape, dtype=bool)
    scored[:, :-1] = (labels[:, 1:] != IGNORE_INDEX) & attended[:, 1:] & attended[:, :-1]
    return scored


# -- construction and validation -------------------------------------------------


def token_dataset(
    input_ids: Any,
    attention_mask: Any = None,
    labels: Any = None,
    *,
    ids: Any = None,
    meta: Mapping[str, Any] | None = None,
    name: str = "tokens",
    source: str = "",
    sha256: str | None = None,
    vocab_size: int | None = None,
    eos_id: int | None = None,
    decode: Callable[[np.ndarray], str] | None = None,
) -> TokenDataset:
    """Validate token arrays and build a :class:`TokenDataset`.

    Parameters
    ----------
    input_ids : array of shape (n_sequences, length), or a sequence of 1-D arrays
        Token ids, integers >= 0; ragged rows are padded on the right.
    attention_mask : same layout as ``input_ids``, optional
        0/1; default all ones.
    labels : same layout as ``input_ids``, optional
        Unshifted target ids or ``-100``; default ``input_ids`` where attended.
    ids : array of shape (n_sequences,), optional
        Unique per-sequence ids (strings after conversion).
    meta : mapping of str to array of shape (n_sequences,), optional
        Per-sequence columns.
    name, source : str
        For messages and provenance.
    sha256 : str, optional
        Content hash; default: a hash of the validated arrays.
    vocab_size : int, optional
        When given, every id must be below it.
    eos_id : int, optional
        The end-of-sequence token id, when the source has one.
    decode : callable, optional
        ``ids -> str``, when the source can turn ids into text.

    Returns
    -------
    TokenDataset

    Raises
    ------
    DataError
        Naming the dataset, the key and what was expected.
    """
    where = f"dataset '{name}'" + (f" ({source})" if source else "")
    tokens = _ints(_rows(input_ids, "input_ids", where), "input_ids", where, low=0)
    lengths = np.array([len(r) for r in tokens], dtype=np.int64)
    if len(tokens) == 0:
        raise DataError(f"{where}: 'input_ids' holds no sequences")
    width = int(lengths.max())
    if width == 0:
        raise DataError(f"{where}: 'input_ids' holds only empty sequences")
    token_arr = _pad(tokens, width, 0)
    if vocab_size is not None and token_arr.max() >= vocab_size:
        raise DataError(
            f"{where}: 'input_ids' holds id {int(token_arr.max())}, outside the vocabulary of {vocab_size} tokens"
        )

    if attention_mask is None:
        mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    else:
        mask = _pad(
            _ints(_rows(attention_mask, "attention_mask", where, lengths), "attention_mask", where, low=0), width, 0
        )
        if mask.max() > 1:
            raise DataError(f"{where}: 'attention_mask' must hold only 0 and 1, found {int(mask.max())}")

    if labels is None:
        target = np.where(mask == 1, token_arr, IGNORE_INDEX)
    else:
        rows = _ints(_rows(labels, "labels", where, lengths), "labels", where, low=IGNORE_INDEX)
        target = _pad(rows, width, IGNORE_INDEX)
        bad = (target < 0) & (target != IGNORE_INDEX)
        if bad.any():
            s, t = np.argwhere(bad)[0]
            raise DataError(
                f"{where}: 'labels' must be token ids >= 0 or -100 (not scored), found {int(target[s, t])} "
                f"in sequence {s} at position {t}"
            )
        if vocab_size is not None and target.max() >= vocab_size:
            raise DataError(
                f"{where}: 'labels' holds id {int(target.max())}, outside the vocabulary of {vocab_size} tokens"
            )
        unattended = (target != IGNORE_INDEX) & (mask == 0)
        if unattended.any():
            s, t = np.argwhere(unattended)[0]
            raise DataError(
                f"{where}: 'labels' scores a token the attention mask hides (sequence {s}, position {t}); "
                "set the label of every masked position to -100"
            )
    if not scored_positions(target, mask).any():
        raise DataError(
            f"{where} has no scored token: every next-token label is -100 or masked "
            "(labels are unshifted: position t is scored by labels[t + 1])"
        )

    n = len(tokens)
    if ids is None:
        id_arr = np.array([str(i) for i in range(n)])
    else:
        id_arr = np.asarray(ids).astype(str)
        if id_arr.shape != (n,):
            raise DataError(f"{where}: 'ids' has shape {id_arr.shape}; expected ({n},), one per sequence")
        uniq, counts = np.unique(id_arr, return_counts=True)
        if len(uniq) != n:
            dups = ", ".join(map(repr, uniq[counts > 1][:3].tolist()))
            raise DataError(f"{where}: 'ids' must be unique; repeated: {dups}")
    clean_meta = {}
    for key, column in (meta or {}).items():
        column = np.asarray(column)
        if column.shape != (n,):
            raise DataError(f"{where}: 'meta_{key}' has shape {column.shape}; expected ({n},), one per sequence")
        clean_meta[key] = column
    if sha256 is None:
        columns = sorted(clean_meta)
        sha256 = sha256_arrays(token_arr, mask, target, id_arr, *(clean_meta[c] for c in columns), salt=repr(columns))
    return TokenDataset(
        name=name,
        input_ids=token_arr,
        attention_mask=mask,
        labels=target,
        ids=id_arr,
        meta=clean_meta,
        source=source,
        sha256=sha256,
        vocab_size=vocab_size,
        eos_id=eos_id,
        decode=decode,
    )


def _rows(value: Any, key: str, where: str, lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """A 2-D array or a ragged sequence as a list of 1-D arrays, checked against ``lengths``."""
    value = _numpy(value)
    if isinstance(value, np.ndarray) and value.dtype != object:
        if value.ndim != 2:
            raise DataError(
                f"{where}: '{key}' must have shape (sequences, length) or be a list of sequences, "
                f"got shape {value.shape}"
            )
        rows = list(value)
    elif isinstance(value, np.ndarray | Sequence) and not isinstance(value, str | bytes):
        rows = []
        for i, row in enumerate(value):
            row = np.asarray(_numpy(row))
            if row.ndim == 0:
                raise DataError(
                    f"{where}: '{key}' must be a list of sequences (one list of ids each), got a flat list of "
                    "numbers; wrap a single sequence in a list"
                )
            if row.dtype == object or row.ndim != 1:
                raise DataError(
                    f"{where}: '{key}' sequence {i} must be a flat list of integers, got shape {row.shape} "
                    f"and dtype {row.dtype}"
                )
            rows.append(row)
    else:
        raise DataError(f"{where}: '{key}' must be an array or a list of sequences, got {type(value).__name__}")
    if lengths is not None:
        if len(rows) != len(lengths):
            raise DataError(f"{where}: '{key}' has {len(rows)} sequences but 'input_ids' has {len(lengths)}")
        for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            if len(row) != n:
                raise DataError(f"{where}: '{key}' sequence {i} has {len(row)} tokens but 'input_ids' has {n}")
    return rows


def _numpy(value: Any) -> Any:
    """A torch tensor as a numpy array (other values unchanged), without importing torch."""
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _ints(rows: list[np.ndarray], key: str, where: str, *, low: int) -> list[np.ndarray]:
    """Rows as int64, or a DataError unless every value is an integer >= ``low``."""
    out = []
    for i, row in enumerate(rows):
        if row.dtype == bool or np.issubdtype(row.dtype, np.integer):
            ints = row.astype(np.int64)
        elif np.issubdtype(row.dtype, np.floating) and np.all(np.isfinite(row)) and np.all(np.mod(row, 1) == 0):
            ints = row.astype(np.int64)  # e.g. a float attention mask
        else:
            raise DataError(f"{where}: '{key}' must hold integers, got dtype {row.dtype} in sequence {i}")
        if ints.size and ints.min() < low:
            raise DataError(f"{where}: '{key}' must be >= {low}, found {int(ints.min())} in sequence {i}")
        out.append(ints)
    return out


def _pad(rows: list[np.ndarray], width: int, fill: int) -> np.ndarray:
    """Rows padded on the right to ``width`` columns with ``fill``."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# -- readers -------------------------------------------------------------------


def load_token_dataset(
    path: str | Path,
    *,
    name: str | None = None,
    vocab_size: int | None = None,
    tokenizer: str | Path | Any = None,
    max_length: int | None = None,
    bos: bool | None = None,
) -> TokenDataset:
    """Read a token dataset from an ``.npz``, ``.pt`` or ``.jsonl`` file (layouts in the module docstring).

    Parameters
    ----------
    path : str or Path
        The file.
    name : str, optional
        The dataset's name in messages; default the file's stem.
    vocab_size : int, optional
        When given, every id must be below it.
    tokenizer, max_length, bos
        For ``.jsonl`` text only, as :func:`load_jsonl_tokens` (``tokenizer`` is required there);
        files of token ids take none of them.

    Returns
    -------
    TokenDataset

    Raises
    ------
    DataError
        When the file is missing, unreadable, has unknown keys or inconsistent arrays, or a text
        option is given for a file of token ids.
    """
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise DataError(f"dataset '{name}': file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl_tokens(path, tokenizer, name=name, vocab_size=vocab_size, max_length=max_length, bos=bos)
    readers = {".npz": _read_npz, ".pt": _read_pt, ".pth": _read_pt}
    if suffix not in readers:
        raise DataError(
            f"dataset '{name}': {path}: unsupported format {suffix!r} for tokens; expected .npz, .pt or .jsonl"
        )
    given = [k for k, v in (("tokenizer", tokenizer), ("max_length", max_length), ("bos", bos)) if v is not None]
    if given:
        raise DataError(
            f"dataset '{name}' ({path}): {', '.join(repr(k) for k in given)} only applies to .jsonl text; "
            f"a {suffix} file holds token ids already"
        )
    try:
        arrays = readers[suffix](path)
    except DataError:
        raise
    except Exception as e:  # a corrupt file: say which, without a traceback
        raise DataError(f"dataset '{name}': cannot read {path}: {e}") from e
    where = f"dataset '{name}' ({path})"
    if "input_ids" not in arrays:
        raise DataError(f"{where} has no key 'input_ids' (found: {sorted(arrays)})")
    for key in arrays:
        if key not in _KEYS and not key.startswith("meta_"):
            raise DataError(
                f"{where}: unknown key '{key}'{did_you_mean(key, _KEYS)}; expected "
                "input_ids, attention_mask, labels, ids and meta_<name> columns"
            )
    meta = {k[len("meta_") :]: v for k, v in arrays.items() if k.startswith("meta_")}
    return token_dataset(
        arrays["input_ids"],
        arrays.get("attention_mask"),
        arrays.get("labels"),
        ids=arrays.get("ids"),
        meta=meta,
        name=name,
        source=str(path),
        sha256=sha256_file(path),
        vocab_size=vocab_size,
    )


def _read_npz(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            key = member[: -len(".npy")] if member.endswith(".npy") else member
            with archive.open(member) as f:
                out[key] = _read_npy(io.BytesIO(f.read()))
    return out


def _read_npy(f: io.BytesIO) -> np.ndarray:
    """One ``.npy`` member; object arrays (ragged rows) through an unpickler that builds only arrays."""
    version = np.lib.format.read_magic(f)
    header = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
    _, _, dtype = header(f)  # an object array's header is ASCII, which both versions read alike
    if not dtype.hasobject:
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    array = _ArrayUnpickler(f).load()
    if not isinstance(array, np.ndarray):
        raise pickle.UnpicklingError(f"expected an array, found a pickled {type(array).__name__}")
    return array


_PICKLED_ARRAY_PARTS = frozenset(
    {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),  # written by numpy 1.x
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays of numbers and arrays, nothing else: a data file must not run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLED_ARRAY_PARTS:
            raise pickle.UnpicklingError(
                f"an object array may only hold numbers and arrays, found a pickled {module}.{name}"
            )
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def _read_pt(path: Path) -> dict[str, Any]:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise DataError(f"{path} must hold a dict with at least the key 'input_ids', got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


# -- .jsonl text with a local tokenizer ----------------------------------------

_JSONL_KEYS = ("text", "prompt", "completion", "id", "meta")


@dataclass(frozen=True)
class _Tokenizer:
    """What the reader needs of a tokenizer: a batch encoder, its vocabulary size, BOS and EOS ids, a decoder."""

    encode: Any  # list[str] -> list[list[int]], no special tokens added
    vocab_size: int
    bos_id: int | None
    description: str
    eos_id: int | None = None
    decode: Any = None  # ids -> str, special tokens dropped


def load_jsonl_tokens(
    path: str | Path,
    tokenizer: str | Path | Any,
    *,
    name: str | None = None,
    vocab_size: int | None = None,
    max_length: int | None = None,
    bos: bool | None = None,
) -> TokenDataset:
    """Tokenize a ``.jsonl`` file of text or prompt/completion pairs.

    Each non-blank line is one JSON object, one sequence:

    ``{"text": "..."}``
        Every next token is scored.
    ``{"prompt": "...", "completion": "..."}``
        The prompt's tokens are context (label ``-100``); the completion's are scored. Prompt
        and completion are tokenized separately and joined, so the boundary is exact (put the
        separating space where the tokenizer expects it, e.g. at the start of the completion).
    ``"id"`` (optional, on every line or none)
        A unique string or integer; default the line number.
    ``"meta"`` (optional)
        An object of strings, numbers or booleans; each key becomes a per-sequence column
        (every line must have the same keys, each key one type).

    Parameters
    ----------
    path : str or Path
        The file (UTF-8).
    tokenizer : str, Path or tokenizer object
        ``"bytes"``: the built-in byte tokenizer (:func:`encode_bytes`, vocabulary
        :data:`BYTE_VOCAB_SIZE`, BOS :data:`BOS_ID`); a local Hugging Face tokenizer directory,
        loaded with ``AutoTokenizer.from_pretrained(dir, local_files_only=True)`` (needs
        ``pip install 'distill-eval[hf]'``; nothing is downloaded); or a loaded Hugging Face
        tokenizer. Texts are encoded without the tokenizer's own special tokens; BOS is added
        as ``bos`` says.
    name : str, optional
        The dataset's name in messages; default the file's stem.
    vocab_size : int, optional
        The vocabulary size; default the tokenizer's (``len(tokenizer)``, added tokens included).
    max_length : int, optional
        At most this many tokens per sequence (BOS included). A text keeps its first tokens; a
        prompt/completion pair loses the start of its prompt first (BOS is kept), then the end
        of its completion.
    bos : bool, optional
        Start every sequence with the tokenizer's BOS token. Default: when it has one.
        ``True`` with a tokenizer without one is an error.

    Returns
    -------
    TokenDataset
        Ids from the file (as strings) or ``"line-<n>"``, the ``meta`` columns, ``vocab_size``
        set, ``sha256`` a hash of the token arrays, ids and meta columns.

    Raises
    ------
    DataError
        Naming the file, the line and the key: invalid JSON, a line that is not an object,
        unknown or missing keys, non-string text, an empty completion, a line left with no
        scored token, repeated ids, inconsistent meta; a missing tokenizer directory, or a
        missing ``transformers``.
    """
    path = Path(path)
    name = name or path.stem
    where = f"dataset '{name}' ({path})"
    if not path.is_file():
        raise DataError(f"dataset '{name}': file not found: {path}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise DataError(
            f"{where}: max_length must be an integer >= 2 (a context token and a scored one), got {max_length!r}"
        )
    if bos is not None and not isinstance(bos, bool):
        raise DataError(f"{where}: bos must be true or false, got {bos!r}")
    tok = _load_tokenizer(tokenizer, where)
    if bos and tok.bos_id is None:
        raise DataError(f"{where}: bos = true, but the tokenizer {tok.description} has no BOS token")
    bos_id = tok.bos_id if bos is not False else None
    vocab = tok.vocab_size if vocab_size is None else vocab_size

    lines = _read_jsonl(path, where)
    kinds = {"text" if "text" in obj else "pair" for _, obj in lines}
    texts = [obj.get("text", obj.get("prompt")) for _, obj in lines]
    completions = [obj.get("completion", "") for _, obj in lines]
    encoded = _encode(tok, texts, where)
    encoded_completions = _encode(tok, completions, where) if "pair" in kinds else [[]] * len(lines)

    rows, label_rows = [], []
    for (line, obj), context, completion in zip(lines, encoded, encoded_completions, strict=True):
        head = [] if bos_id is None else [bos_id]
        if "text" in obj:
            ids = head + context
            if max_length is not None:
                ids = ids[:max_length]
            labels = [IGNORE_INDEX] * len(head) + ids[len(head) :]
        else:
            if not completion:
                raise DataError(f"{where}, line {line}: 'completion' gives no tokens; a completion must not be empty")
            if max_length is not None:
                keep = max(0, max_length - len(head) - len(completion))
                context = context[len(context) - keep :] if keep else []
                completion = completion[: max_length - len(head)]
            ids = head + context + completion
            labels = [IGNORE_INDEX] * (len(head) + len(context)) + completion
        if not any(label != IGNORE_INDEX for label in labels[1:]):
            key = "text" if "text" in obj else "completion"
            raise DataError(
                f"{where}, line {line}: '{key}' leaves no scored token ({len(ids)} token(s) in all; a token is "
                "scored when a token comes before it: add text, a prompt, or a BOS token with bos = true)"
            )
        rows.append(np.asarray(ids, dtype=np.int64))
        label_rows.append(np.asarray(labels, dtype=np.int64))

    if vocab is not None:
        for (line, _), row in zip(lines, rows, strict=True):
            if row.size and int(row.max()) >= vocab:
                raise DataError(
                    f"{where}, line {line}: the tokenizer gives id {int(row.max())}, outside the vocabulary of "
                    f"{vocab} tokens"
                )
    return token_dataset(
        rows,
        None,
        label_rows,
        ids=_jsonl_ids(lines, where),
        meta=_jsonl_meta(lines, where),
        name=name,
        source=str(path),
        vocab_size=vocab,
        eos_id=tok.eos_id,
        decode=tok.decode,
    )


def _read_jsonl(path: Path, where: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every non-blank line, each checked for its keys and their types."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            numbered = list(enumerate(f, start=1))
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for line, raw in numbered:
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}, line {line}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(
                f'{where}, line {line}: expected a JSON object such as {{"text": ...}} or '
                f'{{"prompt": ..., "completion": ...}}, got {type(obj).__name__}'
            )
        for key in obj:
            if key not in _JSONL_KEYS:
                raise DataError(
                    f"{where}, line {line}: unknown key '{key}'{did_you_mean(key, _JSONL_KEYS)}; expected "
                    "'text', or 'prompt' and 'completion', and optionally 'id' and 'meta'"
                )
        if "text" in obj and ("prompt" in obj or "completion" in obj):
            raise DataError(f"{where}, line {line}: has 'text' and 'prompt'/'completion'; give one or the other")
        if "text" not in obj:
            for key in ("prompt", "completion"):
                if key not in obj:
                    other = "completion" if key == "prompt" else "prompt"
                    hint = (
                        f"'{other}' needs '{key}'" if other in obj else "expected 'text', or 'prompt' and 'completion'"
                    )
                    raise DataError(f"{where}, line {line}: missing key '{key}' ({hint})")
        for key in ("text", "prompt", "completion"):
            if key in obj and not isinstance(obj[key], str):
                raise DataError(f"{where}, line {line}: '{key}' must be a string, got {_json_type(obj[key])}")
        if "meta" in obj and not isinstance(obj["meta"], dict):
            raise DataError(
                f"{where}, line {line}: 'meta' must be an object of per-sequence values, got {_json_type(obj['meta'])}"
            )
        out.append((line, obj))
    if not out:
        raise DataError(f"{where} holds no lines; expected one JSON object per line")
    return out


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _jsonl_ids(lines: list[tuple[int, dict[str, Any]]], where: str) -> np.ndarray:
    with_id = [line for line, obj in lines if "id" in obj]
    if not with_id:
        return np.array([f"line-{line}" for line, _ in lines])
    if len(with_id) != len(lines):
        missing = next(line for line, obj in lines if "id" not in obj)
        raise DataError(
            f"{where}, line {missing}: missing key 'id' (other lines have one: give every line an id or none)"
        )
    seen: dict[str, int] = {}
    for line, obj in lines:
        value = obj["id"]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DataError(f"{where}, line {line}: 'id' must be a string or an integer, got {_json_type(value)}")
        if str(value) in seen:
            raise DataError(f"{where}, line {line}: 'id' {value!r} repeats line {seen[str(value)]}; ids must be unique")
        seen[str(value)] = line
    return np.array(list(seen))


def _jsonl_meta(lines: list[tuple[int, dict[str, Any]]], where: str) -> dict[str, np.ndarray]:
    keys = {key for _, obj in lines for key in obj.get("meta", {})}
    columns: dict[str, np.ndarray] = {}
    for key in sorted(keys):
        values, kind = [], None
        for line, obj in lines:
            meta = obj.get("meta", {})
            if key not in meta:
                raise DataError(
                    f"{where}, line {line}: 'meta' has no key '{key}' (other lines have it: give every line the "
                    "same meta keys)"
                )
            value = meta[key]
            this = "string" if isinstance(value, str) else "boolean" if isinstance(value, bool) else "number"
            if value is None or isinstance(value, dict | list):
                raise DataError(
                    f"{where}, line {line}: 'meta.{key}' must be a string, number or boolean, got {_json_type(value)}"
                )
            if kind is not None and this != kind:
                raise DataError(f"{where}, line {line}: 'meta.{key}' is a {this} here but a {kind} on earlier lines")
            kind = this
            values.append(value)
        columns[key] = np.asarray(values)
    return columns


def _load_tokenizer(tokenizer: Any, where: str) -> _Tokenizer:
    """The ``"bytes"`` tokenizer, a Hugging Face tokenizer directory, or a loaded tokenizer."""
    if tokenizer is None:
        raise DataError(
            f"{where}: a .jsonl file holds text and needs a tokenizer: a local Hugging Face tokenizer directory, "
            'or "bytes" for the built-in byte tokenizer'
        )
    if isinstance(tokenizer, str) and tokenizer == "bytes":
        return _Tokenizer(
            encode=lambda texts: [encode_bytes(t).tolist() for t in texts],
            vocab_size=BYTE_VOCAB_SIZE,
            bos_id=BOS_ID,
            description="'bytes'",
            eos_id=EOS_ID,
            decode=decode_bytes,
        )
    if isinstance(tokenizer, str | os.PathLike):
        directory = Path(tokenizer)
        if not directory.is_dir():
            raise DataError(
                f"{where}: tokenizer directory not found: {directory} (expected a local Hugging Face tokenizer "
                'directory, as save_pretrained writes, or "bytes")'
            )
        try:
            import transformers
        except ImportError:
            raise DataError(
                f"{where}: the tokenizer {directory} is a Hugging Face tokenizer, which needs the transformers "
                "package: pip install 'distill-eval[hf]'"
            ) from None
        from distill_eval.lm.models import _quiet_transformers
        from distill_eval.models import _first_line

        with _quiet_transformers(transformers):
            try:
                loaded = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            except Exception as e:  # noqa: BLE001 — a broken or foreign directory: one line, not a traceback
                raise DataError(f"{where}: cannot load the tokenizer in {directory}: {_first_line(e)}") from None
        return _hf_tokenizer(loaded, repr(str(directory)))
    if callable(getattr(tokenizer, "encode", None)) and hasattr(tokenizer, "__len__"):
        return _hf_tokenizer(tokenizer, type(tokenizer).__name__)
    raise DataError(
        f'{where}: tokenizer must be a directory path, "bytes" or a loaded tokenizer, got {type(tokenizer).__name__}'
    )


def _hf_tokenizer(tokenizer: Any, description: str) -> _Tokenizer:
    def encode(texts: list[str]) -> list[list[int]]:
        if callable(tokenizer):  # a Hugging Face tokenizer encodes a batch at once
            return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]

    def decode(ids: Any) -> str:
        return str(tokenizer.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=True))

    bos_id = getattr(tokenizer, "bos_token_id", None)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    return _Tokenizer(
        encode=encode,
        vocab_size=len(tokenizer),
        bos_id=bos_id,
        description=description,
        eos_id=eos_id if isinstance(eos_id, int) else None,
        decode=decode if callable(getattr(tokenizer, "decode", None)) else None,
    )


def _encode(tok: _Tokenizer, texts: list[str], where: str) -> list[list[int]]:
    if not texts:
        return []
    try:
        return [[int(i) for i in ids] for ids in tok.encode(texts)]
    except Exception as e:  # noqa: BLE001 — a tokenizer failing on the text: say where, not its traceback
        raise DataError(f"{where}: the tokenizer {tok.description} fails on the text: {e}") from None


# -- the built-in byte-level corpus ----------------------------------------------------

#: the standard-library sources whose docstrings make the corpus, read from the local install
_CORPUS_FILES = (
    "abc.py", "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py", "difflib.py", "enum.py",
    "fractions.py", "functools.py", "glob.py", "gzip.py", "heapq.py", "inspect.py", "json/__init__.py",
    "logging/__init__.py", "os.py", "pathlib.py", "pickle.py", "pprint.py", "random.py", "re/__init__.py",
    "shlex.py", "shutil.py", "statistics.py", "string.py", "tarfile.py", "textwrap.py", "threading.py",
    "typing.py", "unittest/case.py", "uuid.py", "zipfile.py",
)  # fmt: skip
_TEST_SHARE = 10  # one document in ten (by the hash of its name) is test data


def encode_bytes(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as token ids (int64 in [0, 256)).

    Examples
    --------
    >>> encode_bytes("hé").tolist()
    [104, 195, 169]
    """
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode_bytes(ids: Any) -> str:
    """The text of byte token ids; special tokens (>= 256) are dropped, invalid UTF-8 replaced.

    Examples
    --------
    >>> decode_bytes([256, 104, 195, 169, 257])
    'hé'
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    return bytes(ids[(ids >= 0) & (ids < 256)].astype(np.uint8).tolist()).decode("utf-8", errors="replace")


@cache
def corpus_documents() -> tuple[tuple[str, str], ...]:
    """The corpus's documents: ``(name, text)`` of the Zen of Python and standard-library docstrings.

    Read from the running Python's own standard library (never imported, never downloaded), in a
    fixed order: module, class and function docstrings, named by qualified name. Files missing
    from a stripped-down install are skipped; the content hash of a dataset records what was read.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[tuple[str, str]] = []
    this = root / "this.py"
    if this.is_file():  # the Zen is stored rot13-encoded in `this.s`; importing it would print it
        tree = ast.parse(this.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "s":
                docs.append(("this", codecs.decode(ast.literal_eval(node.value), "rot13")))
    for rel in _CORPUS_FILES:
        path = root / rel
        if not path.is_file():
            continue
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        docs.extend(_docstrings(ast.parse(path.read_text(encoding="utf-8")), module))
    return tuple(docs)


def _docstrings(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    """Docstrings of a node and the classes and functions inside it, depth first, in source order."""
    doc = ast.get_docstring(node) if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) else None
    if doc:
        yield prefix, doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _docstrings(child, f"{prefix}.{child.name}")


def _is_test_document(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] % _TEST_SHARE == 0


def load_byte_corpus(split: str = "test", *, seq_len: int = 128, name: str | None = None) -> TokenDataset:
    """The built-in byte-level corpus: Python's own docstrings as fixed-length sequences of bytes.

    Documents (see :func:`corpus_documents`) go to the test split when the first byte of the
    sha256 of their name is divisible by 10 (about one in ten), else to the train split, so the
    split does not depend on the Python version. Each split's documents are joined in order,
    each followed by :data:`EOS_ID`, and cut into chunks of ``seq_len - 1`` bytes; a sequence is
    :data:`BOS_ID` followed by one chunk. The last sequence is padded with :data:`PAD_ID`
    (attention 0, label -100). Every next byte is scored.

    Parameters
    ----------
    split : {"test", "train", "all"}, default "test"
        Which documents.
    seq_len : int, default 128
        Tokens per sequence, BOS included (>= 2).
    name : str, optional
        The dataset's name; default ``"bytes:<split>"``.

    Returns
    -------
    TokenDataset
        With ``vocab_size`` :data:`BYTE_VOCAB_SIZE`, ``eos_id`` :data:`EOS_ID`, ids ``"bytes-<split>-<i>"`` and meta
        ``document`` (the name of the document the sequence starts in) and ``offset`` (its
        first byte's offset in the split's stream).

    Raises
    ------
    DataError
        For an unknown split, a ``seq_len`` below 2, or an install without the source files.
    """
    if split not in ("test", "train", "all"):
        raise DataError(f"the byte corpus has splits 'train', 'test' and 'all', got {split!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise DataError(f"the byte corpus needs seq_len >= 2 (BOS and one byte), got {seq_len!r}")
    docs = [(n, t) for n, t in corpus_documents() if split == "all" or _is_test_document(n) == (split == "test")]
    if not docs:
        raise DataError(f"the byte corpus found no standard-library sources under {sysconfig.get_paths()['stdlib']}")
    pieces = [np.append(encode_bytes(text), EOS_ID) for _, text in docs]
    stream = np.concatenate(pieces)
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])  # where each document begins in the stream
    chunk = seq_len - 1
    n = -(-len(stream) // chunk)
    body = np.full(n * chunk, PAD_ID, dtype=np.int64)
    body[: len(stream)] = stream
    input_ids = np.concatenate([np.full((n, 1), BOS_ID), body.reshape(n, chunk)], axis=1)
    mask = (input_ids != PAD_ID).astype(np.int64)
    labels = np.where(mask == 1, input_ids, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX  # BOS is never a target
    offsets = np.arange(n) * chunk
    document = np.array([docs[i][0] for i in np.searchsorted(starts, offsets, side="right") - 1])
    return token_dataset(
        input_ids,
        mask,
        labels,
        ids=np.array([f"bytes-{split}-{i}" for i in range(n)]),
        meta={"document": document, "offset": offsets},
        name=name or f"bytes:{split}",
        source="builtin:bytes",  # as the dataset table names it; the split is in the name and the hash
        sha256=sha256_arrays(input_ids, salt=f"bytes:{split}:{seq_len}"),
        vocab_size=BYTE_VOCAB_SIZE,
        eos_id=EOS_ID,
        decode=decode_bytes,
    )
