"""Small reference architectures, as factories returning ``nn.Module``.

Every factory is callable with no arguments (the built-in defaults) and takes
keyword arguments to change sizes. The modules start with ``nn.Flatten``, so
they accept digits as flat rows of shape (batch, 64) or as images of shape
(batch, 8, 8), and they return logits of shape (batch, n_classes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

__all__ = ["digits_student", "digits_teacher", "mlp"]


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
