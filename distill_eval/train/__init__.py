"""Training: the knowledge-distillation loss and a small zoo of reference architectures.

``kd_loss`` is the loss of SPEC section 7; :mod:`distill_eval.train.zoo` holds the
factories of the built-in default models, and ``python -m distill_eval.train.builtin``
rebuilds their weights in ``distill_eval/train/weights/``.
"""

from __future__ import annotations

from distill_eval.train.loss import kd_loss

__all__ = ["kd_loss"]
