"""The ``distill-eval`` command.

Subcommands:

- ``distill-eval report RESULTS.json [-o report.html]`` — re-render the HTML
  report (and, with ``--summary``, summary.md) from stored results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from distill_eval import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-eval",
        description="Tell whether a distilled student may replace its teacher. "
        "The gate itself runs under pytest: `pytest --distill`.",
    )
    parser.add_argument("--version", action="version", version=f"distill-eval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    report = sub.add_parser(
        "report",
        help="re-render report.html from a results.json",
        description="Re-render report.html (and optionally summary.md) from a stored results.json.",
    )
    report.add_argument("results", type=Path, metavar="RESULTS.json", help="a results.json written by pytest --distill")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to write the HTML (default: report.html next to RESULTS.json)",
    )
    report.add_argument(
        "--summary",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the Markdown summary to PATH (default: not written)",
    )
    return parser


def _report(args: argparse.Namespace) -> int:
    from distill_eval._io import atomic_write
    from distill_eval.report import render_html, render_summary

    try:
        doc = json.loads(args.results.read_text())
    except FileNotFoundError:
        print(f"distill-eval report: {args.results}: file not found", file=sys.stderr)
        return 2
    except json.JSONDecodeError as e:
        print(f"distill-eval report: {args.results}: not valid JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict) or doc.get("schema") != 1:
        print(f"distill-eval report: {args.results}: not a distill_eval results.json (schema 1)", file=sys.stderr)
        return 2
    output = args.output or args.results.with_name("report.html")
    atomic_write(output, render_html(doc).encode())
    print(f"wrote {output}")
    if args.summary:
        atomic_write(args.summary, render_summary(doc).encode())
        print(f"wrote {args.summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
