"""Hooks a ``conftest.py`` may implement to load models or datasets itself.

Example, for a model that needs custom loading code::

    # conftest.py
    def pytest_distill_load_model(name, spec, config):
        if name == "teacher":
            return build_my_teacher(spec.table["options"]["checkpoint"])
        return None  # let distill_eval load the others

Extra keys for a hook go under ``options`` in the model's or dataset's table.
"""

from __future__ import annotations

from typing import Any

import pluggy
import pytest

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_distill_load_model(name: str, spec: Any, config: pytest.Config) -> Any:
    """Load model ``name`` yourself, or return None to let distill_eval load it.

    Parameters
    ----------
    name : str
        The model's name in ``[tool.distill_eval.models]``.
    spec : distill_eval.ModelSpec
        Its table, parsed (``spec.table`` is the table as written).
    config : pytest.Config
        The pytest config.

    Returns
    -------
    object or None
        A ``torch.nn.Module``, an object with ``predict_logits(x)``, a
        scikit-learn estimator with ``predict_proba``, or None.

    Notes
    -----
    Cached outputs are keyed by the spec's files; a model with no ``path``
    or ``weights`` is keyed by its parameters after loading.
    """


@hookspec(firstresult=True)
def pytest_distill_load_dataset(name: str, spec: Any, config: pytest.Config) -> Any:
    """Load dataset ``name`` yourself, or return None to let distill_eval load it.

    Returns
    -------
    distill_eval.Dataset or None
    """
