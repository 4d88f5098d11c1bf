"""The Hinton knowledge-distillation loss (``distill-eval docs trainer``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["kd_loss"]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    r"""Mix cross-entropy on the labels with a KL term towards the teacher's soft targets.

    .. math::

        L = (1 - \alpha)\,\mathrm{CE}(s, y)
            + \alpha\,T^2\,\frac{1}{n}\sum_{i=1}^{n}\sum_{c=1}^{K}
              p_{ic}\,(\log p_{ic} - \log q_{ic}),
        \qquad p = \mathrm{softmax}(t / T),\; q = \mathrm{softmax}(s / T)

    The KL term is ``KL(p || q)`` summed over classes and averaged over the
    batch ("batchmean"), not averaged over all ``n * K`` entries, which would
    make it ``K`` times too small. The ``T**2`` factor keeps the size of its
    gradients roughly independent of ``T`` (Hinton et al., 2015). Both terms
    are computed in float32 from ``log_softmax``; the teacher's logits are
    detached, so no gradient reaches the teacher.

    Parameters
    ----------
    student_logits : tensor of shape (n_samples, n_classes)
        Unnormalised scores of the student.
    teacher_logits : tensor of shape (n_samples, n_classes)
        Unnormalised scores of the teacher for the same examples.
    labels : tensor of shape (n_samples,)
        Integer class labels in ``[0, n_classes)``.
    temperature : float
        Softmax temperature ``T > 0`` of the soft targets.
    alpha : float
        Weight in ``[0, 1]`` of the teacher's soft targets; ``0`` is plain
        cross-entropy, ``1`` is pure distillation.

    Returns
    -------
    tensor of shape ()
        The loss, float32.

    Raises
    ------
    ValueError
        When ``temperature`` or ``alpha`` is out of range or the shapes disagree.

    Examples
    --------
    >>> s, t = torch.zeros(2, 3), torch.zeros(2, 3)
    >>> float(kd_loss(s, t, torch.tensor([0, 1]), temperature=4.0, alpha=1.0))
    0.0
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if student_logits.ndim != 2:
        raise ValueError(
            f"student_logits must be 2-D of shape (n_samples, n_classes), got shape {tuple(student_logits.shape)}"
        )
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits has shape {tuple(teacher_logits.shape)} but student_logits has shape "
            f"{tuple(student_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({student_logits.shape[0]},) to match the logits, got shape {tuple(labels.shape)}"
        )

    # float32 even under autocast / half-precision models: the log-ratio cancels badly in fp16.
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    ce = F.cross_entropy(student, labels)
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl
