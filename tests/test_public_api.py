"""The public API is exactly what the README documents."""

from __future__ import annotations

import re
from pathlib import Path

import distill_eval

README = Path(__file__).resolve().parents[1] / "README.md"


def test_all_is_exactly_the_documented_api() -> None:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    listed = section.split("Metrics are plain", 1)[0]
    documented = set(re.findall(r"`([A-Za-z_]+)`", listed)) - {"__all__", "run_check"}
    assert set(distill_eval.__all__) == documented
    for name in distill_eval.__all__:
        assert getattr(distill_eval, name) is not None


def test_importing_has_no_side_effects_on_torch_threads() -> None:
    import subprocess
    import sys

    code = "import torch; n = torch.get_num_threads(); import distill_eval; assert torch.get_num_threads() == n"
    subprocess.run([sys.executable, "-c", code], check=True)
