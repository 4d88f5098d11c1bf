"""report.html: one self-contained page (no network, no external assets, no scripts).

The page is rendered from :class:`~distill_eval.report.data.ReportData`, which is
built from the results document alone. Jinja2 autoescapes every string; the only
markup passed through unescaped is the SVG made by :mod:`distill_eval.report.svg`,
which escapes the text it draws itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from distill_eval.report.data import build_report_data

#: no scripts, no network: inline styles and data: images only
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("distill_eval.report", "templates"),
        autoescape=True,  # every user string (suite, check, slice names, ids, paths) is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(doc: dict[str, Any]) -> str:
    """Render a results document as a self-contained HTML page.

    Parameters
    ----------
    doc : dict
        A results document (the content of results.json).
    """
    data = build_report_data(doc)
    return (
        _environment().get_template("report.html.j2").render(data=data, csp=Markup(CONTENT_SECURITY_POLICY))
    )  # our constant
