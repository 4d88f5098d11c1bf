"""The accepted baseline: a stored results.json that kind ``regression`` compares with.

``pytest --distill --distill-accept`` stores the run's results document (the
same one written to ``reports/results.json``) at the project's ``baseline``
path, default ``reports/baseline.json``; a ``regression`` check in stored mode
reads it back with :func:`read_baseline` and picks the accepted student's
stored metrics with :func:`find_check`. Nothing here runs a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_eval.errors import CheckError
from distill_eval.results import SCHEMA, CheckResult, write_json

__all__ = ["ACCEPT_COMMAND", "Acceptance", "accept", "find_check", "missing_baseline_message", "read_baseline"]

#: how a user creates (or replaces) the accepted baseline
ACCEPT_COMMAND = "pytest --distill --distill-accept"
_MISSING = "no accepted baseline at "


def shown(path: Path, base: Path | None = None) -> str:
    """``path`` relative to ``base`` (default: the working directory) when inside it."""
    try:
        return str(Path(path).relative_to(base or Path.cwd()))
    except ValueError:
        return str(path)


def missing_baseline_message(path: Path) -> str:
    """The error for a project without an accepted baseline: where it was looked for, how to create it."""
    return f"{_MISSING}{shown(path)}; run `{ACCEPT_COMMAND}` on the accepted student to create it"


def read_baseline(path: Path, *, accepted: bool = True) -> dict[str, Any]:
    """Read and validate a stored results document.

    Parameters
    ----------
    path : Path
        A results.json written by distill_eval (schema :data:`~distill_eval.results.SCHEMA`).
    accepted : bool, default=True
        Whether ``path`` is the project's accepted baseline (what ``--distill-accept``
        writes) rather than a file a suite names with ``baseline_results``; only changes
        what the error messages advise.

    Returns
    -------
    dict
        The document, with a ``suites`` list.

    Raises
    ------
    CheckError
        When the file is missing, unreadable, not JSON, or of another schema; the
        message says how to create a usable one.
    """
    path = Path(path)
    redo = (
        f"re-create it with `{ACCEPT_COMMAND}` on the accepted student"
        if accepted
        else "point 'baseline_results' at a results.json written by `pytest --distill`"
    )
    if not path.is_file():
        if accepted:
            raise CheckError(missing_baseline_message(path))
        raise CheckError(
            f"no baseline results at {shown(path)} (named by 'baseline_results'); point it at a results.json "
            f"written by `pytest --distill`, or leave it out to compare with the baseline `{ACCEPT_COMMAND}` stores"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckError(f"cannot read the baseline {shown(path)}: {e}; {redo}") from None
    if not isinstance(doc, Mapping) or "schema" not in doc:
        raise CheckError(f"the baseline {shown(path)} is not a distill_eval results.json (no 'schema' key); {redo}")
    if doc["schema"] != SCHEMA:
        raise CheckError(
            f"the baseline {shown(path)} has results schema {doc['schema']!r}, but this version of distill_eval "
            f"reads schema {SCHEMA}; {redo}"
        )
    suites = doc.get("suites")
    if not isinstance(suites, list) or not all(
        isinstance(s, Mapping) and isinstance(s.get("checks"), list) for s in suites
    ):
        raise CheckError(f"the baseline {shown(path)} has no valid 'suites' list (schema {SCHEMA}); {redo}")
    return dict(doc)


def find_check(
    doc: Mapping[str, Any], suite: str, kind: str, *, metric: str, dataset: str, student: str
) -> dict[str, Any] | None:
    """The stored check of ``kind`` in suite ``suite`` that measured ``metric`` on ``dataset``.

    Checks that errored or left ``metric`` undefined are skipped; among the rest, one whose
    student has the name ``student`` is preferred, else the first in file order.
    """
    found = []
    for s in doc.get("suites", []):
        if s.get("name") != suite:
            continue
        for check in s.get("checks", []):
            if not isinstance(check, Mapping) or check.get("kind") != kind or check.get("dataset", dataset) != dataset:
                continue
            value = (check.get("metrics") or {}).get(metric)
            if isinstance(value, Mapping) and isinstance(value.get("value"), int | float):
                found.append(check)
    preferred = [c for c in found if (c.get("models") or {}).get("student") == student]
    return dict((preferred or found)[0]) if found else None


# -- accepting a run --------------------------------------------------------------


def _waiting_for_baseline(result: CheckResult) -> bool:
    """A stored-mode regression check that errored only because no baseline exists yet."""
    return result.kind == "regression" and result.outcome == "error" and result.message.startswith(_MISSING)


@dataclass(frozen=True)
class Acceptance:
    """What ``--distill-accept`` did: wrote the baseline, or refused and why (checks as ``suite::id``)."""

    path: Path
    written: bool
    errored: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()

    def describe(self, base: Path | None = None) -> str:
        """One terminal line."""
        where = shown(self.path, base)
        if not self.written:
            return (
                f"--distill-accept refused: {len(self.errored)} check(s) errored ({', '.join(self.errored)}); "
                f"the baseline {where} was not written"
            )
        line = f"baseline accepted: this run's results stored in {where}"
        if self.failed:
            line += f", although {len(self.failed)} check(s) failed ({', '.join(self.failed)})"
        if self.waiting:
            line += f"; {', '.join(self.waiting)} had no baseline to compare with yet (rerun to compare)"
        return line


def accept(results: Iterable[CheckResult], results_file: Path, path: Path) -> Acceptance:
    """Store the run's results document as the accepted baseline, unless a check errored.

    Parameters
    ----------
    results : iterable of CheckResult
        Every check result of the run.
    results_file : Path
        The results.json this run wrote; its document is stored unchanged.
    path : Path
        The baseline to write (atomically).

    Returns
    -------
    Acceptance
        ``written`` is False when a check errored: an error means something was not
        measured, so the run cannot become the reference. A regression check that
        errored only because no baseline existed yet does not block the run that
        creates it. Failed checks do not block: accepting is the user's decision.
    """
    results = list(results)

    def named(keep) -> tuple[str, ...]:
        return tuple(f"{r.suite}::{r.id}" for r in results if keep(r))

    errored = named(lambda r: r.outcome == "error" and not _waiting_for_baseline(r))
    if errored:
        return Acceptance(Path(path), False, errored=errored)
    doc = json.loads(Path(results_file).read_text(encoding="utf-8"))
    write_json(Path(path), doc)
    return Acceptance(
        Path(path), True, failed=named(lambda r: r.outcome == "failed"), waiting=named(_waiting_for_baseline)
    )
