"""Small reference architectures, as factories returning ``nn.Module``.

Every factory is callable with no arguments (the built-in defaults) and takes
keyword arguments to change sizes.

- Classifiers (:func:`mlp`, :func:`digits_teacher`, :func:`digits_student`) start
  with ``nn.Flatten``, so they accept digits as flat rows of shape (batch, 64) or
  as images of shape (batch, 8, 8), and they return logits of shape (batch, n_classes).
- Causal language models (:func:`causal_lm`, :func:`bytes_teacher`,
  :func:`bytes_student`) take ``forward(input_ids, attention_mask)`` and return
  next-token logits of shape (batch, length, vocab_size); by default over the
  byte-level vocabulary of the built-in corpus
  (:data:`~distill_eval.lm.tokens.BYTE_VOCAB_SIZE` = 259).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from distill_eval.lm.tokens import BYTE_VOCAB_SIZE

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "bytes_student",
    "bytes_teacher",
    "causal_lm",
    "digits_student",
    "digits_teacher",
    "mlp",
]


def mlp(in_features: int = 64, hidden: Sequence[int] = (32,), n_classes: int = 10) -> nn.Sequential:
    """A Linear/ReLU stack that maps flattened inputs to logits.

    Parameters
    ----------
    in_features : int, default 64
        Number of input features after flattening.
    hidden : sequence of int, default (32,)
        Widths of the hidden layers, each followed by a ReLU; empty gives a
        linear model.
    n_classes : int, default 10
        Number of output logits.

    Returns
    -------
    nn.Sequential
        ``Flatten, (Linear, ReLU) * len(hidden), Linear``.
    """
    widths = [int(in_features), *(int(h) for h in hidden), int(n_classes)]
    if min(widths) < 1:
        raise ValueError(
            "mlp sizes must be positive, got "
            f"in_features={in_features!r}, hidden={tuple(hidden)!r}, n_classes={n_classes!r}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in, width_out in itertools.pairwise(widths[:-1]):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def digits_teacher(*, in_features: int = 64, hidden: Sequence[int] = (256, 256), n_classes: int = 10) -> nn.Sequential:
    """The built-in teacher for ``sklearn:digits``: ``mlp(64, (256, 256), 10)``.

    Parameters
    ----------
    in_features, hidden, n_classes
        As in :func:`mlp`.

    Returns
    -------
    nn.Sequential
        Untrained; load ``weights/digits_teacher.pt`` into it for the default.
    """
    return mlp(in_features, hidden, n_classes)


def digits_student(*, in_features: int = 64, hidden: Sequence[int] = (32,), n_classes: int = 10) -> nn.Sequential:
    """The built-in student for ``sklearn:digits``: ``mlp(64, (32,), 10)``.

    Parameters
    ----------
    in_features, hidden, n_classes
        As in :func:`mlp`.

    Returns
    -------
    nn.Sequential
        Untrained; load ``weights/digits_student.pt`` into it for the default.
    """
    return mlp(in_features, hidden, n_classes)


class _Block(nn.Module):
    """A pre-norm transformer block: causal self-attention, then a GELU feed-forward layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(
        self, h: torch.Tensor, allowed: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block's output and its keys and values (the past's, then the new positions')."""
        b, length, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, length, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        h = h + self.proj(a.transpose(1, 2).reshape(b, length, d))
        return h + self.ff(self.norm2(h)), (k, v)


class CausalLMOutput(NamedTuple):
    """What :class:`CausalLM` returns when called with ``use_cache=True``."""

    logits: torch.Tensor
    past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class CausalLM(nn.Module):
    """A small decoder-only transformer: token embedding + sinusoidal positions, pre-norm blocks, tied head.

    ``forward(input_ids, attention_mask)`` returns next-token logits of shape
    (batch, length, vocab_size): the logits at position ``t`` predict token ``t + 1``
    from tokens ``0..t``. Position ``t`` attends to the attended positions ``<= t``
    and always to itself, so any padding (left or right) gives finite logits and
    never changes the logits of real tokens. Positions are counted from the first
    attended token. Token embeddings are scaled by ``sqrt(d_model)``; the output head is the
    embedding matrix (tied). The length is not bounded (the positions are computed, not
    learned), so the module exports with a dynamic batch and length.

    Parameters
    ----------
    vocab_size : int
        Tokens in the vocabulary (also the attribute ``vocab_size``).
    d_model, n_layers, n_heads, d_ff : int
        Width, depth, attention heads (dividing ``d_model``) and feed-forward width.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, d_ff: int):
        super().__init__()
        sizes = {"vocab_size": vocab_size, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "d_ff": d_ff}
        bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"causal_lm sizes must be positive integers, got {bad}")
        if d_model % n_heads or d_model % 2:
            raise ValueError(f"d_model ({d_model}) must be even and divisible by n_heads ({n_heads})")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        # Unit-variance logits at initialisation: the head is the embedding, applied after a LayerNorm.
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.scale = math.sqrt(d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.register_buffer(
            "frequencies",
            torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)),
            persistent=False,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | CausalLMOutput:
        """Next-token logits of shape (batch, length, vocab_size).

        With ``use_cache=True`` it returns a :class:`CausalLMOutput` whose
        ``past_key_values`` (each block's keys and values) can be passed back with the
        next tokens alone, as Hugging Face models do: ``attention_mask`` then covers the
        past and the new tokens, and the logits equal those of one call on the whole
        sequence (to float rounding).
        """
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + length, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape[1] != past + length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions; expected the {past} cached and "
                f"{length} new ones"
            )
        attended = attention_mask != 0
        position = (attended.long().cumsum(1) - 1).clamp(min=0)[:, past:].float()
        angles = position[..., None] * self.frequencies
        h = self.embed(input_ids) * self.scale + torch.cat([angles.sin(), angles.cos()], dim=-1)
        # query i is the sequence's position past + i: it sees attended keys up to itself, and always itself
        causal = torch.ones(length, past + length, dtype=torch.bool, device=input_ids.device).tril(past)
        itself = causal & ~causal.tril(past - 1)
        allowed = ((causal & attended[:, None, :]) | itself)[:, None]  # (batch, 1, query, key)
        cache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, allowed, None if past_key_values is None else past_key_values[i])
            cache.append(kv)
        logits = self.norm(h) @ self.embed.weight.T
        return CausalLMOutput(logits, tuple(cache)) if use_cache else logits


def causal_lm(
    *, vocab_size: int = BYTE_VOCAB_SIZE, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, d_ff: int = 128
) -> CausalLM:
    """A small causal transformer language model (:class:`CausalLM`).

    Parameters
    ----------
    vocab_size : int, default BYTE_VOCAB_SIZE (259)
    d_model, n_layers, n_heads, d_ff : int
        As in :class:`CausalLM`.

    Returns
    -------
    CausalLM
        Untrained.
    """
    return CausalLM(vocab_size, d_model, n_layers, n_heads, d_ff)


def bytes_teacher(
    *, vocab_size: int = BYTE_VOCAB_SIZE, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, d_ff: int = 256
) -> CausalLM:
    """The built-in byte-level teacher: ``causal_lm(d_model=128, n_layers=2, n_heads=4, d_ff=256)``.

    Returns
    -------
    CausalLM
        Untrained; load ``weights/bytes_teacher.pt`` into it for the default
        (trained by ``examples/bytes.toml`` on the built-in byte corpus).
    """
    return causal_lm(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff)


def bytes_student(
    *, vocab_size: int = BYTE_VOCAB_SIZE, d_model: int = 48, n_layers: int = 1, n_heads: int = 2, d_ff: int = 96
) -> CausalLM:
    """The built-in byte-level student: ``causal_lm(d_model=48, n_layers=1, n_heads=2, d_ff=96)``.

    About a tenth of :func:`bytes_teacher`'s parameters.

    Returns
    -------
    CausalLM
        Untrained; load ``weights/bytes_student.pt`` into it for the default
        (distilled by ``examples/bytes.toml`` from the teacher).
    """
    return causal_lm(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff)
