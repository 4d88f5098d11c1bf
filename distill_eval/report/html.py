"""report.html: one self-contained page (no network, no external assets)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

from distill_eval.checks.judge import format_number


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("distill_eval.report", "templates"),
        autoescape=True,  # every user string (suite, check, slice names, ids) is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    return env


def render_html(doc: dict[str, Any]) -> str:
    """Render a results document as a self-contained HTML page.

    Parameters
    ----------
    doc : dict
        A results document (the content of results.json).
    """
    return _environment().get_template("report.html.j2").render(doc=doc)
