"""The safe ``where`` language of slices checks: parsed, never eval'd.

A ``where`` expression selects examples by their per-example fields::

    teacher_entropy >= quantile(teacher_entropy, 0.9) and meta.region in ["eu", "us"]

The source is parsed with :func:`ast.parse` (``mode="eval"``) and the tree is
translated, node by node against a whitelist, into a small tree of our own.
Nothing the user wrote is ever compiled to code or executed: evaluating an
expression only reads the fields it names and applies numpy comparisons.

The language
------------
* fields: ``label``, ``id``, ``teacher_pred``, ``student_pred``, ``teacher_conf``,
  ``student_conf``, ``teacher_margin``, ``teacher_entropy``, ``teacher_correct``,
  ``student_correct``, on token data ``position``, ``token_frequency`` and
  ``frequency_rank``, and ``meta.<column>`` (the only attribute access there is);
* literals: ints, floats, strings, ``True``/``False``, and lists or tuples of
  literals (only on the right of ``in`` / ``not in``);
* comparisons ``== != < <= > >= in not in``, chained (``0.2 < teacher_conf <= 0.5``);
* ``and``, ``or``, ``not`` (elementwise), parentheses, unary minus on numbers;
* ``quantile(field, q)``: numpy's default (linear) quantile of the whole field,
  over every example of the dataset, with ``q`` a number literal in [0, 1].

Numbers order and compare with numbers, strings compare only with ``==``,
``!=``, ``in`` and ``not in``, and true/false values (``teacher_correct``) are
conditions by themselves or compare with ``True``/``False``. Anything else is an
:class:`~distill_eval.errors.ExpressionError` whose message quotes the source
with a caret under the offending part.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from distill_eval._suggest import did_you_mean, one_of
from distill_eval.errors import ExpressionError

__all__ = ["FIELDS", "Expression", "parse"]

# The kind of values a built-in field holds; ``None``: known only from the data.
_FIELD_KINDS: dict[str, str | None] = {
    "label": "number",
    "id": None,
    "teacher_pred": "number",
    "student_pred": "number",
    "teacher_conf": "number",
    "student_conf": "number",
    "teacher_margin": "number",
    "teacher_entropy": "number",
    "teacher_correct": "bool",
    "student_correct": "bool",
    "position": "number",  # token data only: the scored token's position in its sequence
    "token_frequency": "number",  # token data only: the label's occurrences per million reference tokens
    "frequency_rank": "number",  # token data only: the label's rank by count in the reference (1: most common)
}

FIELDS: frozenset[str] = frozenset(_FIELD_KINDS)
"""The per-example fields an expression may name, besides ``meta.<column>``."""

_META = "meta"
_MAX_DEPTH = 64
_MAX_LABEL = 60

# Kinds of values: "number", "string", "bool" (a condition) and "list".
_AS_SUBJECT = {
    "number": "a number",
    "string": "a string",
    "bool": "a condition",
    "list": "a list",
}
_AS_DATA = {
    "number": "numeric",
    "string": "text",
    "bool": "true/false",
    "list": "a list",
}

_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_EQUALITY = {"==": operator.eq, "!=": operator.ne}
_COMPARE_OPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_BINOP_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitXor: "^",
}
_FORBIDDEN: dict[type[ast.AST], str] = {
    ast.Subscript: "subscripts ([...]) are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed; write a plain string",
    ast.NamedExpr: "':=' is not allowed; to compare, write '=='",
    ast.IfExp: "'if ... else' is not allowed; combine conditions with 'and' / 'or'",
    ast.Set: "sets are not allowed; write a list, e.g. [1, 2]",
    ast.Dict: "dicts are not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}
_VALUES_HINT = "; compare with numbers, strings, True or False"
_SUBJECT_HINT = f"; fields are {one_of(FIELDS)}, or meta.<column> for a column of the dataset"


# -- locating errors ---------------------------------------------------------


class _Span(NamedTuple):
    """Where a part of the source is: 1-based line, 0-based character columns."""

    line: int
    start: int
    end: int


def _located(message: str, text: str, span: _Span | None) -> ExpressionError:
    """Build an error whose message quotes ``text`` with a caret under ``span``."""
    lines = text.replace("\t", " ").split("\n") or [""]
    quoted: list[str] = []
    for number, line in enumerate(lines, start=1):
        quoted.append(f"    {line}")
        if span is not None and number == span.line:
            start = min(max(span.start, 0), len(line))
            width = max(1, min(span.end, len(line)) - start)
            quoted.append("    " + " " * start + "^" * width)
    return ExpressionError(f"{message}\n" + "\n".join(quoted))


# -- runtime -----------------------------------------------------------------


class _Value(NamedTuple):
    kind: str  # "number", "string", "bool" or "list"
    data: Any  # a 1-D array over examples, a scalar or (for lists) a tuple


class _Context:
    """One evaluation: the field mapping, the fields read so far and the length."""

    def __init__(self, fields: Mapping[str, Any], n: int | None, text: str):
        self.fields = fields
        self.n = n
        self.text = text
        self.cache: dict[str, _Value] = {}

    def fail(self, message: str, span: _Span | None) -> ExpressionError:
        return _located(message, self.text, span)

    def read(self, name: str, span: _Span) -> _Value:
        if name in self.cache:
            return self.cache[name]
        if name not in self.fields:
            raise self.fail(self._missing(name), span)
        array = np.asarray(self.fields[name])
        if array.ndim != 1:
            raise ValueError(f"field {name!r} must be a 1-D array, got shape {array.shape}")
        if self.n is None:
            self.n = len(array)
        elif len(array) != self.n:
            raise ValueError(f"field {name!r} has {len(array)} values, expected {self.n}")
        kind = _kind_of_array(array, name, lambda m: self.fail(m, span))
        if array.dtype.kind in "OS":  # object or bytes: to plain str, float or bool
            array = array.astype({"string": str, "number": float, "bool": bool}[kind])
        value = self.cache[name] = _Value(kind, array)
        return value

    def _missing(self, name: str) -> str:
        available = sorted(str(key) for key in self.fields)
        if not name.startswith(f"{_META}."):
            why = getattr(self.fields, "why_missing", lambda _: None)(name)
            return f"field '{name}' is not available for this dataset" + (f": {why}" if why else "")
        columns = [key for key in available if key.startswith(f"{_META}.")]
        if not columns:
            return f"unknown column '{name}': this dataset has no meta columns"
        return f"unknown column '{name}'{did_you_mean(name, columns)}; the dataset has {one_of(columns)}"


def _kind_of_array(array: np.ndarray, name: str, fail: Callable[[str], Exception]) -> str:
    kind = array.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iuf":
        return "number"
    if kind in "US":
        return "string"
    if kind == "O":
        items = array.tolist()
        if all(isinstance(item, str) for item in items):
            return "string"
        if all(isinstance(item, bool | np.bool_) for item in items):
            return "bool"
        if all(
            isinstance(item, int | float | np.integer | np.floating) and not isinstance(item, bool | np.bool_)
            for item in items
        ):
            return "number"
    raise fail(
        f"{name} holds values of type {array.dtype} that a where expression cannot "
        "compare (only numbers, strings and true/false values)"
    )


# -- the expression tree -----------------------------------------------------


@dataclass(frozen=True)
class _Node:
    span: _Span
    label: str  # the node's source text, for messages

    @property
    def kind(self) -> str | None:
        """The kind of value this node gives, or ``None`` if only the data can tell."""
        return None

    def run(self, ctx: _Context) -> _Value:
        raise NotImplementedError


@dataclass(frozen=True)
class _Field(_Node):
    name: str
    static_kind: str | None

    @property
    def kind(self) -> str | None:
        return self.static_kind

    def run(self, ctx: _Context) -> _Value:
        return ctx.read(self.name, self.span)


@dataclass(frozen=True)
class _Literal(_Node):
    value: bool | int | float | str

    @property
    def kind(self) -> str | None:
        return _literal_kind(self.value)

    def run(self, ctx: _Context) -> _Value:
        return _Value(_literal_kind(self.value), self.value)


@dataclass(frozen=True)
class _List(_Node):
    values: tuple[bool | int | float | str, ...]
    item_kind: str | None  # None for an empty list

    @property
    def kind(self) -> str | None:
        return "list"

    def run(self, ctx: _Context) -> _Value:
        return _Value("list", self.values)


@dataclass(frozen=True)
class _Negative(_Node):
    operand: _Node

    @property
    def kind(self) -> str | None:
        return "number"

    def run(self, ctx: _Context) -> _Value:
        value = self.operand.run(ctx)
        if value.kind != "number":
            raise ctx.fail(_negate_message(self.operand, value.kind), self.span)
        return _Value("number", np.negative(value.data))


@dataclass(frozen=True)
class _Quantile(_Node):
    target: _Field
    q: float

    @property
    def kind(self) -> str | None:
        return "number"

    def run(self, ctx: _Context) -> _Value:
        value = self.target.run(ctx)
        if value.kind != "number":
            raise ctx.fail(_quantile_kind_message(self.target, value.kind), self.target.span)
        data = np.asarray(value.data, dtype=float)
        if data.size == 0:
            return _Value("number", float("nan"))
        if np.isnan(data).any():
            raise ctx.fail(
                f"quantile of {self.target.label} is undefined: the field has missing (NaN) values",
                self.span,
            )
        return _Value("number", float(np.quantile(data, self.q)))


@dataclass(frozen=True)
class _Compare(_Node):
    operands: tuple[_Node, ...]
    ops: tuple[str, ...]

    @property
    def kind(self) -> str | None:
        return "bool"

    def run(self, ctx: _Context) -> _Value:
        values = [operand.run(ctx) for operand in self.operands]
        result: Any = True
        for i, op in enumerate(self.ops):
            left, right = self.operands[i], self.operands[i + 1]
            message = _compare_message(op, left, values[i].kind, right, values[i + 1].kind)
            if message:
                raise ctx.fail(message, _joined(left.span, right.span))
            result = np.logical_and(result, _apply(op, values[i], values[i + 1]))
        return _Value("bool", result)


@dataclass(frozen=True)
class _BoolOp(_Node):
    op: str  # "and" or "or"
    operands: tuple[_Node, ...]

    @property
    def kind(self) -> str | None:
        return "bool"

    def run(self, ctx: _Context) -> _Value:
        combine = np.logical_and if self.op == "and" else np.logical_or
        result: Any = None
        for operand in self.operands:
            value = operand.run(ctx)
            if value.kind != "bool":
                raise ctx.fail(
                    _condition_message(f"'{self.op}'", operand, value.kind),
                    operand.span,
                )
            result = value.data if result is None else combine(result, value.data)
        return _Value("bool", result)


@dataclass(frozen=True)
class _Not(_Node):
    operand: _Node

    @property
    def kind(self) -> str | None:
        return "bool"

    def run(self, ctx: _Context) -> _Value:
        value = self.operand.run(ctx)
        if value.kind != "bool":
            raise ctx.fail(_condition_message("'not'", self.operand, value.kind), self.operand.span)
        return _Value("bool", np.logical_not(value.data))


def _literal_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    return "string" if isinstance(value, str) else "number"


def _joined(first: _Span, second: _Span) -> _Span:
    if first.line == second.line:
        return _Span(first.line, first.start, second.end)
    return first


def _apply(op: str, left: _Value, right: _Value) -> Any:
    if op in ("in", "not in"):
        choices = np.asarray(right.data) if right.data else np.asarray([], dtype=object)
        inside = np.isin(left.data, choices) if len(choices) else np.zeros_like(left.data, bool)
        return np.logical_not(inside) if op == "not in" else inside
    compare = _ORDERING.get(op) or _EQUALITY[op]
    return compare(np.asarray(left.data), np.asarray(right.data))


# -- type rules, shared by parse (static kinds) and evaluate (actual kinds) ---


def _compare_message(op: str, left: _Node, left_kind: str | None, right: _Node, right_kind: str | None) -> str | None:
    """Why ``left op right`` is invalid, or ``None``; unknown kinds pass."""
    if op in ("in", "not in"):
        if not isinstance(right, _List):
            return f"'{op}' needs a list of values on its right, e.g. {left.label} {op} [...]; got {right.label}"
        if left_kind == "list":
            return f"a list can only follow 'in' or 'not in', not come before '{op}'"
        item_kind = right.item_kind
        if left_kind is not None and item_kind is not None and item_kind != left_kind:
            return (
                f"cannot look for {left.label} ({_AS_DATA[left_kind]}) "
                f"in {right.label} "
                f"(a list of {_AS_DATA[item_kind]} values)"
            )
        return None
    if "list" in (left_kind, right_kind):
        return f"a list can only follow 'in' or 'not in', not '{op}'"
    if left_kind is None or right_kind is None:
        return None
    if left_kind != right_kind:
        return f"cannot compare {left.label} ({_AS_DATA[left_kind]}) with {right.label} ({_AS_DATA[right_kind]})"
    if op in _ORDERING and left_kind == "string":
        return f"'{op}' needs numbers, but {left.label} and {right.label} are text; text supports == != in and not in"
    if op in _ORDERING and left_kind == "bool":
        return f"'{op}' needs numbers, but {left.label} and {right.label} are true/false values; use == or !="
    return None


def _condition_message(where: str, node: _Node, kind: str | None) -> str:
    what = _AS_SUBJECT.get(kind or "", "a value")
    return f"{where} needs conditions, but {node.label} is {what}; compare it, e.g. {node.label} == ..."


def _negate_message(node: _Node, kind: str | None) -> str:
    what = _AS_SUBJECT.get(kind or "", "a value")
    return f"'-' needs a number, but {node.label} is {what}"


def _quantile_kind_message(node: _Node, kind: str | None) -> str:
    what = _AS_DATA.get(kind or "", "not numeric")
    return f"quantile needs a numeric field, but {node.label} is {what}"


# -- from Python's ast to our tree ---------------------------------------------


class _Translator:
    """Translate a Python ast into our tree, rejecting everything off the whitelist."""

    def __init__(self, text: str):
        self.text = text
        self.lines = [line.encode("utf-8") for line in text.split("\n")]
        self.fields: set[str] = set()

    def fail(self, message: str, node: ast.AST) -> ExpressionError:
        return _located(message, self.text, self._span(node))

    def _base(self, node: ast.AST) -> dict[str, Any]:
        return {"span": self._span(node), "label": self._label(node)}

    def _span(self, node: ast.AST) -> _Span:
        """Where ``node`` is, in characters (ast columns count UTF-8 bytes)."""
        line = getattr(node, "lineno", 1)
        encoded = self.lines[line - 1] if 0 < line <= len(self.lines) else b""
        start, end = getattr(node, "col_offset", 0), len(encoded)
        if getattr(node, "end_lineno", None) == line:
            end = node.end_col_offset or end  # type: ignore[attr-defined]
        start = len(encoded[:start].decode("utf-8", errors="ignore"))
        end = len(encoded[:end].decode("utf-8", errors="ignore"))
        return _Span(line, start, max(end, start + 1))

    def _label(self, node: ast.AST) -> str:
        """The source text of ``node`` on one line, shortened for messages."""
        first, last = node.lineno, node.end_lineno or node.lineno  # type: ignore[attr-defined]
        if not 0 < first <= last <= len(self.lines):
            return type(node).__name__
        parts = self.lines[first - 1 : last]
        parts[-1] = parts[-1][: node.end_col_offset]  # type: ignore[attr-defined]
        parts[0] = parts[0][node.col_offset :]  # type: ignore[attr-defined]
        label = " ".join(b" ".join(parts).decode("utf-8", errors="replace").split())
        return label if len(label) <= _MAX_LABEL else label[: _MAX_LABEL - 3] + "..."

    def translate(self, node: ast.AST, depth: int = 0) -> _Node:
        if depth > _MAX_DEPTH:
            raise self.fail(f"the expression is nested more than {_MAX_DEPTH} levels deep", node)
        if isinstance(node, ast.Compare):
            return self._compare(node, depth)
        if isinstance(node, ast.BoolOp):
            op = "and" if isinstance(node.op, ast.And) else "or"
            operands = tuple(self.condition(v, f"'{op}'", depth) for v in node.values)
            return _BoolOp(**self._base(node), op=op, operands=operands)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node, depth)
        if isinstance(node, ast.Name | ast.Attribute):
            return self._field(node)
        if isinstance(node, ast.Constant):
            return _Literal(**self._base(node), value=self._constant(node))
        if isinstance(node, ast.List | ast.Tuple):
            return self._list(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.BinOp):
            raise self.fail(self._binop_message(node.op), node)
        for forbidden, message in _FORBIDDEN.items():
            if isinstance(node, forbidden):
                raise self.fail(message, node)
        raise self.fail("this syntax is not allowed in a where expression", node)

    def condition(self, node: ast.AST, where: str, depth: int) -> _Node:
        result = self.translate(node, depth + 1)
        if result.kind not in ("bool", None):
            raise self.fail(_condition_message(where, result, result.kind), node)
        return result

    def _compare(self, node: ast.Compare, depth: int) -> _Node:
        for op in node.ops:
            if isinstance(op, ast.Is | ast.IsNot):
                word = "is not" if isinstance(op, ast.IsNot) else "is"
                raise self.fail(f"'{word}' is not allowed; to compare, write '==' or '!='", node)
        operands = tuple(self.translate(v, depth + 1) for v in (node.left, *node.comparators))
        ops = tuple(_COMPARE_OPS[type(op)] for op in node.ops)
        for op, left, right in zip(ops, operands, operands[1:], strict=False):
            message = _compare_message(op, left, left.kind, right, right.kind)
            if message:
                raise _located(message, self.text, _joined(left.span, right.span))
        return _Compare(**self._base(node), operands=operands, ops=ops)

    def _unary(self, node: ast.UnaryOp, depth: int) -> _Node:
        if isinstance(node.op, ast.Not):
            return _Not(**self._base(node), operand=self.condition(node.operand, "'not'", depth))
        if isinstance(node.op, ast.Invert):
            raise self.fail("'~' is not allowed; write 'not'", node)
        if isinstance(node.op, ast.UAdd):
            raise self.fail("unary '+' is not allowed", node)
        operand = self.translate(node.operand, depth + 1)
        if operand.kind not in ("number", None):
            raise self.fail(_negate_message(operand, operand.kind), node)
        if isinstance(operand, _Literal):
            # fold -1 into a literal, so that lists and quantile's q accept it
            negated = -operand.value  # type: ignore[operator]
            return _Literal(**self._base(node), value=negated)
        return _Negative(**self._base(node), operand=operand)

    def _field(self, node: ast.Name | ast.Attribute) -> _Field:
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == _META):
                raise self.fail("only meta.<column> can use '.'; nothing else has attributes", node)
            self._check_name(node.attr, node)
            name = f"{_META}.{node.attr}"
            self.fields.add(name)
            return _Field(**self._base(node), name=name, static_kind=None)
        self._check_name(node.id, node)
        if node.id not in FIELDS:
            raise self.fail(self._unknown_name_message(node.id), node)
        self.fields.add(node.id)
        return _Field(**self._base(node), name=node.id, static_kind=_FIELD_KINDS[node.id])

    def _check_name(self, name: str, node: ast.AST) -> None:
        if name.startswith("__"):
            raise self.fail(f"names starting with '__' are not allowed: '{name}'", node)

    @staticmethod
    def _unknown_name_message(name: str) -> str:
        if name == _META:
            return "meta needs a column: write meta.<column>, e.g. meta.region"
        if name == "quantile":
            return "quantile is a function: write quantile(field, q), e.g. quantile(teacher_conf, 0.9)"
        if name.lower() in ("true", "false"):
            return f"unknown name '{name}'; write {name.capitalize()}"
        if name.lower() in ("none", "null", "nan"):
            return f"'{name}' is not a value here{_VALUES_HINT}"
        suggestion = did_you_mean(name, FIELDS)
        if suggestion:
            return f"unknown field '{name}'{suggestion}"
        return f"unknown field '{name}'{_SUBJECT_HINT}"

    def _constant(self, node: ast.Constant) -> bool | int | float | str:
        value = node.value
        if isinstance(value, bool | str | float):
            return value
        if isinstance(value, int):  # beyond int64, numpy cannot compare it as an int
            return value if -(2**63) <= value < 2**63 else float(value)
        if value is None:
            raise self.fail(f"None is not a value here{_VALUES_HINT}", node)
        if isinstance(value, bytes):
            raise self.fail("bytes literals are not allowed; write a plain string", node)
        if isinstance(value, complex):
            raise self.fail("complex numbers are not allowed", node)
        raise self.fail("this literal is not allowed in a where expression", node)

    def _list(self, node: ast.List | ast.Tuple) -> _List:
        values: list[bool | int | float | str] = []
        kinds: set[str] = set()
        for element in node.elts:
            if isinstance(element, ast.UnaryOp) and isinstance(element.op, ast.USub):
                literal = isinstance(element.operand, ast.Constant)
            else:
                literal = isinstance(element, ast.Constant)
            if not literal:
                raise self.fail(
                    "lists may only hold literals (numbers, strings, True, False)",
                    element,
                )
            item = self.translate(element)
            assert isinstance(item, _Literal)
            values.append(item.value)
            kinds.add(_literal_kind(item.value))
        if len(kinds) > 1:
            raise self.fail(
                "a list must hold values of one kind: all numbers, all strings or all True/False",
                node,
            )
        return _List(**self._base(node), values=tuple(values), item_kind=next(iter(kinds), None))

    def _call(self, node: ast.Call) -> _Quantile:
        if not (isinstance(node.func, ast.Name) and node.func.id == "quantile"):
            name = self._label(node.func)
            raise self.fail(
                f"only quantile(field, q) can be called; '{name}' is not a function here",
                node,
            )
        if node.keywords or len(node.args) != 2:
            raise self.fail("quantile takes two arguments: quantile(field, q)", node)
        target, q_node = node.args
        if not isinstance(target, ast.Name | ast.Attribute):
            raise self.fail(
                "the first argument of quantile must be a field, e.g. quantile(teacher_conf, 0.9)",
                target,
            )
        field_node = self._field(target)
        if field_node.kind not in ("number", None):
            raise self.fail(_quantile_kind_message(field_node, field_node.kind), target)
        is_literal = isinstance(q_node, ast.Constant) or (
            isinstance(q_node, ast.UnaryOp) and isinstance(q_node.operand, ast.Constant)
        )
        q = self.translate(q_node) if is_literal else None
        if not isinstance(q, _Literal) or q.kind != "number":
            raise self.fail("the second argument of quantile must be a number in [0, 1]", q_node)
        if not 0 <= q.value <= 1:  # type: ignore[operator]
            raise self.fail(f"quantile's q must be in [0, 1], got {q.value}", q_node)
        return _Quantile(**self._base(node), target=field_node, q=float(q.value))

    @staticmethod
    def _binop_message(op: ast.operator) -> str:
        if isinstance(op, ast.BitAnd):
            return "'&' is not allowed; write 'and'"
        if isinstance(op, ast.BitOr):
            return "'|' is not allowed; write 'or'"
        symbol = _BINOP_SYMBOLS.get(type(op), "this operator")
        return f"arithmetic ('{symbol}') is not allowed; only comparisons"


# -- parse errors --------------------------------------------------------------

_LINE_BREAK = re.compile(r"[ \t]*(?:\r\n|\r|\n)\s*")
_STRING_LITERAL = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_SYNTAX_HINTS = (
    (re.compile(r"&&"), "write 'and' instead of '&&'"),
    (re.compile(r"\|\|"), "write 'or' instead of '||'"),
    (re.compile(r"(?<![=!<>:])=(?!=)"), "'=' assigns; to compare, write '=='"),
    (re.compile(r"!(?!=)"), "write 'not' instead of '!'"),
)


def _syntax_error(text: str, error: SyntaxError) -> ExpressionError:
    """Explain a syntax error, with a hint for habits from other languages."""
    code = _STRING_LITERAL.sub(lambda m: " " * len(m.group()), text)
    for pattern, hint in _SYNTAX_HINTS:
        found = pattern.search(code)
        if found:
            line = code.count("\n", 0, found.start()) + 1
            column = found.start() - (code.rfind("\n", 0, found.start()) + 1)
            span = _Span(line, column, column + len(found.group()))
            return _located(f"cannot parse the expression: {hint}", text, span)
    message = f"cannot parse the expression: {error.msg}"
    return _located(message, text, _syntax_span(error))


def _syntax_span(error: SyntaxError) -> _Span | None:
    if not error.lineno or not error.offset or error.offset < 1:
        return None
    start = error.offset - 1
    same_line = error.end_lineno == error.lineno and error.end_offset
    end = error.end_offset - 1 if same_line else 0
    return _Span(error.lineno, start, max(end, start + 1))


def _one_line(source: str) -> str:
    """The source as one line: TOML multi-line strings may spread it over several."""
    return _LINE_BREAK.sub(" ", source.strip())


def _not_a_condition(root: _Node, kind: str, text: str) -> ExpressionError:
    hint = "" if kind == "list" else f"; compare it, e.g. {root.label} == ..."
    message = f"a where expression must be a condition, got {_AS_SUBJECT[kind]}{hint}"
    return _located(message, text, root.span)


# -- public API ----------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A parsed ``where`` expression; build it with :func:`parse`.

    Attributes
    ----------
    source : str
        The expression as the user wrote it.
    fields : frozenset of str
        The field names it reads, e.g. ``{"teacher_entropy", "meta.region"}``.
    """

    source: str
    fields: frozenset[str]
    _tree: _Node = field(repr=False, compare=False)

    def evaluate(self, fields: Mapping[str, Any], *, n: int | None = None) -> np.ndarray:
        """Select examples: the expression's value for each of them.

        Parameters
        ----------
        fields : mapping of str to array of shape (n_samples,)
            Per-example values by field name (``"teacher_conf"``, ``"meta.region"``).
            Only the fields in :attr:`fields` are read (``in``, then ``[]``), so the
            mapping may compute them lazily; its keys name the meta columns available.
        n : int, optional
            The number of examples; by default the length of the fields read. An
            expression that reads no field (``True``) without ``n`` reads the
            mapping's first field to learn it.

        Returns
        -------
        mask : array of bool, shape (n_samples,)
            A new array; a constant result (``1 < 2``) is broadcast to every example.

        Raises
        ------
        ExpressionError
            If a field is missing or its values do not fit the expression (comparing
            text with numbers, a number where a condition is needed, ...).
        ValueError
            If the arrays read are not 1-D or disagree in length (with each other or
            with ``n``).
        """
        ctx = _Context(fields, n, _one_line(self.source))
        value = self._tree.run(ctx)
        if value.kind != "bool":
            raise _not_a_condition(self._tree, value.kind, ctx.text)
        if ctx.n is None:
            if not fields:
                raise ValueError("cannot tell the number of examples: pass n or some fields")
            ctx.read(next(iter(fields)), self._tree.span)
        assert ctx.n is not None
        return np.array(np.broadcast_to(np.asarray(value.data, dtype=bool), (ctx.n,)))


def parse(source: str) -> Expression:
    """Parse a ``where`` expression, checking it against the language.

    Parameters
    ----------
    source : str
        The expression, e.g. ``"0.2 < teacher_conf <= 0.5 and not student_correct"``.

    Returns
    -------
    Expression
        The parsed expression, ready to :meth:`~Expression.evaluate`.

    Raises
    ------
    ExpressionError
        If the source is not in the language: a syntax error, a name that is not a
        field, any syntax off the whitelist, or kinds that cannot be compared. The
        message quotes the source with a caret under the offending part.

    Examples
    --------
    >>> expr = parse("teacher_entropy >= quantile(teacher_entropy, 0.9)")
    >>> sorted(expr.fields)
    ['teacher_entropy']
    """
    if not isinstance(source, str):
        raise ExpressionError(f"a where expression must be a string, got {type(source).__name__}")
    text = _one_line(source)
    if not text:
        raise ExpressionError("the where expression is empty")
    try:
        tree = ast.parse(text, mode="eval")  # an ast only: nothing is compiled to code
    except SyntaxError as error:
        raise _syntax_error(text, error) from None
    except ValueError as error:  # e.g. surrogate characters
        raise _located(f"cannot parse the expression: {error}", text, None) from None
    except (RecursionError, MemoryError):
        raise _located("cannot parse the expression: it is nested too deeply", text, None) from None
    translator = _Translator(text)
    try:
        root = translator.translate(tree.body)
    except RecursionError:
        raise _located("cannot parse the expression: it is nested too deeply", text, None) from None
    if root.kind not in ("bool", None):
        raise _not_a_condition(root, root.kind, text)
    return Expression(source=source, fields=frozenset(translator.fields), _tree=root)
