"""Read one TOML table with validation: types, choices and unknown keys.

Every suite file, the ``[tool.distill_eval]`` table and training configs are
read through :class:`TableReader`, so every mistake is reported the same way:
the file, the table or check, the key, what was expected and what was found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from distill_eval._suggest import did_you_mean, one_of
from distill_eval.errors import ConfigError

_MISSING: Any = object()


def describe(value: object) -> str:
    """Describe a TOML value for an error message: ``a string ('15')``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class TableReader:
    """Take keys out of one TOML table, checking each, then reject leftovers.

    Parameters
    ----------
    table : mapping
        The parsed TOML table.
    file : str or Path, optional
        The file the table came from, for messages.
    where : str, optional
        Which table or check inside the file, e.g. ``"check 'calibration'"``.

    Examples
    --------
    >>> r = TableReader({"bins": 15}, file="gate.toml", where="check 'calibration'")
    >>> r.integer("bins", 15, minimum=1)
    15
    >>> r.finish()
    """

    def __init__(self, table: Mapping[str, Any], *, file: str | Path | None = None, where: str | None = None):
        if not isinstance(table, Mapping):
            raise ConfigError(f"expected a table, got {describe(table)}", file=_str(file), where=where)
        self.table = dict(table)
        self.file = _str(file)
        self.where = where
        self._known: set[str] = set()

    def error(self, message: str) -> ConfigError:
        """A ConfigError located at this table."""
        return ConfigError(message, file=self.file, where=self.where)

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self.table

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key`` unchecked, or ``default``; missing and no default is an error."""
        self._known.add(key)
        if key in self.table:
            return self.table[key]
        if default is _MISSING:
            raise self.error(f"missing required key '{key}'")
        return default

    def _typed(self, key: str, default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
        value = self.raw(key, default)
        if value is default and key not in self.table:
            return value
        if not ok(value):
            raise self.error(f"'{key}' must be {expected}, got {describe(value)}")
        return value

    def string(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None) -> Any:
        value = self._typed(key, default, lambda v: isinstance(v, str), "a string")
        if choices is not None and key in self.table:
            choices = list(choices)
            if value not in choices:
                raise self.error(
                    f"'{key}' must be one of {one_of(choices)}, got {value!r}{did_you_mean(value, choices)}"
                )
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, lambda v: isinstance(v, bool), "true or false")

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        return self._typed(
            key,
            default,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum),
            expected,
        )

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
        exclusive_maximum: bool = False,
    ) -> Any:
        def ok(v: Any) -> bool:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return False
            if minimum is not None and (v <= minimum if exclusive_minimum else v < minimum):
                return False
            return maximum is None or (v < maximum if exclusive_maximum else v <= maximum)

        expected = "a number"
        if minimum is not None and maximum is not None:
            lo = "(" if exclusive_minimum else "["
            hi = ")" if exclusive_maximum else "]"
            expected += f" in {lo}{minimum:g}, {maximum:g}{hi}"
        elif minimum is not None:
            expected += f" {'>' if exclusive_minimum else '>='} {minimum:g}"
        elif maximum is not None:
            expected += f" {'<' if exclusive_maximum else '<='} {maximum:g}"
        value = self._typed(key, default, ok, expected)
        return float(value) if isinstance(value, int) and key in self.table else value

    def table_of(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, lambda v: isinstance(v, Mapping), "a table")

    def list_of(self, key: str, default: Any = _MISSING) -> Any:
        return self._typed(key, default, lambda v: isinstance(v, list), "a list")

    def finish(self) -> None:
        """Raise for the first key that was never asked for."""
        for key in self.table:
            if key not in self._known:
                raise self.error(f"unknown key '{key}'{did_you_mean(key, self._known)}")


def _str(file: str | Path | None) -> str | None:
    return None if file is None else str(file)
