r"""Masked token-level distillation losses for language models.

:func:`token_kd_loss` mixes cross-entropy on the labels with a divergence between the
teacher's and the student's next-token distributions, on every scored token:

.. math::

    L = \frac{1}{N} \sum_{t \in \text{scored}}
        (1 - \alpha)\, \mathrm{CE}_t + \alpha\, T^2\, D(p_t, q_t),
    \qquad p = \mathrm{softmax}(z_T / T),\; q = \mathrm{softmax}(z_S / T)

with ``D`` one of

``"forward_kl"``
    ``KL(p || q) = sum p (log p - log q)``: the true KL, the teacher's entropy included (zero
    when the student matches the teacher; torchtune's "ForwardKLLoss" is the cross-entropy
    ``-sum p log q``, which is not).
``"reverse_kl"``
    ``KL(q || p)``.
``"jsd"``
    The generalised Jensen-Shannon divergence of TRL's GKD trainer: with
    ``m = beta p + (1 - beta) q``, ``beta KL(p || m) + (1 - beta) KL(q || m)``; at ``beta = 0``
    it is ``KL(p || q)`` and at ``beta = 1`` ``KL(q || p)``, as TRL defines them.

Labels follow the Hugging Face *unshifted* convention: the logits at position ``t`` score
``labels[t + 1]``, and ``-100`` is not scored (with an attention mask, both positions must
also be attended, as :func:`distill_eval.lm.tokens.scored_positions` says).

**Normalisation.** ``N`` is ``num_valid_tokens``: the number of scored tokens in the *whole*
optimisation step, across gradient-accumulation micro-batches and data-parallel ranks
(:func:`count_valid_tokens` on each micro-batch, summed, then all-reduced). The losses of the
micro-batches then add up to the loss of the full batch, and so do their gradients. Dividing
each micro-batch by its own count instead (TRL issue #4719) weighs the tokens of short
micro-batches more. Under DistributedDataParallel, which *averages* gradients over ranks,
multiply each rank's loss by the world size.

**Memory.** Logits of shape ``(batch, length, vocab)`` are never upcast as a whole: the
scored tokens are taken a chunk at a time, upcast to float32 (float64 stays float64), and
reduced; the gradient with respect to the student's logits is computed in the same pass and
kept in the logits' own dtype, so backward costs no second pass and holds one array the size
of the student's logits (what autograd would allocate anyway). The teacher gets no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from distill_eval._suggest import did_you_mean, one_of
from distill_eval.lm.tokens import IGNORE_INDEX, scored_positions

__all__ = ["DIVERGENCES", "count_valid_tokens", "token_kd_loss"]

#: the divergences :func:`token_kd_loss` knows
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")

#: elements of one float32 chunk array: 2 MiB on the CPU (a chunk's passes stay in cache);
#: 64 MiB on an accelerator, where fewer, larger kernels win
_CHUNK_ELEMENTS_CPU = 1 << 19
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24


def count_valid_tokens(labels: Any, attention_mask: Any = None) -> int:
    """The number of scored tokens of a batch, in the unshifted convention.

    Sum it over the micro-batches of one optimisation step (and all-reduce it over ranks) to get
    the ``num_valid_tokens`` of :func:`token_kd_loss`.

    Parameters
    ----------
    labels : tensor or array of int, shape (batch, length)
        Unshifted labels, ``-100`` where not scored.
    attention_mask : tensor or array of shape (batch, length), optional
        1 for real tokens; default all attended.

    Returns
    -------
    int
        How many positions ``t`` have ``labels[t + 1] != -100`` (and ``t``, ``t + 1`` attended).
    """
    labels_np = _numpy(labels)
    if labels_np.ndim != 2:
        raise ValueError(f"labels must have shape (batch, length), got {labels_np.shape}")
    mask_np = np.ones_like(labels_np) if attention_mask is None else _numpy(attention_mask)
    if mask_np.shape != labels_np.shape:
        raise ValueError(f"attention_mask has shape {mask_np.shape} but labels has shape {labels_np.shape}")
    return int(scored_positions(labels_np, mask_np).sum())


def token_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    num_valid_tokens: int | float | torch.Tensor | None = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    r"""Masked token distillation loss: ``(1 - alpha) CE + alpha T^2 D``, summed over scored tokens, over ``N``.

    Parameters
    ----------
    student_logits : tensor of shape (batch, length, vocab_padded)
        The student's raw logits (any float dtype); the gradient flows to it.
    teacher_logits : tensor of shape (batch, length, vocab_padded_teacher)
        The teacher's raw logits for the same inputs; detached.
    labels : tensor of int, shape (batch, length)
        Unshifted labels: the logits at ``t`` score ``labels[t + 1]``; ``-100`` is not scored.
    attention_mask : tensor of shape (batch, length), optional
        When given, a position is scored only if it and the next one are attended.
    num_valid_tokens : int or tensor, optional
        ``N``: scored tokens in the whole step (all micro-batches, all ranks), at least this
        batch's count; default this batch's count (:func:`count_valid_tokens`).
    divergence : {"forward_kl", "reverse_kl", "jsd"}, default "forward_kl"
        ``D``; see the module docstring.
    temperature : float, default 1.0
        ``T > 0``, applied to both models' logits for ``D`` (the cross-entropy uses ``T = 1``).
        The ``T^2`` factor keeps the gradient's size roughly independent of ``T``; at ``T = 1``
        ``"jsd"`` is exactly TRL's ``generalized_jsd_loss``.
    alpha : float, default 0.5
        Weight in ``[0, 1]`` of the divergence; ``0`` is plain cross-entropy, ``1`` pure distillation.
    beta : float, default 0.5
        The ``beta`` in ``[0, 1]`` of ``"jsd"`` (ignored by the other divergences).
    vocab_size : int, optional
        The true vocabulary size: logits past it (a padded output head) are ignored and get a
        zero gradient. Default: the logits' width, which must then be the same for both models.
    chunk_tokens : int, optional
        Scored tokens upcast and reduced at once; default about ``2**19 / vocab`` on the CPU
        and ``2**24 / vocab`` on an accelerator. The result does not depend on it beyond rounding.

    Returns
    -------
    tensor of shape ()
        The loss, float32 (float64 for float64 logits). A batch without a scored token gives 0.

    Raises
    ------
    ValueError
        When an option is out of range, the shapes disagree, a scored label is outside the
        vocabulary, or ``num_valid_tokens`` is smaller than this batch's count.

    Examples
    --------
    >>> s = torch.zeros(1, 3, 5, requires_grad=True)
    >>> labels = torch.tensor([[-100, 1, 2]])
    >>> loss = token_kd_loss(s, torch.zeros(1, 3, 5), labels, alpha=1.0)
    >>> loss.backward()
    >>> float(loss.detach()), count_valid_tokens(labels), float(s.grad.abs().sum())
    (0.0, 2, 0.0)
    """
    kind = _check_options(divergence, temperature, alpha, beta)
    if student_logits.ndim != 3:
        raise ValueError(
            f"student_logits must have shape (batch, length, vocab), got shape {tuple(student_logits.shape)}"
        )
    if teacher_logits.shape[:2] != student_logits.shape[:2] or teacher_logits.ndim != 3:
        raise ValueError(
            f"teacher_logits has shape {tuple(teacher_logits.shape)} but student_logits has shape "
            f"{tuple(student_logits.shape)}; they must agree on (batch, length)"
        )
    if tuple(labels.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(
            f"labels must have shape {tuple(student_logits.shape[:2])} to match the logits, got {tuple(labels.shape)}"
        )
    if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
        raise ValueError(f"logits must be floating point, got {student_logits.dtype} and {teacher_logits.dtype}")
    vocab = _vocab(vocab_size, int(student_logits.shape[2]), int(teacher_logits.shape[2]))

    labels_np = _numpy(labels).astype(np.int64, copy=False)
    mask_np = np.ones_like(labels_np) if attention_mask is None else _numpy(attention_mask)
    if mask_np.shape != labels_np.shape:
        raise ValueError(f"attention_mask has shape {mask_np.shape} but labels has shape {labels_np.shape}")
    rows, cols = np.nonzero(scored_positions(labels_np, mask_np))
    targets = labels_np[rows, cols + 1]
    bad = (targets < 0) | (targets >= vocab)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"label {int(targets[i])} at (sequence {int(rows[i])}, position {int(cols[i]) + 1}) is outside the "
            f"vocabulary of {vocab} tokens (use {IGNORE_INDEX} for a token that is not scored)"
        )
    n = _num_valid(num_valid_tokens, targets.size)
    if chunk_tokens is None:
        per_chunk = _CHUNK_ELEMENTS_CPU if student_logits.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
        chunk = max(1, per_chunk // vocab)
    elif isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    else:
        chunk = chunk_tokens
    flat = torch.from_numpy(rows * labels_np.shape[1] + cols).to(student_logits.device)
    y = torch.from_numpy(targets).to(student_logits.device)
    options = (kind, float(temperature), float(alpha), float(beta), vocab, chunk, n)
    return _TokenKD.apply(student_logits, teacher_logits.detach(), flat, y, options)


class _TokenKD(torch.autograd.Function):
    """The loss and, in the same chunked pass, its gradient with respect to the student's logits."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, flat: Any, y: Any, options: tuple) -> Any:
        kind, temperature, alpha, beta, vocab, chunk, n = options
        dtype = torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else torch.float32
        want_grad = ctx.needs_input_grad[0]
        s_flat = student.reshape(-1, student.shape[2])
        t_flat = teacher.reshape(-1, teacher.shape[2])
        grad = torch.zeros_like(s_flat) if want_grad else None
        total = torch.zeros((), dtype=dtype, device=student.device)
        for start in range(0, int(flat.numel()), chunk):
            index = flat[start : start + chunk]
            z = s_flat[:, :vocab].index_select(0, index).to(dtype)
            t = t_flat[:, :vocab].index_select(0, index).to(dtype)
            loss, dz = _chunk(z, t, y[start : start + chunk], kind, temperature, alpha, beta, want_grad)
            total += loss.sum()
            if grad is not None:
                grad[index, :vocab] = (dz / n).to(grad.dtype)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        ctx.shape = student.shape
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).reshape(ctx.shape), None, None, None, None


def _chunk(
    z: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    temperature: float,
    alpha: float,
    beta: float,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token loss of a chunk, and its gradient with respect to the student's logits ``z``.

    With ``s = z / T`` and ``q = softmax(s)``: forward KL has ``dD/ds = q - p``; a divergence
    ``D(q)`` whose derivative in ``q`` is ``g`` (reverse KL: ``log q - log p + 1``; JSD(beta):
    ``(1 - beta) log(q / m)``) has ``dD/ds = q (g - sum q g)``; cross-entropy has
    ``softmax(z) - onehot(y)``. Terms with a zero probability count as 0 (``0 log 0 = 0``).
    """
    zero = z.new_zeros(())
    loss = z.new_zeros(z.shape[0])
    dz = torch.zeros_like(z) if want_grad else None
    if alpha < 1.0:
        lq1 = torch.log_softmax(z, dim=1)
        loss += (1.0 - alpha) * -lq1.gather(1, y[:, None])[:, 0]
        if dz is not None:
            dz += (1.0 - alpha) * lq1.exp_().scatter_add_(1, y[:, None], -torch.ones_like(lq1[:, :1]))
        del lq1
    if alpha > 0.0:
        lq = torch.log_softmax(z / temperature if temperature != 1.0 else z, dim=1)
        lp = torch.log_softmax(t / temperature if temperature != 1.0 else t, dim=1)
        p, q = lp.exp(), lq.exp()
        if kind == "jsd" and beta == 0.0:
            kind = "forward_kl"
        elif kind == "jsd" and beta == 1.0:
            kind = "reverse_kl"
        if kind == "forward_kl":
            d = torch.where(p > 0, p * (lp - lq), zero).sum(dim=1)
            ds = q - p if dz is not None else None
        else:
            if kind == "reverse_kl":
                g = lq - lp
                d = torch.where(q > 0, q * g, zero).sum(dim=1)
            else:
                lm = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
                d = beta * torch.where(p > 0, p * (lp - lm), zero).sum(dim=1) + (1.0 - beta) * torch.where(
                    q > 0, q * (lq - lm), zero
                ).sum(dim=1)
                g = (1.0 - beta) * (lq - lm)
            if dz is not None:
                qg = torch.where(q > 0, q * g, zero)
                ds = qg - q * qg.sum(dim=1, keepdim=True)
        scale = alpha * temperature * temperature
        loss += scale * d
        if dz is not None:
            dz += (scale / temperature) * ds  # ds/dz = 1/T
    return loss, dz


def _check_options(divergence: str, temperature: float, alpha: float, beta: float) -> str:
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"divergence must be {one_of(DIVERGENCES)}, got {divergence!r}{did_you_mean(str(divergence), DIVERGENCES)}"
        )
    for name, value, low, high in (("alpha", alpha, 0.0, 1.0), ("beta", beta, 0.0, 1.0)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return divergence


def _vocab(vocab_size: int | None, student: int, teacher: int) -> int:
    if vocab_size is None:
        if student != teacher:
            raise ValueError(
                f"the student outputs {student} logits per token and the teacher {teacher}: pass vocab_size, the "
                "true vocabulary size both share (a padded output head is sliced to it)"
            )
        return student
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    if vocab_size > min(student, teacher):
        raise ValueError(
            f"vocab_size = {vocab_size} but the student outputs {student} logits per token and the teacher {teacher}"
        )
    return vocab_size


def _num_valid(value: int | float | torch.Tensor | None, local: int) -> float:
    if value is None:
        return float(max(local, 1))
    n = float(value.item() if isinstance(value, torch.Tensor) else value)
    if not math.isfinite(n) or n < local:
        raise ValueError(
            f"num_valid_tokens = {n:g} is less than the {local} scored tokens of this batch; pass the count over "
            "every micro-batch and rank of the step (count_valid_tokens, summed)"
        )
    return n if n > 0 else 1.0


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
