"""Reports: results.json, summary.md and report.html from one results document.

The document (:func:`distill_eval.results.build_results`) is the single source:
the Markdown and HTML renderers only read it, so ``distill-eval report`` can
re-render a report from a stored results.json. report.html is laid out from a
:class:`~distill_eval.report.data.ReportData` built from that document, with
charts from :mod:`~distill_eval.report.svg`; what the charts need beyond the
metrics, the check kinds record as compact extras (:mod:`~distill_eval.report.extras`).

The check kinds import :mod:`~distill_eval.report.extras`, so this package
imports :mod:`distill_eval.results` (which imports the checks) only when writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_eval._io import atomic_write
from distill_eval.errors import DistillError
from distill_eval.report.data import ReportData, build_report_data
from distill_eval.report.html import render_html
from distill_eval.report.markdown import render_summary

if TYPE_CHECKING:
    from distill_eval.session import DistillSession

__all__ = ["ReportData", "build_report_data", "render_html", "render_summary", "write_reports"]


def write_reports(session: DistillSession, *, command: list[str] | None = None) -> dict[str, Path]:
    """Write results.json, summary.md and report.html into the session's reports folder.

    Returns
    -------
    dict of str to Path
        Each written file by name.
    """
    from distill_eval.results import build_results  # not at import: results -> checks -> report.extras

    doc = build_results(
        session.results,
        models=session.model_provenance(),
        datasets=session.dataset_provenance(),
        command=command,
        root=session.project.rootdir,
        device=_device(session),
        deselected=session.deselected,
    )
    return write_documents(doc, Path(session.project.reports))


def _device(session: DistillSession) -> str | None:
    try:
        return session.device
    except DistillError:  # a device that cannot be resolved must not cost the report
        return None


def write_documents(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write the three report files for a results document."""
    from distill_eval.results import write_json

    paths = {name: folder / name for name in ("results.json", "summary.md", "report.html")}
    write_json(paths["results.json"], doc)
    atomic_write(paths["summary.md"], render_summary(doc).encode())
    atomic_write(paths["report.html"], render_html(doc).encode())
    return paths
