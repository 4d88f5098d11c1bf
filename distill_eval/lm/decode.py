"""Incremental decoding: a prompt's prefill, then one token at a time, with a model's key-value cache.

Free-running evaluation (kind ``generation``) and language-model latency both need a model to
continue prompts token by token. :class:`Decoder` gives one interface over two ways of doing
it:

* a model with a key-value cache (:attr:`TokenModel.has_kv_cache
  <distill_eval.lm.models.TokenModel.has_kv_cache>`: a Hugging Face model, or a module whose
  ``forward`` takes ``past_key_values`` and ``use_cache``) runs the prompt once and then only
  each new token, attending to the cached keys and values;
* any other model (a ``.pt2`` program, a plain module) recomputes the whole sequence at every
  step: the same tokens, quadratically slower; :attr:`Decoder.uses_cache` says which.

Prompts of different lengths are left-padded into one batch (``attention_mask`` 0 on the
padding), so every row's next token is in the last column. A model must therefore give a
real token's logits independently of padding before it: positions counted from each row's
first attended token (Hugging Face ``generate`` passes such ``position_ids``, as does
:func:`~distill_eval.lm.models.TokenModel.forward_cached`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_eval.lm.models import TokenModel

__all__ = ["DecodeState", "Decoder", "greedy_continuations", "left_pad"]


@dataclass
class DecodeState:
    """Where a batch being decoded stands: its tokens so far, their mask, and the model's cache (if any)."""

    input_ids: Any
    attention_mask: Any
    past: Any = None


def left_pad(prompts: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack prompts of different lengths into one batch, padded on the left.

    Parameters
    ----------
    prompts : sequence of 1-D int arrays
        Each at least one token long.
    pad_id : int, default 0
        The id written under padding (masked out, so any id in the vocabulary does).

    Returns
    -------
    input_ids, attention_mask : int64 arrays of shape (len(prompts), longest)
    """
    if not prompts:
        raise ValueError("no prompts to pad")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = prompt
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


class Decoder:
    """Next-token logits of a batch, one step at a time, for one :class:`TokenModel`.

    Parameters
    ----------
    model : TokenModel
        A loaded language model.
    use_cache : bool, default True
        Reuse the model's key-value cache when it has one; False recomputes every step
        (for a baseline, or to check that both give the same tokens).

    Examples
    --------
    >>> decoder = Decoder(model)                              # doctest: +SKIP
    >>> logits, state = decoder.prefill(input_ids, attention_mask)
    >>> token = logits.argmax(-1)
    >>> logits, state = decoder.step(state, token)
    """

    def __init__(self, model: TokenModel, *, use_cache: bool = True):
        self.model = model
        self.uses_cache = bool(use_cache and model.has_kv_cache)

    def prefill(self, input_ids: Any, attention_mask: Any) -> tuple[Any, DecodeState]:
        """Run the prompts; the logits of the token after each one.

        Parameters
        ----------
        input_ids, attention_mask : tensor or array, shape (batch, length)
            Left-padded prompts (see :func:`left_pad`).

        Returns
        -------
        logits : tensor of shape (batch, true_vocab_size)
            On the model's device, in the model's dtype.
        state : DecodeState
            To pass to :meth:`step`.
        """
        import torch

        ids = torch.as_tensor(input_ids).to(self.model.device, torch.int64)
        mask = torch.as_tensor(attention_mask).to(self.model.device, torch.int64)
        if self.uses_cache:
            logits, past = self.model.forward_cached(ids, mask)
        else:
            logits, past = self.model(ids, mask), None
        return logits[:, -1], DecodeState(ids, mask, past)

    def step(self, state: DecodeState, tokens: Any) -> tuple[Any, DecodeState]:
        """Append one token to every row; the logits of the token after it.

        Parameters
        ----------
        state : DecodeState
            From :meth:`prefill` or the previous step.
        tokens : tensor or array of int, shape (batch,)

        Returns
        -------
        logits : tensor of shape (batch, true_vocab_size)
        state : DecodeState
        """
        import torch

        new = torch.as_tensor(tokens).to(self.model.device, torch.int64).reshape(-1, 1)
        ids = torch.cat([state.input_ids, new], dim=1)
        mask = torch.cat([state.attention_mask, torch.ones_like(new)], dim=1)
        if self.uses_cache:
            logits, past = self.model.forward_cached(new, mask, state.past)
        else:
            logits, past = self.model(ids, mask), None
        return logits[:, -1], DecodeState(ids, mask, past)


def greedy_continuations(
    model: TokenModel,
    prompts: Sequence[np.ndarray],
    max_new_tokens: int,
    *,
    batch_size: int = 32,
    use_cache: bool = True,
) -> np.ndarray:
    """Each prompt's greedy continuation: the argmax token, fed back, ``max_new_tokens`` times.

    Every continuation has exactly ``max_new_tokens`` tokens (an end-of-sequence token is
    not special here: the caller cuts where it wants). Ties go to the lowest token id, as
    ``argmax`` breaks them.

    Parameters
    ----------
    model : TokenModel
    prompts : sequence of 1-D int arrays
        Each at least one token long.
    max_new_tokens : int
        Tokens to generate per prompt (>= 1).
    batch_size : int, default 32
        Prompts decoded together.
    use_cache : bool, default True
        As in :class:`Decoder`.

    Returns
    -------
    ndarray of int64, shape (len(prompts), max_new_tokens)
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    decoder = Decoder(model, use_cache=use_cache)
    out = np.empty((len(prompts), max_new_tokens), dtype=np.int64)
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size])
        logits, state = decoder.prefill(ids, mask)
        for t in range(max_new_tokens):
            token = logits.float().argmax(-1)
            out[start : start + len(ids), t] = token.cpu().numpy()
            if t + 1 < max_new_tokens:
                logits, state = decoder.step(state, token)
    return out
