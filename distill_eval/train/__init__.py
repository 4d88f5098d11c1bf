"""Training: the knowledge-distillation loss, the reference trainer and a small zoo of architectures.

- :func:`kd_loss` is the documented distillation loss (``distill-eval docs trainer``), and :func:`distillation_loss`
  the same with the teacher's errors filtered out;
- :func:`load_train_config` reads a training config into a :class:`TrainConfig`,
  and :func:`train` runs it (``distill-eval train CONFIG.toml``), writing the
  student, an optional label-only control, ``manifest.json`` and a checkpoint;
- :mod:`distill_eval.train.zoo` holds the factories of the built-in default
  models (the digits classifiers and the byte-level language models), and
  ``python -m distill_eval.train.builtin [--bytes]`` rebuilds their weights
  in ``distill_eval/train/weights/``.

Example configs: ``distill_eval/train/examples/digits.toml`` (classification) and
``distill_eval/train/examples/bytes.toml`` (language models on token data: the masked token
loss :func:`distill_eval.lm.loss.token_kd_loss`).
"""

from __future__ import annotations

from distill_eval.train.config import AugmentOptions, DistillOptions, OutputOptions, TrainConfig, load_train_config
from distill_eval.train.loss import kd_loss
from distill_eval.train.trainer import TrainCallback, TrainResult, distillation_loss, train

__all__ = [
    "AugmentOptions",
    "DistillOptions",
    "OutputOptions",
    "TrainCallback",
    "TrainConfig",
    "TrainResult",
    "distillation_loss",
    "kd_loss",
    "load_train_config",
    "train",
]
