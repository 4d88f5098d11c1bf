"""Per-model token summaries: one model's next-token distributions reduced to a reusable record.

:func:`stream_model_stats` runs ONE model over a :class:`~distill_eval.lm.tokens.TokenDataset`
and keeps, per scored token, what a teacher cache needs to serve many students (the reusable
teacher cache: a few hundred bytes per token instead of ``vocab`` floats):

====================  =========================================================================
``nll``               ``-log p(y)``, ``y`` the label
``argmax``            ``argmax p`` (first on ties)
``max_prob``          ``max p``
``entropy``           ``H(p)`` in nats
``top_ids``           the ``top_k`` most likely ids, most likely first (int32)
``top_logprobs``      their log-probs, stored as float16 (about 3 significant digits)
``tail_prob``         ``1 - sum(top-k probabilities)``, from the float32 values: the mass outside
                      the top-k (divergences computed on top-k plus this tail are lower bounds)
====================  =========================================================================

The scalar columns equal the ``teacher_*`` columns of :func:`~distill_eval.lm.pairstats.pair_stats`
for the same logits, so the teacher-side numbers of a pair (NLL, perplexity, argmax agreement,
entropy slices) can come from a cached record while the student runs live. The per-pair
divergences (KL, reverse KL, JS, TVD) need both full distributions and are not derivable from
the record exactly.

Each batch's logits are reduced in chunks of tokens in float32, like the pair statistics, and
dropped before the next batch. :meth:`ModelTokenStats.save` / :meth:`ModelTokenStats.load`
round-trip a record through an ``.npz`` file (no pickles).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distill_eval.errors import DataError
from distill_eval.lm.pairstats import (
    _chunk_size,
    _dataset_vocab,
    _device_batches,
    _log_softmax,
    _logits,
    _Rows,
    _scored_batch,
    _take,
    _top_k,
    _vocab,
    model_columns,
)
from distill_eval.lm.tokens import TokenDataset

__all__ = ["ModelTokenStats", "model_stats", "stream_model_stats", "summary_columns", "summary_record"]

_FORMAT = "distill-eval model token stats 1"


@dataclass(frozen=True, eq=False)
class ModelTokenStats:
    """Per-token summary of one model's next-token distributions, one row per scored token.

    Attributes
    ----------
    sequence : ndarray of int64, shape (n_tokens,)
        Index of the token's sequence in the dataset.
    position : ndarray of int32, shape (n_tokens,)
        Position of the scored (target) token; its logits are at ``position - 1``.
    label : ndarray of int32, shape (n_tokens,)
        The target token id.
    nll : ndarray of float32, shape (n_tokens,)
        Negative log-probability of the label.
    argmax : ndarray of int32, shape (n_tokens,)
        Most likely next token.
    max_prob : ndarray of float32, shape (n_tokens,)
        Its probability.
    entropy : ndarray of float32, shape (n_tokens,)
        Entropy of the next-token distribution, in nats.
    top_ids : ndarray of int32, shape (n_tokens, top_k)
        The most likely ids, most likely first.
    top_logprobs : ndarray of float16, shape (n_tokens, top_k)
        Their log-probabilities.
    tail_prob : ndarray of float32, shape (n_tokens,)
        Probability outside the top-k ids (``>= 0``).
    vocab_size : int
        The true vocabulary the distributions are over.
    info : mapping of str to str or int
        Free-form provenance saved with the record (e.g. model and dataset fingerprints).
    """

    sequence: np.ndarray
    position: np.ndarray
    label: np.ndarray
    nll: np.ndarray
    argmax: np.ndarray
    max_prob: np.ndarray
    entropy: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    tail_prob: np.ndarray
    vocab_size: int
    info: Mapping[str, Any] = field(default_factory=dict)

    #: the dtype of every per-token column
    DTYPES: ClassVar[dict[str, Any]] = {
        "sequence": np.int64,
        "position": np.int32,
        "label": np.int32,
        "nll": np.float32,
        "argmax": np.int32,
        "max_prob": np.float32,
        "entropy": np.float32,
        "top_ids": np.int32,
        "top_logprobs": np.float16,
        "tail_prob": np.float32,
    }

    @property
    def n(self) -> int:
        """Number of scored tokens."""
        return int(self.sequence.shape[0])

    @property
    def top_k(self) -> int:
        """The ``k`` of the top-k columns."""
        return int(self.top_ids.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-token columns."""
        return sum(column.nbytes for column in self.columns().values())

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-token column by name."""
        return {name: getattr(self, name) for name in self.DTYPES}

    @classmethod
    def concatenate(cls, parts: Sequence[ModelTokenStats]) -> ModelTokenStats:
        """The rows of several parts with one vocabulary and ``top_k``, in order (at least one part)."""
        if not parts:
            raise ValueError("concatenate needs at least one part")
        if len({(p.vocab_size, p.top_k) for p in parts}) != 1:
            raise ValueError("parts to concatenate must share vocab_size and top_k")
        columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.DTYPES}
        return cls(**columns, vocab_size=parts[0].vocab_size, info=dict(parts[0].info))

    def save(self, path: str | Path) -> Path:
        """Write the record to an ``.npz`` file (uncompressed, no pickles); returns the path."""
        path = Path(path)
        header = {"format": _FORMAT, "vocab_size": self.vocab_size, "info": dict(self.info)}
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to another suffix
            np.savez(f, header=np.array(json.dumps(header, sort_keys=True)), **self.columns())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelTokenStats:
        """Read a record written by :meth:`save`, checking every column's name, dtype and shape.

        Raises
        ------
        DataError
            Naming the file and the key, when the file is missing, not such a record, or a
            column is missing, of another dtype or length.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"model token stats: file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            header = json.loads(str(arrays.pop("header")))
        except Exception as e:  # noqa: BLE001 — a corrupt or foreign file: say which
            raise DataError(f"model token stats {path}: not a saved record ({type(e).__name__}: {e})") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise DataError(f"model token stats {path}: 'header' is not {_FORMAT!r}")
        missing, unknown = set(cls.DTYPES) - set(arrays), set(arrays) - set(cls.DTYPES)
        if missing or unknown:
            raise DataError(
                f"model token stats {path}: expected the keys {sorted(cls.DTYPES)}; missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}"
            )
        n = len(arrays["sequence"])
        for key, dtype in cls.DTYPES.items():
            column = arrays[key]
            ndim = 2 if key.startswith("top_") else 1
            if column.dtype != np.dtype(dtype) or column.ndim != ndim or len(column) != n:
                raise DataError(
                    f"model token stats {path}: '{key}' has dtype {column.dtype} and shape {column.shape}; "
                    f"expected {np.dtype(dtype)} with {n} rows" + (" of top_k values" if ndim == 2 else "")
                )
        if arrays["top_ids"].shape != arrays["top_logprobs"].shape:
            raise DataError(f"model token stats {path}: 'top_ids' and 'top_logprobs' differ in shape")
        return cls(**arrays, vocab_size=int(header["vocab_size"]), info=header.get("info", {}))


def model_stats(
    logits: Any,
    labels: Any,
    attention_mask: Any,
    *,
    vocab_size: int,
    top_k: int = 32,
    chunk_tokens: int | None = None,
    sequence_offset: int = 0,
    who: str = "model",
) -> ModelTokenStats:
    """Per-token summary of one batch of one model's logits.

    Parameters
    ----------
    logits : tensor or array of shape (batch, length, vocab_padded)
        Raw logits (any float dtype, any device); columns past ``vocab_size`` are ignored.
    labels, attention_mask : tensor or array of shape (batch, length)
        Unshifted labels (``-100`` not scored) and the 0/1 mask, as
        :func:`~distill_eval.lm.pairstats.pair_stats`.
    vocab_size : int
        The true vocabulary size.
    top_k : int, default 32
        ``k`` of the top-k columns, in ``[1, vocab_size]``.
    chunk_tokens : int, optional
        Scored tokens per float32 chunk; default about ``2**19 / vocab_size``.
    sequence_offset : int, default 0
        Added to the batch row to give :attr:`ModelTokenStats.sequence`.
    who : str, default "model"
        The model's name in error messages.

    Returns
    -------
    ModelTokenStats
        One row per scored token, in (sequence, position) order.

    Raises
    ------
    ModelError
        When the logits have the wrong shape or too few columns, or a scored position's logits
        hold NaN or +inf (or are all -inf).
    DataError
        When a scored label is outside the vocabulary.
    """
    import torch

    vocab = _vocab(vocab_size)
    k = _top_k(top_k, vocab)
    tensor = torch.as_tensor(logits)
    rows, cols, targets, flat = _scored_batch({who: tensor}, labels, attention_mask, vocab, sequence_offset)
    chunk = _chunk_size(chunk_tokens, vocab)
    flat_logits = tensor.reshape(-1, tensor.shape[2])[:, :vocab]
    # each chunk's columns go straight into arrays of the batch's length: many small results kept
    # alive between the chunks' large temporaries would fragment the heap (hundreds of MB of RSS)
    summary = _Rows(flat.size)
    with torch.no_grad():
        for start in range(0, flat.size, chunk):
            stop = min(start + chunk, flat.size)
            y = torch.from_numpy(targets[start:stop]).to(tensor.device)
            lp = _log_softmax(
                _take(flat_logits, flat[start:stop]), who, rows[start:stop], cols[start:stop], sequence_offset
            )
            summary.add(summary_columns(model_columns(lp, y, k)))
    return summary_record(
        summary.result() if flat.size else None,
        (rows + sequence_offset).astype(np.int64),
        (cols + 1).astype(np.int32),
        targets.astype(np.int32),
        vocab=vocab,
        top_k=k,
    )


def summary_columns(chunk: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One chunk of :func:`~distill_eval.lm.pairstats.model_columns` (torch tensors) as the record's numpy columns."""
    return {name: chunk[name].cpu().numpy().astype(dtype) for name, dtype in list(ModelTokenStats.DTYPES.items())[3:]}


def summary_record(
    columns: Mapping[str, np.ndarray] | None,
    sequence: np.ndarray,
    position: np.ndarray,
    label: np.ndarray,
    *,
    vocab: int,
    top_k: int,
) -> ModelTokenStats:
    """A record of a batch's tokens from its :func:`summary_columns` (None: the batch has no scored token)."""
    if columns is None:
        columns = {
            name: np.zeros((0, top_k) if name.startswith("top_") else (0,), ModelTokenStats.DTYPES[name])
            for name in list(ModelTokenStats.DTYPES)[3:]
        }
    return ModelTokenStats(sequence=sequence, position=position, label=label, **columns, vocab_size=vocab)


def stream_model_stats(
    dataset: TokenDataset,
    model: Callable[..., Any],
    *,
    vocab_size: int | None = None,
    batch_size: int = 8,
    top_k: int = 32,
    chunk_tokens: int | None = None,
    device: Any = None,
    who: str = "model",
    info: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ModelTokenStats:
    """Stream a token dataset through one model, batch by batch, keeping only the per-token summary.

    Parameters
    ----------
    dataset : TokenDataset
        The sequences.
    model : callable
        ``forward(input_ids, attention_mask)`` on int64 tensors of shape (batch, length),
        returning logits of shape (batch, length, vocab_padded) or an object with ``.logits``.
        Called under :func:`torch.inference_mode`, as given (put modules in eval mode first).
    vocab_size : int, optional
        The true vocabulary size; default ``dataset.vocab_size``.
    batch_size : int, default 8
        Sequences per forward pass.
    top_k, chunk_tokens, who
        As :func:`model_stats`.
    device : str or torch.device, optional
        Where inputs go; default the CPU.
    info : mapping, optional
        Provenance stored in :attr:`ModelTokenStats.info` (JSON-serialisable values); the
        dataset's sha256 is added as ``"dataset_sha256"``.
    progress : callable, optional
        Called after each batch with the number of sequences done so far.

    Returns
    -------
    ModelTokenStats
        One row per scored token of the dataset, in (sequence, position) order.
    """
    import torch

    vocab = _dataset_vocab(dataset, vocab_size)
    rows = _Rows(dataset.n_scored)
    with torch.inference_mode():
        for batch, input_ids, mask in _device_batches(dataset, batch_size, device):
            logits = _logits(model(input_ids, mask), who)
            summary = model_stats(
                logits,
                batch.labels,
                batch.attention_mask,
                vocab_size=vocab,
                top_k=top_k,
                chunk_tokens=chunk_tokens,
                sequence_offset=batch.start,
                who=who,
            )
            rows.add(summary.columns())
            del logits, summary
            if progress is not None:
                progress(batch.start + len(batch.input_ids))
    return ModelTokenStats(**rows.result(), vocab_size=vocab, info={**(info or {}), "dataset_sha256": dataset.sha256})
