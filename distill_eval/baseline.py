"""The accepted baseline: a stored results.json that kind ``regression`` compares with.

``pytest --distill --distill-accept`` stores the run's results document (the
same one written to ``reports/results.json``) at the project's ``baseline``
path, default ``reports/baseline.json``; a ``regression`` check in stored mode
reads it back with :func:`read_baseline` and picks the accepted student's
stored metrics with :func:`find_check`. A ``regression`` check on token data compares per
sequence, so ``--distill-accept`` also stores the accepted student's per-sequence sums beside
the baseline (:func:`write_token_records`, ``baseline.tokens.npz``). Nothing here runs a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill_eval.errors import CheckError
from distill_eval.results import SCHEMA, CheckResult, write_json

__all__ = [
    "ACCEPT_COMMAND",
    "Acceptance",
    "accept",
    "find_check",
    "missing_baseline_message",
    "read_baseline",
    "read_token_record",
    "token_records_path",
    "write_token_records",
]

#: how a user creates (or replaces) the accepted baseline
ACCEPT_COMMAND = "pytest --distill --distill-accept"
_MISSING = "no accepted baseline at "
#: how a token regression's error begins when the baseline lacks its record (accepting stores one)
_MISSING_RECORD = "no per-sequence token record "


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
    return (
        result.kind == "regression"
        and result.outcome == "error"
        and result.message.startswith((_MISSING, _MISSING_RECORD))
    )


@dataclass(frozen=True)
class Acceptance:
    """What ``--distill-accept`` did: wrote the baseline, or refused and why (checks as ``suite::id``).

    ``kept`` are the baseline's stored checks a partial run kept (merged), ``conflicts`` the
    models or datasets that refused a merge, as sentences.
    """

    path: Path
    written: bool
    errored: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()

    def describe(self, base: Path | None = None) -> str:
        """One terminal line."""
        where = shown(self.path, base)
        if self.conflicts:
            return (
                f"--distill-accept refused: this run is partial, and the stored results of the baseline {where} "
                f"it would keep ({', '.join(self.kept)}) were measured with another "
                f"{'; another '.join(self.conflicts)}; run every check (without -k, -m or paths) to replace them. "
                "The baseline was not written"
            )
        if not self.written:
            return (
                f"--distill-accept refused: {len(self.errored)} check(s) errored ({', '.join(self.errored)}); "
                f"the baseline {where} was not written"
            )
        line = f"baseline accepted: this run's results stored in {where}"
        if self.kept:
            line += f", merged with its stored results of {len(self.kept)} check(s) not run ({', '.join(self.kept)})"
        if self.failed:
            line += f", although {len(self.failed)} check(s) failed ({', '.join(self.failed)})"
        if self.waiting:
            line += f"; {', '.join(self.waiting)} had no baseline to compare with yet (rerun to compare)"
        return line


def accept(results: Iterable[CheckResult], results_file: Path, path: Path, *, root: Path | None = None) -> Acceptance:
    """Store the run's results document as the accepted baseline, unless a check errored.

    Parameters
    ----------
    results : iterable of CheckResult
        Every check result of the run.
    results_file : Path
        The results.json this run wrote.
    path : Path
        The baseline to write (atomically).
    root : Path, optional
        The project root, against which results record suite files; with it, the stored
        checks of suite files this run did not collect (but that still exist) are kept too.

    Returns
    -------
    Acceptance
        ``written`` is False when a check errored: an error means something was not
        measured, so the run cannot become the reference. A regression check that
        errored only because no baseline existed yet does not block the run that
        creates it. Failed checks do not block: accepting is the user's decision.

        A complete run replaces the baseline. A partial one (checks deselected with
        ``-k``/``-m``, or only some suite files named) is merged into it: the stored
        results of the checks it did not run are kept, unless they were measured with a
        model or dataset of the same name but other content (sha256) than this run's,
        which refuses the merge rather than mix two students in one baseline.
    """
    results = list(results)

    def named(keep) -> tuple[str, ...]:
        return tuple(f"{r.suite}::{r.id}" for r in results if keep(r))

    errored = named(lambda r: r.outcome == "error" and not _waiting_for_baseline(r))
    if errored:
        return Acceptance(Path(path), False, errored=errored)
    doc = json.loads(Path(results_file).read_text(encoding="utf-8"))
    kept: tuple[str, ...] = ()
    if Path(path).is_file():
        try:
            stored = read_baseline(Path(path))
        except CheckError:
            stored = None  # an unreadable baseline is replaced, as before
        if stored is not None:
            doc, kept, conflicts = _merge(doc, stored, root)
            if conflicts:
                return Acceptance(Path(path), False, kept=kept, conflicts=conflicts)
    write_json(Path(path), doc)
    return Acceptance(
        Path(path),
        True,
        failed=named(lambda r: r.outcome == "failed"),
        waiting=named(_waiting_for_baseline),
        kept=kept,
    )


def _merge(
    doc: dict[str, Any], stored: Mapping[str, Any], root: Path | None
) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """``doc`` with the stored checks it did not run; also their names and any provenance conflicts."""
    from distill_eval.results import OUTCOMES, project_file, verdict_of

    deselected = {(d.get("file"), d.get("suite"), d.get("id")) for d in doc.get("deselected") or []}
    run_files = {s.get("file") for s in doc.get("suites", [])}
    suites = {(s["file"], s["name"]): s for s in doc.get("suites", [])}
    kept_checks: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (stored suite, stored check)
    for s in stored.get("suites", []):
        file = project_file(str(s.get("file")), root)
        unrun_file = (
            root is not None and file not in run_files and not Path(file).is_absolute() and (root / file).is_file()
        )
        for check in s.get("checks", []):
            if (file, s.get("name"), check.get("id")) in deselected or unrun_file:
                kept_checks.append(({**s, "file": file}, check))
    kept = tuple(f"{s.get('name')}::{c.get('id')}" for s, c in kept_checks)
    if not kept_checks:
        return doc, kept, ()

    # the kept checks' models and datasets must be those this run measured, where it measured them
    conflicts: list[str] = []
    models, datasets = dict(doc.get("models") or {}), dict(doc.get("datasets") or {})
    for table, new, names in (
        ("models", models, {m for _, c in kept_checks for m in (c.get("models") or {}).values()}),
        ("datasets", datasets, {c.get("dataset") for _, c in kept_checks if c.get("dataset")}),
    ):
        old = stored.get(table) or {}
        for name in sorted(names):
            before, now = old.get(name), new.get(name)
            if before is None:
                continue
            if now is None:
                new[name] = before  # this run did not touch it: the kept checks bring its provenance
                continue
            a, b = before.get("sha256") or before.get("fingerprint"), now.get("sha256") or now.get("fingerprint")
            if a != b:
                conflicts.append(f"{table[:-1]} '{name}' (sha256 {str(b)[:12]} in this run, {str(a)[:12]} stored)")
    if conflicts:
        return doc, kept, tuple(conflicts)

    order = {}  # place of each check in the stored baseline, so a merged suite keeps its file order
    for s in stored.get("suites", []):
        for i, c in enumerate(s.get("checks", [])):
            order[(project_file(str(s.get("file")), root), s.get("name"), c.get("id"))] = i
    for s, check in kept_checks:
        key = (s["file"], s["name"])
        if key not in suites:
            suites[key] = {k: v for k, v in s.items() if k != "checks"} | {"checks": []}
        suites[key]["checks"].append(check)
    for (file, name), suite in suites.items():
        suite["checks"].sort(key=lambda c, f=file, n=name: order.get((f, n, c.get("id")), len(order)))
    merged = dict(doc)
    merged["suites"] = list(suites.values())
    merged["models"], merged["datasets"] = dict(sorted(models.items())), dict(sorted(datasets.items()))
    outcomes = [c.get("outcome") for s in merged["suites"] for c in s["checks"]]
    merged["counts"] = {o: outcomes.count(o) for o in OUTCOMES}
    merged["verdict"] = verdict_of(outcomes)
    kept_keys = {(s["file"], s["name"], c.get("id")) for s, c in kept_checks}
    merged["deselected"] = [
        d for d in doc.get("deselected") or [] if (d.get("file"), d.get("suite"), d.get("id")) not in kept_keys
    ]
    return merged, kept, ()


# -- per-sequence records of token regression checks ----------------------------------

#: the ``format`` of a token-record sidecar
TOKEN_RECORDS_FORMAT = "distill-eval token baseline 1"


def token_records_path(path: Path) -> Path:
    """Where the per-sequence records of stored-mode token regression checks sit beside a baseline.

    ``reports/baseline.json`` keeps them in ``reports/baseline.tokens.npz``.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.tokens.npz")


def _record_key(suite: str, check: str) -> str:
    return f"{suite}::{check}"


def write_token_records(path: Path, records: Mapping[tuple[str, str], Mapping[str, Any]]) -> Path | None:
    """Store the accepted student's per-sequence records beside the baseline ``path`` (merged with the stored ones).

    Parameters
    ----------
    path : Path
        The baseline results.json; the records go to :func:`token_records_path`.
    records : mapping
        ``(suite, check id) -> {"meta": {...}, "arrays": {name: ndarray}}`` from this run; the
        records of checks this run did not compute are kept.

    Returns
    -------
    Path or None
        The file written; None when there was nothing to write.
    """
    if not records:
        return None
    target = token_records_path(path)
    merged = dict(_read_token_records(target)) if target.is_file() else {}
    merged.update({_record_key(*key): dict(value) for key, value in records.items()})
    header = {"format": TOKEN_RECORDS_FORMAT, "records": {key: value["meta"] for key, value in merged.items()}}
    arrays = {f"{key}::{name}": array for key, value in merged.items() for name, array in value["arrays"].items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the .tmp name
        np.savez(f, header=np.array(json.dumps(header, sort_keys=True)), **arrays)
    tmp.replace(target)
    return target


def _read_token_records(target: Path) -> dict[str, dict[str, Any]]:
    try:
        with np.load(target, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        header = json.loads(str(arrays.pop("header")))
    except Exception:  # noqa: BLE001 — unreadable: read_token_record says so; a new accept replaces it
        return {}
    if not isinstance(header, dict) or header.get("format") != TOKEN_RECORDS_FORMAT:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, meta in (header.get("records") or {}).items():
        prefix = f"{key}::"
        out[key] = {
            "meta": meta,
            "arrays": {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)},
        }
    return out


def read_token_record(path: Path, suite: str, check: str) -> dict[str, Any]:
    """The stored per-sequence record of token regression check ``check`` of suite ``suite``.

    Raises
    ------
    CheckError
        When the sidecar of baseline ``path`` is missing or unreadable, or holds no record of
        that check; the message says how to store one. Like a missing baseline, it does not
        keep ``--distill-accept`` from storing this run's records.
    """
    target = token_records_path(path)
    redo = f"run `{ACCEPT_COMMAND}` on the accepted student to store it"
    what = f"{_MISSING_RECORD}of check '{check}' of suite '{suite}' beside the baseline {shown(path)}"
    if not target.is_file():
        raise CheckError(f"{what}: {shown(target)} not found; {redo}")
    records = _read_token_records(target)
    if not records:
        raise CheckError(f"{what}: {shown(target)} is not a readable record file; {redo}")
    record = records.get(_record_key(suite, check))
    if record is None:
        known = ", ".join(sorted(records))
        raise CheckError(f"{what}: {shown(target)} holds records of {known}; {redo}")
    return record
