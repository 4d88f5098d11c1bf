"""distill_eval: a pytest plugin that tells whether a distilled student may replace its teacher.

Run ``pytest --distill``; see the README for configuration and suite files.
The names below are the public Python API; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
