"""Free-running comparison: teacher and student each greedily continue the same prompts.

Teacher-forced statistics (:mod:`~distill_eval.lm.pairstats`) score both models on fixed
text; here each model writes its own continuation, and the two are compared token by token
(exact match, first divergence, ROUGE-L) and by the teacher's likelihood of each
(:func:`teacher_nll`: a student that wanders off into text its teacher finds unlikely has
drifted, even where every single step looked close).

The pieces:

* :func:`select_prompts`: which sequences of a :class:`~distill_eval.lm.tokens.TokenDataset`
  give a prompt, and what the prompt and the sequence's own continuation (the reference) are;
* :func:`generate_pair`: both models' greedy continuations
  (:func:`~distill_eval.lm.decode.greedy_continuations`), cut after the first end-of-sequence
  token, and the teacher's log-likelihood of each, packed into one array for the run's cache;
* :func:`first_divergence`, :func:`lcs_length`, :func:`rouge_l`: plain functions on two
  sequences of token ids (:func:`lcs_lengths`, :func:`rouge_l_scores`: on many pairs at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from distill_eval._hashing import sha256_arrays
from distill_eval.lm.decode import Decoder, greedy_continuations
from distill_eval.lm.models import TokenModel
from distill_eval.lm.tokens import IGNORE_INDEX, TokenDataset
from distill_eval.outputs import result_key

__all__ = [
    "GENERATION_KIND",
    "Generations",
    "Prompts",
    "cut_at_eos",
    "cut_lengths",
    "first_divergence",
    "generate_pair",
    "generation_key",
    "has_prompts",
    "lcs_length",
    "lcs_lengths",
    "rouge_l",
    "rouge_l_scores",
    "select_prompts",
    "teacher_nll",
]

#: the ``kind`` of a cached pair of continuations (``distill-eval cache`` lists it)
GENERATION_KIND = "generation"

#: the modules whose source computes cached continuations: editing one retires old entries
_GENERATION_CODE = ("distill_eval.lm.generation", "distill_eval.lm.decode", "distill_eval.lm.models")


@dataclass(frozen=True)
class Prompts:
    """The prompts taken from a token dataset, and each sequence's own continuation.

    Attributes
    ----------
    rows : ndarray of int64, shape (n_prompts,)
        The dataset row of each prompt.
    tokens : list of ndarray
        Each prompt's token ids (at least one).
    references : list of ndarray
        The tokens that follow each prompt in its sequence (at least one).
    skipped : int
        Sequences too short to give a prompt and one more token.
    usable : int
        Sequences that could give a prompt (``len(rows)`` of them were taken).
    from_labels : bool
        True when the prompts are the sequences' unscored prefixes (prompt/completion data),
        False when they are their first ``prompt_tokens`` tokens.
    """

    rows: np.ndarray
    tokens: list[np.ndarray]
    references: list[np.ndarray]
    skipped: int
    usable: int
    from_labels: bool

    @property
    def n(self) -> int:
        return len(self.tokens)

    @cached_property
    def sha256(self) -> str:
        """A hash of the prompts' tokens and lengths: what the continuations depend on."""
        lengths = np.array([len(p) for p in self.tokens], dtype=np.int64)
        return sha256_arrays(lengths, np.concatenate(self.tokens).astype(np.int64))


def _unscored_prefix(labels: np.ndarray) -> int:
    scored = np.flatnonzero(labels != IGNORE_INDEX)
    return int(scored[0]) if scored.size else len(labels)


def has_prompts(data: TokenDataset) -> bool:
    """Whether some sequence of ``data`` leaves more than its first attended token unscored (a prompt/completion file).

    The first token is never scored in the unshifted convention (nothing comes before it), so a
    leading BOS alone is not a prompt.
    """
    return any(
        _unscored_prefix(labels[mask != 0]) > 1 for mask, labels in zip(data.attention_mask, data.labels, strict=True)
    )


def select_prompts(data: TokenDataset, *, prompt_tokens: int | None, max_prompts: int) -> Prompts:
    """The prompts of a token dataset, at most ``max_prompts``, evenly spaced over its usable sequences.

    A sequence's tokens are its attended ones (padding on either side dropped). When some
    sequence leaves more than its first token unscored (labels ``-100``: a prompt/completion
    ``.jsonl``), the dataset has prompts: each sequence's prompt is its unscored prefix and its
    reference the rest. Otherwise the prompt is the first ``prompt_tokens`` tokens (the first
    token alone is never scored in the unshifted convention, so a leading BOS does not count
    as a prompt).

    Parameters
    ----------
    data : TokenDataset
    prompt_tokens : int or None
        Prompt length for data without prompts; must be None for data with prompts.
    max_prompts : int
        At most this many prompts; more usable sequences are thinned to evenly spaced ones
        (always the first, deterministic, no random draw).

    Returns
    -------
    Prompts

    Raises
    ------
    ValueError
        When ``prompt_tokens`` is given for data with prompts, or is missing for data without.
    """
    rows_tokens = []
    prefixes = []
    for ids, mask, labels in zip(data.input_ids, data.attention_mask, data.labels, strict=True):
        attended = mask != 0
        rows_tokens.append(ids[attended])
        prefixes.append(_unscored_prefix(labels[attended]))
    from_labels = any(p > 1 for p in prefixes)  # as has_prompts
    if from_labels and prompt_tokens is not None:
        raise ValueError("the sequences have prompts (unscored prefixes); prompt_tokens applies only to data without")
    if not from_labels and prompt_tokens is None:
        raise ValueError("prompt_tokens is needed for data without prompts")
    usable = []
    for row, (tokens, prefix) in enumerate(zip(rows_tokens, prefixes, strict=True)):
        cut = max(prefix, 1) if from_labels else int(prompt_tokens)  # type: ignore[arg-type]
        if len(tokens) > cut:
            usable.append((row, cut))
    take = usable
    if len(usable) > max_prompts:
        take = [usable[i] for i in np.unique(np.linspace(0, len(usable) - 1, max_prompts).round().astype(np.int64))]
    return Prompts(
        rows=np.array([row for row, _ in take], dtype=np.int64),
        tokens=[rows_tokens[row][:cut] for row, cut in take],
        references=[rows_tokens[row][cut:] for row, cut in take],
        skipped=data.n_sequences - len(usable),
        usable=len(usable),
        from_labels=from_labels,
    )


def cut_lengths(continuations: np.ndarray, eos: int | None) -> np.ndarray:
    """The length of each continuation cut just after its first ``eos`` token (kept); all of it when none.

    Parameters
    ----------
    continuations : array of int, shape (n, max_new_tokens)
    eos : int or None
        The end-of-sequence id; None: nothing is cut.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    continuations = np.asarray(continuations)
    n, width = continuations.shape
    if eos is None:
        return np.full(n, width, dtype=np.int64)
    hit = continuations == eos
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, width).astype(np.int64)


def cut_at_eos(tokens: np.ndarray, eos: int | None) -> np.ndarray:
    """``tokens`` up to and including the first ``eos``; all of them when there is none (or ``eos`` is None).

    Examples
    --------
    >>> cut_at_eos(np.array([4, 7, 2, 7]), 7).tolist(), cut_at_eos(np.array([4, 5]), 7).tolist()
    ([4, 7], [4, 5])
    """
    tokens = np.asarray(tokens)
    hit = np.flatnonzero(tokens == eos) if eos is not None else np.zeros(0, dtype=np.int64)
    return tokens[: hit[0] + 1] if hit.size else tokens


def first_divergence(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """The index of the first position where two token sequences differ.

    A sequence that ends where the other goes on differs there; two equal sequences
    diverge at their length.

    Examples
    --------
    >>> first_divergence([1, 2, 3], [1, 2, 4]), first_divergence([1, 2], [1, 2, 3]), first_divergence([5], [5])
    (2, 2, 1)
    """
    a, b = np.asarray(a), np.asarray(b)
    common = min(len(a), len(b))
    differ = np.flatnonzero(a[:common] != b[:common])
    return int(differ[0]) if differ.size else common


def lcs_lengths(a: Sequence[Sequence[int] | np.ndarray], b: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    """The longest common subsequence's length of each pair ``(a[i], b[i])`` of token sequences.

    The classic dynamic program (O(len a x len b) steps), run for all pairs at once: each step is
    one numpy operation over the pairs. Shorter sequences are padded with ids that match nothing
    (``-1`` in ``a``, ``-2`` in ``b``), which leaves every LCS unchanged.

    Parameters
    ----------
    a, b : sequences of 1-D int arrays
        Pairwise, of equal count; ids >= 0.

    Returns
    -------
    ndarray of int64, shape (len(a),)
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must hold as many sequences, got {len(a)} and {len(b)}")
    n = len(a)
    la = max((len(x) for x in a), default=0)
    lb = max((len(y) for y in b), default=0)
    if n == 0 or la == 0 or lb == 0:
        return np.zeros(n, dtype=np.int64)
    left, right = np.full((n, la), -1, dtype=np.int64), np.full((n, lb), -2, dtype=np.int64)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        left[i, : len(x)], right[i, : len(y)] = x, y
    previous = np.zeros((n, lb + 1), dtype=np.int64)
    for i in range(la):
        equal = left[:, i : i + 1] == right
        current = np.zeros_like(previous)
        for j in range(lb):
            current[:, j + 1] = np.where(equal[:, j], previous[:, j] + 1, np.maximum(previous[:, j + 1], current[:, j]))
        previous = current
    return previous[:, -1]


def lcs_length(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """The length of the longest common subsequence of two token sequences (:func:`lcs_lengths` of one pair).

    Examples
    --------
    >>> lcs_length([1, 2, 3, 4], [2, 4, 3])
    2
    """
    return int(lcs_lengths([np.asarray(a).ravel()], [np.asarray(b).ravel()])[0])


def rouge_l_scores(
    candidates: Sequence[Sequence[int] | np.ndarray], references: Sequence[Sequence[int] | np.ndarray]
) -> np.ndarray:
    """:func:`rouge_l` of each pair ``(candidates[i], references[i])``, computed together.

    Returns
    -------
    ndarray of float64, shape (len(candidates),)
    """
    lcs = lcs_lengths(candidates, references).astype(np.float64)
    total = np.array([len(c) + len(r) for c, r in zip(candidates, references, strict=True)], dtype=np.float64)
    return np.divide(2.0 * lcs, total, out=np.zeros_like(lcs), where=lcs > 0)


def rouge_l(candidate: Sequence[int] | np.ndarray, reference: Sequence[int] | np.ndarray) -> float:
    """ROUGE-L F1 of two token sequences: ``2PR / (P + R)``, ``P = LCS / len(candidate)``, ``R = LCS / len(reference)``.

    Symmetric in its arguments; 0 when they share no token (or either is empty), 1 when equal.

    Examples
    --------
    >>> rouge_l([1, 2, 3, 4], [2, 4, 3])  # LCS 2: P = 1/2, R = 2/3
    0.5714285714285714
    """
    return float(rouge_l_scores([np.asarray(candidate).ravel()], [np.asarray(reference).ravel()])[0])


def teacher_nll(
    model: TokenModel,
    prompts: Sequence[np.ndarray],
    continuations: Sequence[np.ndarray],
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """Each continuation's mean negative log-likelihood per token under ``model``, teacher-forced after its prompt.

    Prompt and continuation are joined and right-padded into one batch (padding after a
    sequence never changes a causal model's logits before it); the logits at the position
    before each continuation token score it, as a float32 log-softmax over the true vocabulary.

    Parameters
    ----------
    model : TokenModel
    prompts, continuations : sequences of 1-D int arrays
        Pairwise; every one at least one token long.
    batch_size : int, default 32

    Returns
    -------
    ndarray of float64, shape (len(prompts),)
        Mean NLL in nats per continuation token.
    """
    import torch

    out = np.empty(len(prompts), dtype=np.float64)
    for start in range(0, len(prompts), batch_size):
        ps, cs = prompts[start : start + batch_size], continuations[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in zip(ps, cs, strict=True))
        ids = np.zeros((len(ps), width), dtype=np.int64)
        mask = np.zeros((len(ps), width), dtype=np.int64)
        scored = np.zeros((len(ps), width), dtype=bool)  # scored[r, t]: the logits at t score ids[r, t + 1]
        for r, (p, c) in enumerate(zip(ps, cs, strict=True)):
            ids[r, : len(p) + len(c)] = np.concatenate([p, c])
            mask[r, : len(p) + len(c)] = 1
            scored[r, len(p) - 1 : len(p) + len(c) - 1] = True
        logits = model(ids, mask)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = torch.as_tensor(ids[:, 1:], device=logp.device).unsqueeze(-1)
        nll = -logp.gather(-1, target).squeeze(-1).cpu().double().numpy()
        keep = scored[:, :-1]
        out[start : start + len(ps)] = (nll * keep).sum(axis=1) / keep.sum(axis=1)
    return out


@dataclass(frozen=True)
class Generations:
    """Teacher's and student's greedy continuations of the same prompts, and the teacher's NLL of each.

    Attributes
    ----------
    teacher, student : ndarray of int64, shape (n_prompts, max_new_tokens)
        The continuations as generated (before the end-of-sequence cut).
    teacher_length, student_length : ndarray of int64, shape (n_prompts,)
        Their lengths after the cut (:func:`cut_lengths`); comparisons use the cut continuations.
    teacher_nll, teacher_nll_self : ndarray of float64, shape (n_prompts,)
        The teacher's mean NLL per token of the student's (cut) continuation, and of its own.
    kv_cache : dict of str to bool
        Whether each model (``"teacher"``, ``"student"``) decoded with its key-value cache.
    """

    teacher: np.ndarray
    student: np.ndarray
    teacher_length: np.ndarray
    student_length: np.ndarray
    teacher_nll: np.ndarray
    teacher_nll_self: np.ndarray
    kv_cache: dict[str, bool]

    @property
    def n(self) -> int:
        return int(self.teacher.shape[0])

    def cut(self, role: str, i: int) -> np.ndarray:
        """Prompt ``i``'s continuation by ``role`` (``"teacher"`` or ``"student"``), cut after EOS."""
        if role == "teacher":
            return self.teacher[i, : self.teacher_length[i]]
        return self.student[i, : self.student_length[i]]

    def pack(self) -> np.ndarray:
        """One structured record per prompt, for the cache (:meth:`unpack` reads it back)."""
        width = self.teacher.shape[1]
        dtype = np.dtype(
            [
                ("teacher", np.int64, (width,)),
                ("student", np.int64, (width,)),
                ("teacher_length", np.int64),
                ("student_length", np.int64),
                ("teacher_nll", np.float64),
                ("teacher_nll_self", np.float64),
            ]
        )
        out = np.empty(self.n, dtype=dtype)
        for name in dtype.names or ():
            out[name] = getattr(self, name)
        return out

    @classmethod
    def unpack(cls, records: Any, kv_cache: dict[str, bool]) -> Generations:
        """The :class:`Generations` of :meth:`pack`'s array.

        Raises
        ------
        ValueError
            When the array is not such a record array.
        """
        names = records.dtype.names or ()
        expected = ("teacher", "student", "teacher_length", "student_length", "teacher_nll", "teacher_nll_self")
        if tuple(names) != expected:
            raise ValueError(f"a generation entry needs the fields {list(expected)}, got {list(names)}")
        return cls(**{name: np.ascontiguousarray(records[name]) for name in names}, kv_cache=dict(kv_cache))


def generate_pair(
    teacher: TokenModel,
    student: TokenModel,
    prompts: Sequence[np.ndarray],
    *,
    max_new_tokens: int,
    eos: int | None,
    batch_size: int = 32,
) -> Generations:
    """Both models' greedy continuations of ``prompts``, cut after ``eos``, and the teacher's NLL of each.

    Parameters
    ----------
    teacher, student : TokenModel
        Sharing one vocabulary (:func:`~distill_eval.lm.models.shared_vocab`).
    prompts : sequence of 1-D int arrays
    max_new_tokens : int
        Tokens generated per prompt, before the cut.
    eos : int or None
        The end-of-sequence id (kept, then cut after); None: no cut.
    batch_size : int, default 32
        Prompts decoded (and scored) together.

    Returns
    -------
    Generations
    """
    t = greedy_continuations(teacher, prompts, max_new_tokens, batch_size=batch_size)
    s = greedy_continuations(student, prompts, max_new_tokens, batch_size=batch_size)
    t_len, s_len = cut_lengths(t, eos), cut_lengths(s, eos)
    s_cut = [s[i, : s_len[i]] for i in range(len(prompts))]
    t_cut = [t[i, : t_len[i]] for i in range(len(prompts))]
    return Generations(
        teacher=t,
        student=s,
        teacher_length=t_len,
        student_length=s_len,
        teacher_nll=teacher_nll(teacher, prompts, s_cut, batch_size=batch_size),
        teacher_nll_self=teacher_nll(teacher, prompts, t_cut, batch_size=batch_size),
        kv_cache={"teacher": Decoder(teacher).uses_cache, "student": Decoder(student).uses_cache},
    )


def generation_key(
    teacher: str,
    student: str,
    data: TokenDataset,
    prompts: Prompts,
    *,
    max_new_tokens: int,
    eos: int | None,
    batch_size: int,
    device: str,
    torch_version: str,
) -> str:
    """The :class:`~distill_eval.outputs.OutputCache` key of a pair's continuations of a dataset's prompts.

    Parameters
    ----------
    teacher, student : str
        Both models' fingerprints.
    data : TokenDataset
        Its content hash is part of the key.
    prompts : Prompts
        The prompts themselves are hashed (so every way of choosing them keys by what was chosen).
    max_new_tokens, eos, batch_size
        As :func:`generate_pair` (batching can change the last bits of the logits, so a tie).
    device : str
        The resolved device; only its kind counts.
    torch_version : str
        The installed torch version.
    """
    return result_key(
        GENERATION_KIND,
        arrays={},
        settings={
            "prompts": prompts.sha256,
            "teacher": teacher,
            "student": student,
            "dataset": data.sha256,
            "max_new_tokens": max_new_tokens,
            "eos": eos,
            "batch_size": batch_size,
            "device": device.split(":")[0],
            "torch": torch_version,
        },
        code=_GENERATION_CODE,
    )
