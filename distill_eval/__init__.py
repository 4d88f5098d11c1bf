"""distill_eval: a pytest plugin that tells whether a distilled student may replace its teacher.

Run ``pytest --distill``; see the README for configuration and suite files.
The names below are the public Python API; everything else is internal.

Every pytest run imports this package (the plugin is registered through the
``pytest11`` entry point), with or without ``--distill``. So the public names
are imported on first use (PEP 562), not here: ``import distill_eval`` loads
neither numpy nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: each public name (``__all__`` but ``__version__``) and the module that defines it
_EXPORTS = {
    "CheckError": "distill_eval.errors",
    "CheckResult": "distill_eval.results",
    "CheckSpec": "distill_eval.suite",
    "ConfigError": "distill_eval.errors",
    "DataError": "distill_eval.errors",
    "Dataset": "distill_eval.data",
    "DatasetSpec": "distill_eval.config",
    "DistillError": "distill_eval.errors",
    "DistillSession": "distill_eval.session",
    "DistillWarning": "distill_eval.errors",
    "ExpressionError": "distill_eval.errors",
    "Model": "distill_eval.models",
    "ModelError": "distill_eval.errors",
    "ModelOutputs": "distill_eval.outputs",
    "ModelSpec": "distill_eval.config",
    "ProjectConfig": "distill_eval.config",
    "SuiteSpec": "distill_eval.suite",
    "load_dataset": "distill_eval.data",
    "load_model": "distill_eval.models",
    "load_project_config": "distill_eval.config",
    "load_suite": "distill_eval.suite",
}

__all__ = [
    "CheckError",
    "CheckResult",
    "CheckSpec",
    "ConfigError",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "DistillError",
    "DistillSession",
    "DistillWarning",
    "ExpressionError",
    "Model",
    "ModelError",
    "ModelOutputs",
    "ModelSpec",
    "ProjectConfig",
    "SuiteSpec",
    "__version__",
    "load_dataset",
    "load_model",
    "load_project_config",
    "load_suite",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # once imported, an ordinary attribute
        return value
    if not name.startswith("__"):
        # A submodule (``distill_eval.metrics``) stays reachable as an attribute, as when this file imported them all.
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'distill_eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from distill_eval.config import DatasetSpec, ModelSpec, ProjectConfig, load_project_config
    from distill_eval.data import Dataset, load_dataset
    from distill_eval.errors import (
        CheckError,
        ConfigError,
        DataError,
        DistillError,
        DistillWarning,
        ExpressionError,
        ModelError,
    )
    from distill_eval.models import Model, load_model
    from distill_eval.outputs import ModelOutputs
    from distill_eval.results import CheckResult
    from distill_eval.session import DistillSession
    from distill_eval.suite import CheckSpec, SuiteSpec, load_suite
