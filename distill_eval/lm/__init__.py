"""Token-level (language-model) evaluation: token datasets, exact paired statistics, sequence bootstrap.

A language-model student outputs logits of shape ``(batch, seq, vocab)``; a whole dataset's
logits never fit in memory (10^6 tokens x 150k vocab x 2 bytes = 300 GB). This subpackage
therefore never stores them:

- :mod:`~distill_eval.lm.tokens` reads token datasets (``.npz`` / ``.pt``: ``input_ids``,
  ``attention_mask``, ``labels`` in the Hugging Face unshifted convention, ``ids``,
  ``meta_*``), tokenizes ``.jsonl`` text or prompt/completion pairs with a local tokenizer
  (prompt tokens unscored), and builds a byte-level corpus from the docstrings of the local
  Python's standard library (no download).
- :mod:`~distill_eval.lm.pairstats` runs teacher and student on the same batch and reduces
  both logits, in float32 and in chunks of tokens, to a few numbers per scored token
  (label log-probs, argmaxes, max probs, entropies, forward and reverse KL, JS, TVD, top-k),
  then drops the logits.
- :mod:`~distill_eval.lm.modelstats` reduces ONE model's logits the same way to a reusable
  per-token record (label log-prob, argmax, max prob, entropy, top-k ids and float16
  log-probs, tail mass) with an ``.npz`` round trip: a teacher cache for many students.
- :mod:`~distill_eval.lm.cluster` turns per-token values into token-weighted and
  per-sequence means, and bootstraps them by resampling *sequences* (tokens of one sequence
  are not independent) through :func:`distill_eval.metrics.sums.bootstrap_sums`.
- :mod:`~distill_eval.lm.frequency` counts the scored tokens of a reference corpus, for the
  ``token_frequency`` and ``frequency_rank`` fields of ``slices`` checks.
- :mod:`~distill_eval.lm.models` loads token-level models (a Hugging Face directory with the
  ``[hf]`` extra, a ``"module:callable"`` factory, a ``.pt2`` with dynamic batch and length)
  behind one call, ``model(input_ids, attention_mask) -> logits`` over the true vocabulary.
- :mod:`~distill_eval.lm.decode` continues prompts token by token (with a model's key-value
  cache when it has one), and :mod:`~distill_eval.lm.generation` compares the teacher's and the
  student's greedy continuations (exact match, first divergence, ROUGE-L, the teacher's NLL).
- :mod:`~distill_eval.lm.loss` is the trainer's masked token KD loss (forward KL x T^2 + CE,
  reverse KL, JSD(beta)), normalised by the scored tokens of the whole step, chunked so the
  logits are never upcast at once.

Conventions: the logits at position ``t`` score ``labels[t + 1]``; ``-100`` is not scored; a
position is scored only when it and the next one are attended, so the last position never is.
"""

from distill_eval.lm.cluster import (
    SequenceSums,
    cluster_bootstrap,
    per_sequence_means,
    sequence_mean,
    token_weighted_mean,
)
from distill_eval.lm.modelstats import ModelTokenStats, model_stats, stream_model_stats
from distill_eval.lm.pairstats import TokenStats, pair_stats, shared_vocab_size, stream_pair_stats
from distill_eval.lm.tokens import (
    BYTE_VOCAB_SIZE,
    TokenDataset,
    load_byte_corpus,
    load_jsonl_tokens,
    load_token_dataset,
    token_dataset,
)

__all__ = [
    "BYTE_VOCAB_SIZE",
    "ModelTokenStats",
    "SequenceSums",
    "TokenDataset",
    "TokenStats",
    "cluster_bootstrap",
    "load_byte_corpus",
    "load_jsonl_tokens",
    "load_token_dataset",
    "model_stats",
    "pair_stats",
    "per_sequence_means",
    "sequence_mean",
    "shared_vocab_size",
    "stream_model_stats",
    "stream_pair_stats",
    "token_dataset",
    "token_weighted_mean",
]
