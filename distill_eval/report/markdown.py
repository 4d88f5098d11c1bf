"""summary.md: one Markdown table of every check, for a pull-request comment."""

from __future__ import annotations

from typing import Any

from distill_eval.checks.judge import format_number

_ICONS = {"passed": "✅", "failed": "❌", "warned": "⚠️", "error": "💥"}


def escape_md(text: object) -> str:
    """Escape text for a Markdown table cell (pipes, HTML, line breaks)."""
    s = str(text)
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("\n", " "), ("`", "\\`")):
        s = s.replace(a, b)
    return s


def _bounded(check: dict[str, Any]) -> str:
    parts = []
    for b in check.get("bounds", []):
        if b["value"] is None:
            continue
        ci = f" [{format_number(b['ci'][0])}, {format_number(b['ci'][1])}]" if b.get("ci") else ""
        where = f" ({escape_md(b['slice'])})" if b.get("slice") is not None else ""
        rel = ">=" if b["op"] == "min" else "<="
        mark = "" if b["ok"] else " ✗"
        parts.append(
            f"{b['metric']}{where} = {format_number(b['value'])}{ci} ({rel} {format_number(b['bound'])}){mark}"
        )
    return "; ".join(parts) if parts else "—"


def render_summary(doc: dict[str, Any]) -> str:
    """The summary table as Markdown.

    Parameters
    ----------
    doc : dict
        A results document (the content of results.json).
    """
    from distill_eval.results import partial_note  # not at import: results -> checks -> report.extras

    counts = doc.get("counts", {})
    verdict = doc["verdict"]
    lines = [
        f"## distill_eval: {_ICONS.get(verdict, '')} {verdict}",
        "",
        ", ".join(f"{counts.get(o, 0)} {o}" for o in ("passed", "failed", "warned", "error")),
        "",
    ]
    partial = partial_note(doc)
    if partial:
        lines += [f"**{escape_md(partial[0].upper() + partial[1:])}**", ""]
    lines += [
        "| suite | check | kind | outcome | bounded metrics | gate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for suite in doc["suites"]:
        for check in suite["checks"]:
            outcome = f"{_ICONS.get(check['outcome'], '')} {check['outcome']}"
            lines.append(
                f"| {escape_md(suite['name'])} | {escape_md(check['id'])} | {check['kind']} | {outcome} "
                f"| {_bounded(check)} | {check.get('gate') or suite['gate']} |"
            )
    problems = [(s, c) for s in doc["suites"] for c in s["checks"] if c["outcome"] in ("failed", "error", "warned")]
    if problems:
        lines += ["", "**Details**", ""]
        for suite, check in problems:
            lines.append(
                f"- `{escape_md(suite['name'])}::{escape_md(check['id'])}` ({check['outcome']}): "
                f"{escape_md(check['message'])}"
            )
    return "\n".join(lines) + "\n"
