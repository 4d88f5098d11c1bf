"""Reports: results.json, summary.md and report.html from one results document.

The document (:func:`distill_eval.results.build_results`) is the single source:
the Markdown and HTML renderers only read it, so ``distill-eval report`` can
re-render a report from a stored results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_eval._io import atomic_write
from distill_eval.report.html import render_html
from distill_eval.report.markdown import render_summary
from distill_eval.results import build_results, write_json

if TYPE_CHECKING:
    from distill_eval.session import DistillSession

__all__ = ["render_html", "render_summary", "write_reports"]


def write_reports(session: DistillSession, *, command: list[str] | None = None) -> dict[str, Path]:
    """Write results.json, summary.md and report.html into the session's reports folder.

    Returns
    -------
    dict of str to Path
        Each written file by name.
    """
    doc = build_results(
        session.results,
        models=session.model_provenance(),
        datasets=session.dataset_provenance(),
        command=command,
    )
    return write_documents(doc, Path(session.project.reports))


def write_documents(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write the three report files for a results document."""
    paths = {name: folder / name for name in ("results.json", "summary.md", "report.html")}
    write_json(paths["results.json"], doc)
    atomic_write(paths["summary.md"], render_summary(doc).encode())
    atomic_write(paths["report.html"], render_html(doc).encode())
    return paths
