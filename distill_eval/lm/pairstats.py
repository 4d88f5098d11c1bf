"""Exact paired token statistics: teacher and student logits reduced to a few numbers per token.

Both models run on the same batch; :func:`pair_stats` then walks the batch's scored tokens in
chunks, takes both models' log-softmax over the shared vocabulary in float32, and keeps only
per-token values (:class:`TokenStats`, about 20 numbers per token with ``top_k=5``). The
logits are dropped after each batch, so memory is bounded by one batch's logits plus a chunk
of ``chunk_tokens x vocab`` float32 temporaries, whatever the size of the dataset.

With ``p`` the teacher's and ``q`` the student's next-token distribution, per scored token:

==========================  ============================================================
``teacher_nll``             ``-log p(y)``, ``y`` the label (``student_nll`` likewise)
``*_argmax``                ``argmax p`` (first on ties), ``argmax q``
``*_max_prob``              ``max p``, ``max q``
``*_entropy``               ``H(p) = -sum p log p`` (nats), ``H(q)``
``kl``                      forward ``KL(p || q) = sum p (log p - log q)``
``reverse_kl``              ``KL(q || p)``
``js``                      ``0.5 KL(p || m) + 0.5 KL(q || m)``, ``m = (p + q) / 2`` (TRL GKD's
                            JSD at ``beta = 0.5``; scipy's ``jensenshannon(p, q) ** 2``)
``tvd``                     ``0.5 sum |p - q|``
``teacher_top_ids``         the teacher's ``top_k`` most likely ids, most likely first, and
``teacher_top_logprobs``    their log-probs
``top_k_overlap``           ``|TopK(p) ∩ TopK(q)| / k``
``student_rank``            how many ids the student ranks strictly above the teacher's argmax
==========================  ============================================================

Cross-entropy is ``kl + teacher_entropy``; the change in the label's probability is
``exp(-student_nll) - exp(-teacher_nll)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from distill_eval.errors import DataError, ModelError
from distill_eval.lm.tokens import TokenBatch, TokenDataset, scored_positions

if TYPE_CHECKING:
    from distill_eval.lm.modelstats import ModelTokenStats

__all__ = [
    "TokenStats",
    "model_columns",
    "pair_stats",
    "shared_vocab_size",
    "stream_pair_and_model_stats",
    "stream_pair_stats",
]

#: float32 elements per chunk array: 2 MiB each, whatever the vocabulary, so a chunk's passes stay in cache
#: (16 tokens of a 32k vocabulary: twice as fast as 256 on one core)
_CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True, eq=False)
class TokenStats:
    """Per-token statistics of a teacher-student pair, one row per scored token.

    Attributes
    ----------
    sequence : ndarray of int64, shape (n_tokens,)
        Index of the token's sequence in the dataset.
    position : ndarray of int32, shape (n_tokens,)
        Position of the scored (target) token in its sequence; the logits that score it are at
        ``position - 1``.
    label : ndarray of int32, shape (n_tokens,)
        The target token id.
    teacher_nll, student_nll : ndarray of float32, shape (n_tokens,)
        Negative log-probability of the label.
    teacher_argmax, student_argmax : ndarray of int32, shape (n_tokens,)
        Most likely next token.
    teacher_max_prob, student_max_prob : ndarray of float32, shape (n_tokens,)
        Probability of the most likely next token.
    teacher_entropy, student_entropy : ndarray of float32, shape (n_tokens,)
        Entropy of the next-token distribution, in nats.
    kl, reverse_kl, js, tvd : ndarray of float32, shape (n_tokens,)
        ``KL(p || q)``, ``KL(q || p)``, Jensen-Shannon (beta 0.5) and total variation.
    teacher_top_ids : ndarray of int32, shape (n_tokens, top_k)
        The teacher's most likely ids, most likely first.
    teacher_top_logprobs : ndarray of float32, shape (n_tokens, top_k)
        Their log-probabilities.
    top_k_overlap : ndarray of float32, shape (n_tokens,)
        Share of the teacher's top-k ids that are among the student's top-k.
    student_rank : ndarray of int32, shape (n_tokens,)
        Number of ids the student gives a higher log-prob than the teacher's argmax (0: the
        student's top-1 agrees, up to ties).
    """

    sequence: np.ndarray
    position: np.ndarray
    label: np.ndarray
    teacher_nll: np.ndarray
    student_nll: np.ndarray
    teacher_argmax: np.ndarray
    student_argmax: np.ndarray
    teacher_max_prob: np.ndarray
    student_max_prob: np.ndarray
    teacher_entropy: np.ndarray
    student_entropy: np.ndarray
    kl: np.ndarray
    reverse_kl: np.ndarray
    js: np.ndarray
    tvd: np.ndarray
    teacher_top_ids: np.ndarray
    teacher_top_logprobs: np.ndarray
    top_k_overlap: np.ndarray
    student_rank: np.ndarray

    #: the divergence columns (kl, reverse_kl, js, tvd) are exact (not so for a pair of per-model summaries)
    has_divergences = True

    @property
    def n(self) -> int:
        """Number of scored tokens."""
        return int(self.sequence.shape[0])

    @property
    def top_k(self) -> int:
        """The ``k`` of the top-k columns."""
        return int(self.teacher_top_ids.shape[1])

    def student_top_k_hit(self, k: int) -> np.ndarray:
        """Whether the student ranks the teacher's argmax among its ``k`` most likely ids."""
        return self.student_rank < k

    def columns(self) -> dict[str, np.ndarray]:
        """Every column by name (what a cache stores)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray]) -> TokenStats:
        """Rebuild from :meth:`columns` (e.g. read back from a cache), checking names and lengths.

        Raises
        ------
        ValueError
            When a column is missing or unknown, or the columns differ in length.
        """
        names = [f.name for f in fields(cls)]
        missing, unknown = set(names) - set(columns), set(columns) - set(names)
        if missing or unknown:
            raise ValueError(
                f"token statistics need exactly {names}; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        lengths = {name: len(columns[name]) for name in names}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"token statistics columns must have one length, got {lengths}")
        return cls(**{name: np.asarray(columns[name]) for name in names})

    @classmethod
    def concatenate(cls, parts: Sequence[TokenStats]) -> TokenStats:
        """The rows of several parts, in order (at least one part)."""
        if not parts:
            raise ValueError("concatenate needs at least one part")
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


def shared_vocab_size(teacher: int, student: int) -> int:
    """The vocabulary both models share, or a ModelError when their true sizes differ.

    Parameters
    ----------
    teacher, student : int
        True vocabulary sizes (the tokenizer's, not a padded output head's).

    Returns
    -------
    int
        The shared size.

    Raises
    ------
    ModelError
        When they differ: token-level comparisons need one vocabulary.
    """
    if teacher != student:
        raise ModelError(
            f"the teacher's vocabulary has {teacher} tokens but the student's has {student}: token-level "
            "statistics compare next-token distributions over one shared vocabulary (if one output head is "
            "only padded, give both the tokenizer's true vocabulary size)"
        )
    return int(teacher)


def _top_k(top_k: Any, vocab: int) -> int:
    """``top_k`` checked against the vocabulary: an integer in [1, vocab]."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be an integer in [1, vocab_size] = [1, {vocab}], got {top_k!r}")
    return int(top_k)


def _vocab(vocab_size: int | tuple[int, int]) -> int:
    if isinstance(vocab_size, tuple):
        vocab_size = shared_vocab_size(*vocab_size)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    return int(vocab_size)


def pair_stats(
    teacher_logits: Any,
    student_logits: Any,
    labels: Any,
    attention_mask: Any,
    *,
    vocab_size: int | tuple[int, int],
    top_k: int = 5,
    chunk_tokens: int | None = None,
    sequence_offset: int = 0,
) -> TokenStats:
    """Per-token statistics of one batch, from both models' logits.

    Parameters
    ----------
    teacher_logits, student_logits : tensor or array of shape (batch, length, vocab_padded)
        Raw logits (any float dtype, any device). Columns past ``vocab_size`` (a padded output
        head) are ignored.
    labels : tensor or array of int, shape (batch, length)
        Unshifted labels: the logits at ``t`` score ``labels[t + 1]``; ``-100`` is not scored.
    attention_mask : tensor or array, shape (batch, length)
        1 for real tokens; a position is scored only if it and the next one are attended.
    vocab_size : int or (int, int)
        The true shared vocabulary size, or the (teacher, student) true sizes, which must agree.
    top_k : int, default 5
        ``k`` of the top-k columns, in ``[1, vocab_size]``.
    chunk_tokens : int, optional
        Scored tokens per chunk; default about ``2**19 / vocab_size``. Results do not depend on
        it: bit for bit on one thread; torch's multi-threaded sums over a large vocabulary may
        round the last bits differently.
    sequence_offset : int, default 0
        Added to the batch row to give :attr:`TokenStats.sequence`.

    Returns
    -------
    TokenStats
        One row per scored token, in (sequence, position) order.

    Raises
    ------
    ModelError
        When the logits have the wrong shape, fewer than ``vocab_size`` columns, or a scored
        position's logits hold NaN or +inf (or are all -inf).
    DataError
        When a scored label is outside the vocabulary.
    """
    return _pair_batch(
        teacher_logits,
        student_logits,
        labels,
        attention_mask,
        vocab_size=vocab_size,
        top_k=top_k,
        chunk_tokens=chunk_tokens,
        sequence_offset=sequence_offset,
    )[0]


def _pair_batch(
    teacher_logits: Any,
    student_logits: Any,
    labels: Any,
    attention_mask: Any,
    *,
    vocab_size: int | tuple[int, int],
    top_k: int,
    chunk_tokens: int | None,
    sequence_offset: int,
    model_top_k: int | None = None,
) -> tuple[TokenStats, tuple[ModelTokenStats, ModelTokenStats] | None]:
    """:func:`pair_stats`, and with ``model_top_k`` also both models' summaries of the same batch."""
    import torch

    vocab = _vocab(vocab_size)
    k = _top_k(top_k, vocab)
    summary_k = None if model_top_k is None else _top_k(model_top_k, vocab)
    tl = torch.as_tensor(teacher_logits)
    sl = torch.as_tensor(student_logits)
    rows, cols, targets, flat = _scored_batch(
        {"teacher": tl, "student": sl}, labels, attention_mask, vocab, sequence_offset
    )
    chunk = _chunk_size(chunk_tokens, vocab)

    t_flat = tl.reshape(-1, tl.shape[2])[:, :vocab]
    s_flat = sl.reshape(-1, sl.shape[2])[:, :vocab]
    # each chunk's columns go straight into arrays of the batch's length: many small results kept
    # alive between the chunks' large temporaries would fragment the heap (hundreds of MB of RSS)
    pairs = _Rows(flat.size)
    summaries = (_Rows(flat.size), _Rows(flat.size))
    if summary_k is not None:
        from distill_eval.lm.modelstats import summary_columns, summary_record
    with torch.no_grad():  # logits straight from training may require grad
        for start in range(0, flat.size, chunk):
            stop = min(start + chunk, flat.size)
            y = torch.from_numpy(targets[start:stop]).to(tl.device)
            where = (rows[start:stop], cols[start:stop], sequence_offset)
            lp = _log_softmax(_take(t_flat, flat[start:stop]), "teacher", *where)
            lq = _log_softmax(_take(s_flat, flat[start:stop]), "student", *where).to(lp.device)
            pair, models = _chunk_stats(lp, lq, y, k, summary_k)
            pairs.add(pair)
            if models is not None:
                summaries[0].add(summary_columns(models[0]))
                summaries[1].add(summary_columns(models[1]))
    columns = pairs.result() if flat.size else _empty(k)
    sequence, position, label = (
        (rows + sequence_offset).astype(np.int64),
        (cols + 1).astype(np.int32),
        targets.astype(np.int32),
    )
    stats = TokenStats(sequence=sequence, position=position, label=label, **columns)
    if summary_k is None:
        return stats, None
    t, s = (
        summary_record(r.result() if flat.size else None, sequence, position, label, vocab=vocab, top_k=summary_k)
        for r in summaries
    )
    return stats, (t, s)


def _scored_batch(
    logits_by_model: Mapping[str, Any], labels: Any, attention_mask: Any, vocab: int, sequence_offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check one batch's logits (by model name) against its labels; locate its scored tokens.

    Returns the batch rows and columns of the scored positions, their target ids, and each one's
    row in the flattened ``(batch * length, vocab)`` logits, in (row, column) order.
    """
    labels_np = np.asarray(_cpu(labels), dtype=np.int64)
    mask_np = np.asarray(_cpu(attention_mask))
    if labels_np.ndim != 2 or mask_np.shape != labels_np.shape:
        raise ValueError(
            f"labels and attention_mask must have one shape (batch, length), got {labels_np.shape} and {mask_np.shape}"
        )
    for who, logits in logits_by_model.items():
        if logits.ndim != 3 or tuple(logits.shape[:2]) != labels_np.shape:
            raise ModelError(
                f"the {who}'s logits must have shape (batch, length, vocab) = ({labels_np.shape[0]}, "
                f"{labels_np.shape[1]}, vocab) for this batch, got {tuple(logits.shape)}"
            )
        if logits.shape[2] < vocab:
            raise ModelError(
                f"the {who} outputs {logits.shape[2]} logits per token but the vocabulary has {vocab} tokens"
            )
        if not logits.is_floating_point():
            raise ModelError(f"the {who}'s logits must be floating point, got {logits.dtype}")

    scored = scored_positions(labels_np, mask_np)
    rows, cols = np.nonzero(scored)
    targets = labels_np[rows, cols + 1]
    if targets.size and targets.max() >= vocab:
        i = int(np.argmax(targets >= vocab))
        raise DataError(
            f"label {int(targets[i])} (sequence {sequence_offset + int(rows[i])}, position {int(cols[i]) + 1}) "
            f"is outside the vocabulary of {vocab} tokens"
        )
    length = labels_np.shape[1]
    return rows, cols, targets, rows * length + cols


def _chunk_size(chunk_tokens: int | None, vocab: int) -> int:
    """Scored tokens per chunk: as given, or about :data:`_CHUNK_ELEMENTS` / ``vocab``."""
    chunk = chunk_tokens if chunk_tokens is not None else max(1, _CHUNK_ELEMENTS // vocab)
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    return int(chunk)


def _take(logits: Any, flat: np.ndarray) -> Any:
    """The rows ``flat`` (ascending) of flattened logits: a view when they are consecutive, as they mostly are."""
    import torch

    if flat[-1] - flat[0] == flat.size - 1:
        return logits[int(flat[0]) : int(flat[-1]) + 1]
    return logits.index_select(0, torch.from_numpy(flat).to(logits.device))


def _cpu(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _log_softmax(logits: Any, who: str, rows: np.ndarray, cols: np.ndarray, offset: int) -> Any:
    """float32 log-softmax over the vocabulary, or a ModelError naming the first bad position."""
    import torch

    logits = logits.float()
    ok = torch.isfinite(logits.amax(dim=1))  # NaN propagates into the max; +inf and all -inf are not finite
    if not bool(ok.all()):
        i = int(torch.nonzero(~ok)[0, 0])
        raise ModelError(
            f"the {who}'s logits at sequence {offset + int(rows[i])}, position {int(cols[i])} hold NaN or +inf "
            "(or are all -inf)"
        )
    return torch.log_softmax(logits, dim=1)


def model_columns(lp: Any, y: Any, k: int) -> dict[str, Any]:
    """One model's per-token columns of one chunk of float32 log-probs (torch tensors, on its device).

    The one reduction behind both :class:`TokenStats`'s ``teacher_*`` / ``student_*`` columns and
    :class:`~distill_eval.lm.modelstats.ModelTokenStats`: ``nll``, ``argmax``, ``max_prob``,
    ``entropy`` (``0 log 0 = 0`` where a probability is exactly 0), ``top_ids`` and ``top_logprobs``
    (``k`` most likely first) and ``tail_prob``.
    """
    import torch

    p = lp.exp()
    best, arg = lp.max(dim=1)
    top_lp, top_ids = lp.topk(k, dim=1)
    entropy = -torch.mul(p, lp).sum(dim=1)
    zeros = torch.nonzero(torch.isinf(lp.amin(dim=1)))[:, 0]
    if zeros.numel():  # rows with probabilities exactly 0: 0 log 0 = 0
        sub_lp, sub_p = lp[zeros], p[zeros]
        entropy[zeros] = -torch.where(sub_p > 0, sub_p * sub_lp, sub_lp.new_zeros(())).sum(dim=1)
    return {
        "nll": -lp.gather(1, y[:, None])[:, 0],
        "argmax": arg,
        "max_prob": best.exp(),
        "entropy": entropy,
        "top_ids": top_ids,
        "top_logprobs": top_lp,
        "tail_prob": (1.0 - top_lp.exp().sum(dim=1)).clamp_min_(0.0),
    }


def _chunk_stats(
    lp: Any, lq: Any, y: Any, k: int, summary_k: int | None = None
) -> tuple[dict[str, np.ndarray], tuple[dict[str, Any], dict[str, Any]] | None]:
    """Every per-token column of one chunk of teacher (``lp``) and student (``lq``) log-probs.

    Each model's own columns come from :func:`model_columns` (computed with ``max(k, summary_k)``
    top ids, of which the pair keeps the first ``k``); with ``summary_k``, both models' columns
    are returned too (torch tensors, top-k cut to ``summary_k``), so one pass also fills the
    per-model summaries. Sums of products run over finite log-probs (a probability that
    underflows to 0 adds 0); rows where either model gives a token probability exactly 0 (a -inf
    logit) are then recomputed with ``0 log 0 = 0``, so every row's result depends on that row alone.
    """
    import torch

    top = max(k, summary_k or 0)
    t, s = model_columns(lp, y, top), model_columns(lq, y, top)
    p, q = lp.exp(), lq.exp()
    buf = torch.empty_like(lp)  # one scratch array, reused: fresh memory for every product costs more

    def dot(a: Any, b: Any) -> Any:
        return torch.mul(a, b, out=buf).sum(dim=1)

    diff = lp - lq
    m = torch.add(p, q).mul_(0.5).clamp_min_(torch.finfo(lp.dtype).tiny).log_()  # log of the mixture
    t_top_ids, s_top_ids = t["top_ids"][:, :k], s["top_ids"][:, :k]
    out = {
        "teacher_nll": t["nll"],
        "student_nll": s["nll"],
        "teacher_argmax": t["argmax"],
        "student_argmax": s["argmax"],
        "teacher_max_prob": t["max_prob"],
        "student_max_prob": s["max_prob"],
        "teacher_entropy": t["entropy"],
        "student_entropy": s["entropy"],
        "kl": dot(p, diff),
        "reverse_kl": -dot(q, diff),
        "js": 0.5 * dot(p, torch.sub(lp, m, out=diff)) + 0.5 * dot(q, torch.sub(lq, m, out=diff)),
        "tvd": 0.5 * torch.sub(p, q, out=buf).abs_().sum(dim=1),
        "teacher_top_ids": t_top_ids,
        "teacher_top_logprobs": t["top_logprobs"][:, :k],
        "top_k_overlap": _overlap(t_top_ids, s_top_ids, lp.shape[1]) / k,
        "student_rank": torch.count_nonzero(lq > lq.gather(1, t["argmax"][:, None]), dim=1),
    }
    zeros = torch.nonzero(torch.isinf(lp.amin(dim=1)) | torch.isinf(lq.amin(dim=1)))[:, 0]
    if zeros.numel():
        for name, value in _with_zeros(lp[zeros], lq[zeros]).items():
            out[name][zeros] = value
    pair = {name: _numpy_column(name, value) for name, value in out.items()}
    if summary_k is None:
        return pair, None
    cut = [
        {**c, "top_ids": c["top_ids"][:, :summary_k], "top_logprobs": c["top_logprobs"][:, :summary_k]} for c in (t, s)
    ]
    return pair, (cut[0], cut[1])


def _with_zeros(lp: Any, lq: Any) -> dict[str, Any]:
    """Divergences of rows where some probabilities are exactly 0, with 0 log 0 = 0."""
    import torch

    p, q = lp.exp(), lq.exp()
    zero = lp.new_zeros(())
    log_m = torch.log(0.5 * (p + q))
    return {
        "kl": torch.where(p > 0, p * (lp - lq), zero).sum(dim=1),  # inf where q = 0 < p
        "reverse_kl": torch.where(q > 0, q * (lq - lp), zero).sum(dim=1),
        "js": 0.5 * torch.where(p > 0, p * (lp - log_m), zero).sum(dim=1)
        + 0.5 * torch.where(q > 0, q * (lq - log_m), zero).sum(dim=1),
    }


def _overlap(a: Any, b: Any, vocab: int) -> Any:
    """``|a_i ∩ b_i|`` per row of two (n, k) id arrays (ids within a row are distinct)."""
    import torch

    k = a.shape[1]
    if k * k <= vocab:  # compare every pair: k^2 work per token
        return (a[:, :, None] == b[:, None, :]).any(dim=2).sum(dim=1).float()
    member = torch.zeros((a.shape[0], vocab), dtype=torch.bool, device=a.device).scatter_(1, a, True)
    return member.gather(1, b).sum(dim=1).float()


_INT_COLUMNS = {"teacher_argmax", "student_argmax", "teacher_top_ids", "student_rank"}


def _numpy_column(name: str, value: Any) -> np.ndarray:
    return value.cpu().numpy().astype(np.int32 if name in _INT_COLUMNS else np.float32, copy=False)


def _empty(k: int) -> dict[str, np.ndarray]:
    names = [f.name for f in fields(TokenStats)][3:]
    return {
        name: np.zeros(
            (0, k) if name.startswith("teacher_top") else (0,), np.int32 if name in _INT_COLUMNS else np.float32
        )
        for name in names
    }


def stream_pair_stats(
    dataset: TokenDataset,
    teacher: Callable[..., Any],
    student: Callable[..., Any],
    *,
    vocab_size: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    top_k: int = 5,
    chunk_tokens: int | None = None,
    device: Any = None,
    progress: Callable[[int], None] | None = None,
) -> TokenStats:
    """Stream a token dataset through both models, batch by batch, keeping only per-token statistics.

    Each batch runs through the teacher, then the student, on identical inputs; both logits are
    reduced by :func:`pair_stats` and dropped before the next batch.

    Parameters
    ----------
    dataset : TokenDataset
        The sequences.
    teacher, student : callable
        ``forward(input_ids, attention_mask)`` on int64 tensors of shape (batch, length),
        returning logits of shape (batch, length, vocab_padded) or an object with ``.logits``
        (a Hugging Face output). Called under :func:`torch.inference_mode`, as given (put
        modules in eval mode first).
    vocab_size : int or (int, int), optional
        The true shared vocabulary size (or both models' true sizes, which must agree);
        default ``dataset.vocab_size``.
    batch_size : int, default 8
        Sequences per forward pass.
    top_k, chunk_tokens
        As :func:`pair_stats`.
    device : str or torch.device, optional
        Where inputs go; default the CPU.
    progress : callable, optional
        Called after each batch with the number of sequences done so far
        (e.g. :meth:`distill_eval.progress.Progress.update`).

    Returns
    -------
    TokenStats
        One row per scored token of the dataset, in (sequence, position) order.

    Raises
    ------
    ModelError
        When a model's output is not logits of the batch's shape, or the vocabularies differ.
    DataError
        When a label is outside the vocabulary.
    """
    return _stream_pairs(
        dataset,
        teacher,
        student,
        vocab_size=vocab_size,
        batch_size=batch_size,
        top_k=top_k,
        chunk_tokens=chunk_tokens,
        device=device,
        progress=progress,
    )[0]


def stream_pair_and_model_stats(
    dataset: TokenDataset,
    teacher: Callable[..., Any],
    student: Callable[..., Any],
    *,
    model_top_k: int,
    vocab_size: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    top_k: int = 5,
    chunk_tokens: int | None = None,
    device: Any = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[TokenStats, ModelTokenStats, ModelTokenStats]:
    """:func:`stream_pair_stats`, and from the same log-probs both models' per-model summaries.

    One pass fills the pair statistics and the teacher's and student's
    :class:`~distill_eval.lm.modelstats.ModelTokenStats` (with ``model_top_k`` top ids), equal to
    what :func:`~distill_eval.lm.modelstats.stream_model_stats` computes for each model alone.

    Parameters
    ----------
    model_top_k : int
        ``k`` of the summaries' top-k columns.
    dataset, teacher, student, vocab_size, batch_size, top_k, chunk_tokens, device, progress
        As :func:`stream_pair_stats`.

    Returns
    -------
    (TokenStats, ModelTokenStats, ModelTokenStats)
        The pair statistics, the teacher's summary and the student's.
    """
    stats, summaries = _stream_pairs(
        dataset,
        teacher,
        student,
        vocab_size=vocab_size,
        batch_size=batch_size,
        top_k=top_k,
        chunk_tokens=chunk_tokens,
        device=device,
        progress=progress,
        model_top_k=model_top_k,
    )
    assert summaries is not None
    return stats, *summaries


def _stream_pairs(
    dataset: TokenDataset,
    teacher: Callable[..., Any],
    student: Callable[..., Any],
    *,
    vocab_size: int | tuple[int, int] | None,
    batch_size: int,
    top_k: int,
    chunk_tokens: int | None,
    device: Any,
    progress: Callable[[int], None] | None,
    model_top_k: int | None = None,
) -> tuple[TokenStats, tuple[ModelTokenStats, ModelTokenStats] | None]:
    import torch

    vocab = _dataset_vocab(dataset, vocab_size)
    n = dataset.n_scored
    pairs = _Rows(n)
    summaries = (_Rows(n), _Rows(n))
    with torch.inference_mode():
        for batch, input_ids, mask in _device_batches(dataset, batch_size, device):
            teacher_logits = _logits(teacher(input_ids, mask), "teacher")
            student_logits = _logits(student(input_ids, mask), "student")
            stats, models = _pair_batch(
                teacher_logits,
                student_logits,
                batch.labels,
                batch.attention_mask,
                vocab_size=vocab,
                top_k=top_k,
                chunk_tokens=chunk_tokens,
                sequence_offset=batch.start,
                model_top_k=model_top_k,
            )
            pairs.add(stats.columns())
            if models is not None:
                summaries[0].add(models[0].columns())
                summaries[1].add(models[1].columns())
            del teacher_logits, student_logits, stats, models
            if progress is not None:
                progress(batch.start + len(batch.input_ids))
    stats = TokenStats.from_columns(pairs.result())
    if model_top_k is None:
        return stats, None
    from distill_eval.lm.modelstats import ModelTokenStats

    info = {"dataset_sha256": dataset.sha256}
    t, s = (ModelTokenStats(**rows.result(), vocab_size=vocab, info=info) for rows in summaries)
    return stats, (t, s)


class _Rows:
    """Per-token columns of a dataset, written batch by batch into arrays of their final length.

    Appending per-batch parts and concatenating them at the end holds every row twice at the
    peak; the number of scored tokens is known before the first batch, so each column is
    allocated once, when the first batch shows its dtype and shape.
    """

    def __init__(self, n: int):
        self.n = n
        self.filled = 0
        self.columns: dict[str, np.ndarray] | None = None

    def add(self, columns: Mapping[str, np.ndarray]) -> None:
        size = len(next(iter(columns.values())))
        if self.filled + size > self.n:
            raise ValueError(f"more scored tokens than the dataset's {self.n}")  # a bug, not the user's data
        if self.columns is None:
            self.columns = {name: np.empty((self.n, *c.shape[1:]), dtype=c.dtype) for name, c in columns.items()}
        for name, column in columns.items():
            self.columns[name][self.filled : self.filled + size] = column
        self.filled += size

    def result(self) -> dict[str, np.ndarray]:
        """The filled columns."""
        if self.columns is None:
            raise ValueError("no batch to take per-token columns from")
        if self.filled != self.n:
            raise ValueError(f"{self.filled} scored tokens, but the dataset has {self.n}")
        return self.columns


def _dataset_vocab(dataset: TokenDataset, vocab_size: int | tuple[int, int] | None) -> int:
    """The vocabulary a streamed dataset is scored over: the one given, else the dataset's own."""
    if vocab_size is None:
        if dataset.vocab_size is None:
            raise ValueError(f"dataset '{dataset.name}' does not know its vocabulary size: pass vocab_size")
        vocab_size = dataset.vocab_size
    return _vocab(vocab_size)


def _device_batches(dataset: TokenDataset, batch_size: int, device: Any) -> Iterator[tuple[TokenBatch, Any, Any]]:
    """Each batch of ``dataset`` with its input ids and attention mask as tensors on ``device``."""
    import torch

    for batch in dataset.batches(batch_size):
        yield (
            batch,
            torch.from_numpy(batch.input_ids).to(device or "cpu"),
            torch.from_numpy(batch.attention_mask).to(device or "cpu"),
        )


def _logits(output: Any, who: str) -> Any:
    """The logits tensor of a model's output (a tensor, ``.logits``, ``["logits"]``, a tuple's first)."""
    from distill_eval.lm.models import _as_logits  # one reading of a forward's output, shared with the loaders

    return _as_logits(output, who)
