"""Shared fixtures: a small seeded torch model, saved in the formats users ship."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill_eval.models import torchscript_deprecation_ignored
from distill_eval.train.zoo import digits_student


@dataclass(frozen=True)
class SavedModels:
    """One module and its serialised copies (shared by the session: copy a file before changing it).

    ``factory`` and ``kwargs`` rebuild the module's architecture through a ModelSpec.
    """

    module: torch.nn.Module
    x: np.ndarray
    torchscript: Path
    traced: Path
    exported: Path
    state_dict: Path
    factory: str = "distill_eval.train.zoo:digits_student"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"hidden": [8]})

    def reference(self, x: np.ndarray | None = None) -> np.ndarray:
        """The original module called directly on all rows at once."""
        with torch.no_grad():
            return self.module(torch.from_numpy(self.x if x is None else x)).numpy()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: kind to a shared machine, and the same float order in every run of a test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> SavedModels:
    """A 64 -> 8 -> 10 MLP with seeded weights, as TorchScript (scripted, traced), .pt2 and a state dict."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    module = digits_student(hidden=(8,)).eval()
    with torchscript_deprecation_ignored():  # making the files is not under test
        torch.jit.script(module).save(str(folder / "scripted.pt"))
        torch.jit.trace(module, torch.zeros(2, 64)).save(str(folder / "traced.pt"))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (torch.zeros(4, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "exported.pt2"))
    torch.save(module.state_dict(), folder / "state.pt")
    return SavedModels(
        module=module,
        x=np.random.default_rng(0).random((37, 64), dtype=np.float32),
        torchscript=folder / "scripted.pt",
        traced=folder / "traced.pt",
        exported=folder / "exported.pt2",
        state_dict=folder / "state.pt",
    )
