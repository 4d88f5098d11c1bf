"""Token data in a ``pytest --distill`` run: which datasets hold tokens, and their cached pair statistics.

A dataset of ``[tool.distill_eval.datasets]`` is *token-level* when its ``.npz`` / ``.pt`` file
holds ``input_ids`` or it is ``source = "builtin:bytes"``; its teacher and student are then
loaded with :func:`~distill_eval.lm.models.load_token_model` and compared through
:class:`~distill_eval.lm.pairstats.TokenStats`, computed once per (teacher, student, dataset,
top-k) with both models on the same batch, and kept in the run's
:class:`~distill_eval.outputs.OutputCache` as one structured array (kind ``token-pairs``).

The same pass also keeps each model's own per-token summary
(:class:`~distill_eval.lm.modelstats.ModelTokenStats`, kind ``token-model``, keyed by that
model alone), so that a check which needs no divergence can pair a cached teacher summary with
a student run alone (:class:`SummaryPair`): a second student never re-runs the teacher.
"""

from __future__ import annotations

import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval.config import TOKEN_SOURCES, DatasetSpec
from distill_eval.lm.modelstats import ModelTokenStats
from distill_eval.lm.pairstats import TokenStats, shared_vocab_size
from distill_eval.lm.tokens import TokenDataset, load_byte_corpus, load_token_dataset
from distill_eval.outputs import result_key

__all__ = [
    "MODEL_KIND",
    "PAIR_KIND",
    "SummaryPair",
    "holds_tokens",
    "load_token_spec",
    "model_stats_key",
    "pack_columns",
    "pack_stats",
    "pair_stats_key",
    "unpack_model_stats",
    "unpack_stats",
]

#: the ``kind`` of a cached TokenStats entry (``distill-eval cache`` lists it)
PAIR_KIND = "token-pairs"

#: the ``kind`` of a cached ModelTokenStats entry (one model's per-token summary)
MODEL_KIND = "token-model"

#: the modules whose source computes cached pair statistics: editing one retires old entries
_PAIR_CODE = (
    "distill_eval.lm.pairstats",
    "distill_eval.lm.modelstats",
    "distill_eval.lm.models",
    "distill_eval.lm.tokens",
    "distill_eval.lm.session",
)

#: the byte corpus's sequence length when ``seq_len`` is not given
DEFAULT_SEQ_LEN = 128


def holds_tokens(spec: DatasetSpec) -> bool:
    """Whether a dataset spec names token data: ``builtin:bytes``, a ``.jsonl`` text file or a file of ``input_ids``.

    Reads only an ``.npz`` file's member names; a ``.pt`` file is memory-mapped (weights only), so
    its tensors are not read.
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

            try:  # mapped, not read: only the keys are looked at, the loader reads the tensors
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be mapped
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
    models = {"teacher": teacher, "student": student}
    return _token_key(PAIR_KIND, models, data, top_k, device, batch_size, torch_version)


def model_stats_key(
    model: str, data: TokenDataset, *, top_k: int, device: str, batch_size: int, torch_version: str
) -> str:
    """The :class:`~distill_eval.outputs.OutputCache` key of one model's per-token summary on a token dataset.

    Parameters
    ----------
    model : str
        The model's fingerprint.
    data, top_k, device, batch_size, torch_version
        As :func:`pair_stats_key` (``top_k``: the summary's, ``token_top_k``).
    """
    return _token_key(MODEL_KIND, {"model": model}, data, top_k, device, batch_size, torch_version)


def _token_key(
    kind: str,
    models: dict[str, str],
    data: TokenDataset,
    top_k: int,
    device: str,
    batch_size: int,
    torch_version: str,
) -> str:
    """A per-token cache entry's key: the models' fingerprints, the data and what changes the logits' last bits."""
    return result_key(
        kind,
        arrays={},
        settings={
            **models,
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
    return pack_columns(stats.columns())


def pack_columns(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Per-token columns (one length) in one structured array, one record per token."""
    n = len(next(iter(columns.values())))
    dtype = np.dtype([(name, column.dtype, column.shape[1:]) for name, column in columns.items()])
    out = np.empty(n, dtype=dtype)
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


def unpack_model_stats(records: Any, vocab_size: int) -> ModelTokenStats:
    """The :class:`ModelTokenStats` of :func:`pack_columns`'s array of its columns.

    Raises
    ------
    ValueError
        When the array's fields are not ModelTokenStats's columns.
    """
    names = records.dtype.names or ()
    if list(names) != list(ModelTokenStats.DTYPES):
        raise ValueError(f"a {MODEL_KIND} entry needs the fields {list(ModelTokenStats.DTYPES)}, got {list(names)}")
    return ModelTokenStats(**{name: np.ascontiguousarray(records[name]) for name in names}, vocab_size=int(vocab_size))


class SummaryPair:
    """A teacher's and a student's per-token columns from their per-model summaries: no divergences.

    Reads like :class:`~distill_eval.lm.pairstats.TokenStats` for every column that one
    model's summary holds exactly (``*_nll``, ``*_argmax``, ``*_max_prob``, ``*_entropy``,
    ``top_k_overlap``); ``kl``, ``reverse_kl``, ``js`` and ``tvd`` need both full
    distributions at once and are absent (:attr:`has_divergences` is False).

    Parameters
    ----------
    teacher, student : ModelTokenStats
        Both summaries, on the same tokens, with at least ``top_k`` top ids.
    top_k : int
        The ``k`` of :attr:`top_k_overlap` and :meth:`student_top_k_hit`.
    """

    has_divergences = False

    def __init__(self, teacher: ModelTokenStats, student: ModelTokenStats, top_k: int):
        if not (
            np.array_equal(teacher.sequence, student.sequence) and np.array_equal(teacher.position, student.position)
        ):
            raise ValueError("the teacher's and the student's summaries cover different tokens")
        shared_vocab_size(teacher.vocab_size, student.vocab_size)  # a ModelError when they differ
        if min(teacher.top_k, student.top_k) < top_k:
            raise ValueError(f"summaries with {teacher.top_k} and {student.top_k} top ids cannot give top-{top_k}")
        self.teacher, self.student, self._k = teacher, student, int(top_k)
        self.sequence, self.position, self.label = teacher.sequence, teacher.position, teacher.label
        for side, record in (("teacher", teacher), ("student", student)):
            for column in ("nll", "argmax", "max_prob", "entropy"):
                setattr(self, f"{side}_{column}", getattr(record, column))

    @property
    def n(self) -> int:
        """Number of scored tokens."""
        return self.teacher.n

    @property
    def top_k(self) -> int:
        return self._k

    @property
    def top_k_overlap(self) -> np.ndarray:
        """``|TopK(p) ∩ TopK(q)| / k`` per token, from both summaries' first ``k`` ids."""
        t, s = self.teacher.top_ids[:, : self._k], self.student.top_ids[:, : self._k]
        return ((t[:, :, None] == s[:, None, :]).any(axis=2).sum(axis=1) / self._k).astype(np.float32)

    @property
    def teacher_top_logprobs(self) -> np.ndarray:
        """The teacher's ``top_k`` largest log-probs per token, most likely first (float16, as summaries store them)."""
        return self.teacher.top_logprobs[:, : self._k]

    def student_top_k_hit(self, k: int) -> np.ndarray:
        """Whether the teacher's argmax is among the student's ``k`` most likely ids (``k <= top_k`` of the summary)."""
        return (self.student.top_ids[:, :k] == self.teacher.argmax[:, None]).any(axis=1)
