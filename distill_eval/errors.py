"""The one exception tree of distill_eval.

Every error a user can cause derives from :class:`DistillError` and reads as a
sentence that names the file, the key and what was expected::

    DistillError
    ├── ConfigError          a pyproject table, suite file, training config or option is wrong
    │   └── ExpressionError  a slice's `where` expression cannot be parsed or evaluated
    ├── DataError            a dataset cannot be read or is inconsistent
    ├── ModelError           a model cannot be loaded, or its outputs are unusable
    └── CheckError           a check cannot be computed on the data it was given

The pytest plugin turns a ``ConfigError`` raised while collecting into a
collection error, and any ``DistillError`` raised while a check runs into a
pytest *error* (never a failure, never a pass).
"""

from __future__ import annotations

__all__ = [
    "CheckError",
    "ConfigError",
    "DataError",
    "DistillError",
    "DistillWarning",
    "ExpressionError",
    "ModelError",
]


class DistillError(Exception):
    """Base class of every error distill_eval raises on purpose."""


class ConfigError(DistillError):
    """A configuration value is missing, unknown or of the wrong type.

    Parameters
    ----------
    message : str
        What is wrong and what was expected, as a sentence.
    file : str, optional
        The file the value was read from.
    where : str, optional
        The location inside the file, e.g. ``"check 'calibration'"`` or
        ``"[tool.distill_eval.models.teacher]"``.
    """

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None):
        self.message = message
        self.file = file
        self.where = where
        prefix = ": ".join(part for part in (file, where) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ExpressionError(ConfigError):
    """A ``where`` expression is malformed or refers to an unknown field."""


class DataError(DistillError):
    """A dataset cannot be loaded or fails a consistency check."""


class ModelError(DistillError):
    """A model cannot be loaded or produced unusable outputs."""


class CheckError(DistillError):
    """A check cannot be computed (e.g. empty data, a metric that is undefined)."""


class DistillWarning(UserWarning):
    """A check with ``severity = "warn"`` broke a bound, or a cache entry was unusable."""
