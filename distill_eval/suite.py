"""Suite files: TOML -> frozen :class:`SuiteSpec`, validated before any model loads.

A suite file has one ``[suite]`` table and one ``[[check]]`` table per check
(``distill-eval docs suites``). Everything a user can misspell is checked here, with the
file, the check and the nearest valid name in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_eval._suggest import did_you_mean, one_of
from distill_eval._tables import TableReader, describe
from distill_eval.config import ProjectConfig, read_toml
from distill_eval.errors import ConfigError

__all__ = ["GATES", "Bound", "CheckSpec", "SuiteSpec", "load_suite"]

GATES = ("estimate", "strict", "lenient")
SEVERITIES = ("error", "warn")


@dataclass(frozen=True)
class Bound:
    """``metric >= value`` (op ``"min"``) or ``metric <= value`` (op ``"max"``)."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class CheckSpec:
    """One ``[[check]]`` table, validated."""

    id: str
    kind: str
    params: Mapping[str, Any]
    bounds: tuple[Bound, ...] = ()
    severity: str = "error"
    dataset: str = "test"
    teacher: str = "teacher"
    student: str = "student"
    index: int = 0
    #: overrides the suite's gate for this check (``--distill-gate`` overrides both)
    gate: str | None = None


@dataclass(frozen=True)
class SuiteSpec:
    """A suite file: shared settings and its checks, in file order."""

    name: str
    file: Path
    teacher: str = "teacher"
    student: str = "student"
    dataset: str = "test"
    gate: str = "estimate"
    confidence: float = 0.95
    bootstrap: int = 1000
    seed: int = 0
    checks: tuple[CheckSpec, ...] = field(default_factory=tuple)


def load_suite(path: Path, project: ProjectConfig | None = None) -> SuiteSpec:
    """Read and validate a suite file.

    Parameters
    ----------
    path : Path
        The ``.toml`` suite file.
    project : ProjectConfig, optional
        When given, model and dataset names are checked against it.

    Raises
    ------
    ConfigError
        For TOML syntax errors, unknown keys, kinds or metrics, wrong types,
        duplicate check ids and unknown model or dataset names.
    """
    from distill_eval.checks import KINDS

    path = Path(path)
    doc = read_toml(path)
    file = str(path)
    top = TableReader(doc, file=file)
    suite_table = top.table_of("suite", {})
    check_tables = top.list_of("check", [])
    top.finish()

    r = TableReader(suite_table, file=file, where="[suite]")
    name = r.string("name", path.stem)
    if not name or "::" in name or "/" in name:
        raise r.error(f"'name' must be a non-empty name without '::' or '/', got {name!r}")
    teacher = r.string("teacher", "teacher")
    student = r.string("student", "student")
    dataset = r.string("dataset", "test")
    gate = r.string("gate", "estimate", choices=GATES)
    confidence = r.number("confidence", 0.95, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
    bootstrap = r.integer("bootstrap", 1000, minimum=1)
    seed = r.integer("seed", 0, minimum=0)
    r.finish()
    if not check_tables:
        raise ConfigError("has no [[check]] tables; a suite needs at least one check", file=file)

    checks: list[CheckSpec] = []
    seen: dict[str, int] = {}
    kind_counts: dict[str, int] = {}
    for index, table in enumerate(check_tables, start=1):
        label = f"check #{index}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"must be a table, got {describe(table)}", file=file, where=label)
        explicit_id = table.get("id")
        if isinstance(explicit_id, str):
            label = f"check '{explicit_id}'"
        cr = TableReader(table, file=file, where=label)
        kind = cr.string("kind")
        if kind not in KINDS:
            raise cr.error(f"unknown kind {kind!r}{did_you_mean(kind, KINDS)}; expected one of {one_of(KINDS)}")
        kind_counts[kind] = kind_counts.get(kind, 0) + 1
        default_id = kind if kind_counts[kind] == 1 else f"{kind}-{kind_counts[kind]}"
        check_id = cr.string("id", default_id)
        if not check_id or "::" in check_id or "/" in check_id:
            raise cr.error(f"'id' must be a non-empty name without '::' or '/', got {check_id!r}")
        cr.where = label = f"check '{check_id}'"
        if check_id in seen:
            raise cr.error(
                f"duplicate check id {check_id!r} (also check #{seen[check_id]}); give each check a unique 'id'"
            )
        seen[check_id] = index
        severity = cr.string("severity", "error", choices=SEVERITIES)
        check_gate = cr.string("gate", None, choices=GATES)
        spec_kind = KINDS[kind]
        bounds = _read_bounds(cr, spec_kind.bound_metrics)
        params = spec_kind.read_params(cr, path.parent)
        check_dataset = cr.string("dataset", dataset)
        check_teacher = cr.string("teacher", teacher)
        check_student = cr.string("student", student)
        cr.finish()
        checks.append(
            CheckSpec(
                id=check_id,
                kind=kind,
                params=params,
                bounds=bounds,
                severity=severity,
                dataset=check_dataset,
                teacher=check_teacher,
                student=check_student,
                index=index,
                gate=check_gate,
            )
        )
    suite = SuiteSpec(
        name=name,
        file=path,
        teacher=teacher,
        student=student,
        dataset=dataset,
        gate=gate,
        confidence=confidence,
        bootstrap=bootstrap,
        seed=seed,
        checks=tuple(checks),
    )
    if project is not None:
        _check_names(suite, project)
    return suite


def _read_bounds(cr: TableReader, metrics: tuple[str, ...]) -> tuple[Bound, ...]:
    bounds = []
    for op in ("min", "max"):
        table = cr.table_of(op, {})
        for metric, value in table.items():
            if metric not in metrics:
                raise cr.error(
                    f"unknown metric {metric!r} in '{op}'{did_you_mean(metric, metrics)}; "
                    f"metrics of this kind: {', '.join(metrics)}"
                )
            # TOML spells nan and inf; a NaN bound compares false both ways and would never fail
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise cr.error(f"'{op}.{metric}' must be a finite number, got {describe(value)}")
            bounds.append(Bound(metric=metric, op=op, value=float(value)))
    return tuple(bounds)


def _check_names(suite: SuiteSpec, project: ProjectConfig) -> None:
    from distill_eval.checks import KINDS

    for check in suite.checks:
        kind = KINDS[check.kind]
        pair = [("teacher", check.teacher), ("student", check.student)] if kind.uses_models else []
        references = [
            ("models", "model", [*pair, *kind.extra_models(check.params)]),
            ("datasets", "dataset", [("dataset", check.dataset), *kind.extra_datasets(check.params)]),
        ]
        for table, noun, refs in references:
            defined = getattr(project, table)
            for key, name in refs:
                if name not in defined:
                    raise ConfigError(
                        f"'{key}' names {noun} {name!r}, which [tool.distill_eval.{table}] does not define"
                        f"{did_you_mean(name, defined)}; defined: {', '.join(sorted(defined)) or 'none'}",
                        file=str(suite.file),
                        where=f"check '{check.id}'",
                    )
