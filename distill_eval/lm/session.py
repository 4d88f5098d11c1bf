"""Token data in a ``pytest --distill`` run: which datasets hold tokens, and their cached pair statistics.

A dataset of ``[tool.distill_eval.datasets]`` is *token-level* when its ``.npz`` / ``.pt`` file
holds ``input_ids`` or it is ``source = "builtin:bytes"``; its teacher and student are then
loaded with :func:`~distill_eval.lm.models.load_token_model` and compared through
:class:`~distill_eval.lm.pairstats.TokenStats`, computed once per (teacher, student, dataset,
top-k) with both models on the same batch, and kept in the run's
:class:`~distill_eval.outputs.OutputCache` as one structured array (kind ``token-pairs``).
"""

from __future__ import annotations

import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval.config import TOKEN_SOURCES, DatasetSpec
from distill_eval.lm.pairstats import TokenStats
from distill_eval.lm.tokens import TokenDataset, load_byte_corpus, load_token_dataset
from distill_eval.outputs import result_key

__all__ = [
    "PAIR_KIND",
    "holds_tokens",
    "load_token_spec",
    "pack_stats",
    "pair_stats_key",
    "unpack_stats",
]

#: the ``kind`` of a cached TokenStats entry (``distill-eval cache`` lists it)
PAIR_KIND = "token-pairs"

#: the modules whose source computes cached pair statistics: editing one retires old entries
_PAIR_CODE = (
    "distill_eval.lm.pairstats",
    "distill_eval.lm.models",
    "distill_eval.lm.tokens",
    "distill_eval.lm.session",
)

#: the byte corpus's sequence length when ``seq_len`` is not given
DEFAULT_SEQ_LEN = 128


def holds_tokens(spec: DatasetSpec) -> bool:
    """Whether a dataset spec names token data: ``builtin:bytes``, a ``.jsonl`` text file or a file of ``input_ids``.

    Reads only an ``.npz`` file's member names; a ``.pt`` file is loaded (weights only).
    A missing or unreadable file is not token data (its loader reports it).
    """
    if spec.source is not None:
        return spec.source in TOKEN_SOURCES
    if spec.path is None:
        return False
    path = Path(spec.path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":  # text, tokenized by the dataset's tokenizer
        return True
    if not path.is_file():
        return False
    try:
        if suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                return "input_ids.npy" in archive.namelist() or "input_ids" in archive.namelist()
        if suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            return isinstance(obj, dict) and "input_ids" in obj
    except Exception:  # noqa: BLE001 — unreadable: the classification loader says why
        return False
    return False


def load_token_spec(spec: DatasetSpec) -> TokenDataset:
    """Load a token-level dataset spec: the byte corpus, a token file or a ``.jsonl`` text file.

    Raises
    ------
    DataError
        As :func:`~distill_eval.lm.tokens.load_byte_corpus` and
        :func:`~distill_eval.lm.tokens.load_token_dataset`, naming the dataset.
    """
    if spec.source in TOKEN_SOURCES:
        return load_byte_corpus(spec.split or "test", seq_len=spec.seq_len or DEFAULT_SEQ_LEN, name=spec.name)
    assert spec.path is not None
    if spec.tokenizer is not None:  # a .jsonl text file
        return load_token_dataset(
            spec.path, name=spec.name, tokenizer=spec.tokenizer, max_length=spec.max_length, bos=spec.bos
        )
    return load_token_dataset(spec.path, name=spec.name)


def pair_stats_key(
    teacher: str,
    student: str,
    data: TokenDataset,
    *,
    top_k: int,
    device: str,
    batch_size: int,
    torch_version: str,
) -> str:
    """The :class:`~distill_eval.outputs.OutputCache` key of a pair's statistics on a token dataset.

    Parameters
    ----------
    teacher, student : str
        Both models' fingerprints.
    data : TokenDataset
        Its content hash and size are part of the key.
    top_k : int
        The ``k`` of the top-k columns.
    device : str
        The resolved device; only its kind counts.
    batch_size : int
        Sequences per forward pass (batching can change the last bits of the logits).
    torch_version : str
        The installed torch version.
    """
    return result_key(
        PAIR_KIND,
        arrays={},
        settings={
            "teacher": teacher,
            "student": student,
            "dataset": data.sha256,
            "sequences": data.n_sequences,
            "tokens": data.n_scored,
            "top_k": top_k,
            "device": device.split(":")[0],
            "batch_size": batch_size,
            "torch": torch_version,
        },
        code=_PAIR_CODE,
    )


def pack_stats(stats: TokenStats) -> np.ndarray:
    """Every column of ``stats`` in one structured array (one record per token), for the cache."""
    columns = stats.columns()
    dtype = np.dtype([(name, column.dtype, column.shape[1:]) for name, column in columns.items()])
    out = np.empty(stats.n, dtype=dtype)
    for name, column in columns.items():
        out[name] = column
    return out


def unpack_stats(records: Any) -> TokenStats:
    """The :class:`TokenStats` of :func:`pack_stats`'s array.

    Raises
    ------
    ValueError
        When the array's fields are not TokenStats's columns.
    """
    names = records.dtype.names or ()
    expected = [f.name for f in fields(TokenStats)]
    if list(names) != expected:
        raise ValueError(f"a token-pairs entry needs the fields {expected}, got {list(names)}")
    return TokenStats.from_columns({name: np.ascontiguousarray(records[name]) for name in names})
