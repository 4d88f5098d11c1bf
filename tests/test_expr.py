"""The `where` language: masks against numpy references, errors, and fuzzing."""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib.util
import sys
import unicodedata  # noqa: F401  (loaded before the fuzz: see IMPORTED_LIBRARIES)
from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from distill_eval.errors import ConfigError, ExpressionError
from distill_eval.expr import FIELDS, Expression, parse

N = 200


def make_fields(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """Random per-example fields, as the slices check would pass them."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 5, n)
    teacher_pred = np.where(rng.random(n) < 0.8, label, rng.integers(0, 5, n))
    student_pred = np.where(rng.random(n) < 0.7, label, rng.integers(0, 5, n))
    return {
        "label": label,
        "id": np.array([f"ex{i}" for i in range(n)]),
        "teacher_pred": teacher_pred,
        "student_pred": student_pred,
        "teacher_conf": rng.random(n),
        "student_conf": rng.random(n),
        "teacher_margin": rng.random(n) * 0.5,
        "teacher_entropy": rng.random(n) * 1.6,
        "teacher_correct": teacher_pred == label,
        "student_correct": student_pred == label,
        "meta.region": rng.choice(["eu", "us", "apac"], n),
        "meta.age": rng.integers(18, 90, n),
        "meta.score": rng.normal(size=n),
        "meta.flagged": rng.random(n) < 0.3,
        "position": rng.integers(1, 64, n),  # token data's fields, drawn last: the others keep their values
        "token_frequency": rng.random(n) * 1e4,
        "frequency_rank": rng.integers(1, 300, n),
    }


DATA = make_fields()
D = DATA


def q(name: str, p: float) -> float:
    return float(np.quantile(DATA[name], p))


# expression, reference mask computed directly with numpy
CASES = [
    ("teacher_conf > 0.5", D["teacher_conf"] > 0.5),
    ("teacher_conf >= 0.5", D["teacher_conf"] >= 0.5),
    ("student_conf < 0.25", D["student_conf"] < 0.25),
    ("student_conf <= 0.25", D["student_conf"] <= 0.25),
    ("label == 3", D["label"] == 3),
    ("label != 3", D["label"] != 3),
    ("teacher_pred == student_pred", D["teacher_pred"] == D["student_pred"]),
    ("teacher_pred != label", D["teacher_pred"] != D["label"]),
    ("student_conf > teacher_conf", D["student_conf"] > D["teacher_conf"]),
    (
        "0.2 < teacher_conf <= 0.5",
        (D["teacher_conf"] > 0.2) & (D["teacher_conf"] <= 0.5),
    ),
    (
        "0.1 <= teacher_margin < teacher_conf < 0.9",
        (D["teacher_margin"] >= 0.1) & (D["teacher_margin"] < D["teacher_conf"]) & (D["teacher_conf"] < 0.9),
    ),
    ("1 < label != 3", (D["label"] > 1) & (D["label"] != 3)),
    ("label in [1, 3]", np.isin(D["label"], [1, 3])),
    ("label not in [1, 3]", ~np.isin(D["label"], [1, 3])),
    ("label in (0, 4)", np.isin(D["label"], [0, 4])),
    ("label in []", np.zeros(N, bool)),
    ("label not in []", np.ones(N, bool)),
    ("label in [-1, 2.0]", D["label"] == 2),
    ("id == 'ex7'", np.arange(N) == 7),
    ('id != "ex7"', np.arange(N) != 7),
    ("id in ['ex1', 'ex2', 'nope']", np.isin(np.arange(N), [1, 2])),
    ("id not in ['ex1', 'ex2']", ~np.isin(np.arange(N), [1, 2])),
    ("meta.region == 'eu'", D["meta.region"] == "eu"),
    ("meta.region in ['eu', 'us']", np.isin(D["meta.region"], ["eu", "us"])),
    ("meta.region not in ['eu']", D["meta.region"] != "eu"),
    ("meta.age >= 65", D["meta.age"] >= 65),
    ("18 <= meta.age < 30", (D["meta.age"] >= 18) & (D["meta.age"] < 30)),
    ("meta.score < -1", D["meta.score"] < -1),
    ("meta.score > -0.5e0", D["meta.score"] > -0.5),
    ("-meta.score > 1", -D["meta.score"] > 1),
    ("meta.flagged", D["meta.flagged"]),
    ("meta.flagged == False", ~D["meta.flagged"]),
    ("teacher_correct", D["teacher_correct"]),
    ("teacher_correct == True", D["teacher_correct"]),
    ("teacher_correct != student_correct", D["teacher_correct"] != D["student_correct"]),
    ("not teacher_correct", ~D["teacher_correct"]),
    ("not not teacher_correct", D["teacher_correct"]),
    (
        "teacher_correct and not student_correct",
        D["teacher_correct"] & ~D["student_correct"],
    ),
    ("not teacher_conf > 0.5", ~(D["teacher_conf"] > 0.5)),
    (
        "teacher_correct or student_correct",
        D["teacher_correct"] | D["student_correct"],
    ),
    (
        "teacher_entropy >= quantile(teacher_entropy, 0.9)",
        D["teacher_entropy"] >= q("teacher_entropy", 0.9),
    ),
    (
        "quantile(teacher_conf, 0.25) < teacher_conf < quantile(teacher_conf, 0.75)",
        (D["teacher_conf"] > q("teacher_conf", 0.25)) & (D["teacher_conf"] < q("teacher_conf", 0.75)),
    ),
    ("meta.age > quantile(meta.age, 0.5)", D["meta.age"] > q("meta.age", 0.5)),
    (
        "meta.region == 'eu' and teacher_margin < quantile(teacher_margin, 0.1)",
        (D["meta.region"] == "eu") & (D["teacher_margin"] < q("teacher_margin", 0.1)),
    ),
    (
        "(meta.region == 'us' or meta.age < 30) and not student_correct",
        ((D["meta.region"] == "us") | (D["meta.age"] < 30)) & ~D["student_correct"],
    ),
    (
        "teacher_conf > 0.9\n  and student_conf < 0.5",  # a TOML multi-line string
        (D["teacher_conf"] > 0.9) & (D["student_conf"] < 0.5),
    ),
]


@pytest.mark.parametrize(("source", "expected"), CASES, ids=[c[0] for c in CASES])
def test_masks_match_numpy(source: str, expected: np.ndarray) -> None:
    mask = parse(source).evaluate(DATA)
    assert mask.dtype == np.bool_
    assert mask.shape == (N,)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("p", [0, 0.0, 0.1, 0.37, 0.5, 0.9, 1])
@pytest.mark.parametrize("name", ["teacher_conf", "teacher_entropy", "label", "meta.age"])
def test_quantile_is_numpy_linear_quantile(name: str, p: float) -> None:
    threshold = np.quantile(DATA[name], p)  # numpy's default: method="linear"
    for op, compare in [(">=", np.greater_equal), ("<", np.less), ("==", np.equal)]:
        mask = parse(f"{name} {op} quantile({name}, {p})").evaluate(DATA)
        np.testing.assert_array_equal(mask, compare(DATA[name], threshold))


def test_quantile_uses_the_whole_field_not_the_current_slice() -> None:
    # in a conjunction the quantile still ranges over every example
    mask = parse("meta.region == 'apac' and teacher_conf >= quantile(teacher_conf, 0.5)").evaluate(DATA)
    median_all = np.median(DATA["teacher_conf"])
    apac = DATA["meta.region"] == "apac"
    median_apac = np.median(DATA["teacher_conf"][apac])
    assert median_all != median_apac
    np.testing.assert_array_equal(mask, apac & (DATA["teacher_conf"] >= median_all))


def test_quantile_of_a_handmade_field() -> None:
    fields = {"teacher_conf": np.array([0.0, 1.0, 2.0, 3.0, 10.0])}
    # linear interpolation: q=0.3 -> position 1.2 -> 1.0 + 0.2 * (2.0 - 1.0) = 1.2
    expr = parse("teacher_conf > quantile(teacher_conf, 0.3)")
    np.testing.assert_array_equal(expr.evaluate(fields), [False, False, True, True, True])
    below = parse("teacher_conf < quantile(teacher_conf, 0.3)").evaluate(fields)
    np.testing.assert_array_equal(below, [True, True, False, False, False])


def test_precedence_and_binds_tighter_than_or() -> None:
    a, b, c = DATA["teacher_correct"], DATA["student_correct"], DATA["meta.flagged"]
    loose = parse("teacher_correct or student_correct and meta.flagged").evaluate(DATA)
    grouped = parse("(teacher_correct or student_correct) and meta.flagged").evaluate(DATA)
    np.testing.assert_array_equal(loose, a | (b & c))
    np.testing.assert_array_equal(grouped, (a | b) & c)
    assert not np.array_equal(loose, grouped)  # the data tells the two apart


def test_precedence_not_binds_looser_than_comparison_tighter_than_and() -> None:
    mask = parse("not label == 1 and teacher_correct").evaluate(DATA)
    np.testing.assert_array_equal(mask, (DATA["label"] != 1) & DATA["teacher_correct"])


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("1 < 2", True),
        ("1 > 2", False),
        ("True", True),
        ("not True", False),
        ("'eu' == 'eu'", True),
        ("2 in [1, 2]", True),
        ("-1 < 0 <= 0", True),
        ("quantile(teacher_conf, 0.5) > 2", False),
        ("quantile(teacher_conf, 1) <= 1 and quantile(teacher_conf, 0) >= 0", True),
    ],
)
def test_scalar_results_broadcast_to_every_example(source: str, value: bool) -> None:
    mask = parse(source).evaluate(DATA)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, np.full(N, value))


def test_constant_expression_takes_n_when_given() -> None:
    mask = parse("True").evaluate(StrictMapping(DATA, allowed=set()), n=7)
    np.testing.assert_array_equal(mask, np.ones(7, bool))


def test_result_is_a_new_array() -> None:
    mask = parse("teacher_correct").evaluate(DATA)
    mask[:] = False
    assert DATA["teacher_correct"].any()


def test_empty_dataset_gives_an_empty_mask() -> None:
    fields = {name: values[:0] for name, values in DATA.items()}
    for source in ["teacher_conf > quantile(teacher_conf, 0.5)", "meta.region == 'eu'"]:
        mask = parse(source).evaluate(fields)
        assert mask.shape == (0,)
        assert mask.dtype == np.bool_


class StrictMapping(Mapping[str, np.ndarray]):
    """A lazy mapping that fails the test when a field outside `allowed` is read."""

    def __init__(self, data: Mapping[str, np.ndarray], allowed: set[str]):
        self.data = data
        self.allowed = allowed
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.allowed:
            raise AssertionError(f"unused field {key!r} was computed")
        self.reads.append(key)
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("teacher_conf > 0.5", {"teacher_conf"}),
        (
            "teacher_entropy >= quantile(teacher_entropy, 0.9) and not student_correct",
            {"teacher_entropy", "student_correct"},
        ),
        ("meta.region in ['eu'] or meta.age > 60", {"meta.region", "meta.age"}),
        ("quantile(meta.score, 0.5) < meta.age", {"meta.score", "meta.age"}),
        ("1 < 2 or teacher_correct", {"teacher_correct"}),
    ],
)
def test_reads_only_the_fields_it_uses_once_each(source: str, fields: set[str]) -> None:
    expr = parse(source)
    assert expr.fields == frozenset(fields)
    mapping = StrictMapping(DATA, allowed=fields)
    expected = parse(source).evaluate(DATA)
    np.testing.assert_array_equal(expr.evaluate(mapping), expected)
    assert sorted(mapping.reads) == sorted(fields)


def test_public_api() -> None:
    assert FIELDS == {
        "label",
        "id",
        "teacher_pred",
        "student_pred",
        "teacher_conf",
        "student_conf",
        "teacher_margin",
        "teacher_entropy",
        "teacher_correct",
        "student_correct",
        "position",
        "token_frequency",
        "frequency_rank",
    }
    expr = parse("  teacher_conf > 0.5  ")
    assert isinstance(expr, Expression)
    assert expr.source == "  teacher_conf > 0.5  "
    assert expr == parse("  teacher_conf > 0.5  ")
    with pytest.raises(AttributeError):
        expr.source = "x"  # type: ignore[misc]
    assert issubclass(ExpressionError, ConfigError)


# -- errors --------------------------------------------------------------------


def parse_error(source: str) -> str:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    return str(info.value)


def evaluate_error(source: str, fields: Mapping[str, np.ndarray] = DATA) -> str:
    expr = parse(source)
    with pytest.raises(ExpressionError) as info:
        expr.evaluate(fields)
    return str(info.value)


def caret(message: str) -> tuple[str, int, int]:
    """The quoted source line and the columns the caret under it covers."""
    lines = message.split("\n")
    index = next(i for i, line in enumerate(lines) if set(line.strip()) == {"^"})
    start = lines[index].index("^")
    return lines[index - 1][4:], start - 4, lines[index].count("^")


def assert_points_at(message: str, source: str, part: str) -> None:
    quoted, column, width = caret(message)
    assert quoted == source
    assert column == source.index(part), message
    assert width == len(part), message


@pytest.mark.parametrize(
    ("source", "name", "suggestion"),
    [
        ("teacher_confidence > 0.5", "teacher_confidence", "teacher_conf"),
        ("studnet_correct", "studnet_correct", "student_correct"),
        ("labels == 1", "labels", "label"),
        ("teacher_conf > quantile(teacher_entrop, 0.5)", "teacher_entrop", "teacher_entropy"),
    ],
)
def test_unknown_field_is_named_with_a_suggestion(source: str, name: str, suggestion: str) -> None:
    message = parse_error(source)
    assert f"unknown field '{name}'" in message
    assert f"did you mean '{suggestion}'?" in message
    assert_points_at(message, source, name)


def test_unknown_field_without_close_match_lists_fields_and_meta() -> None:
    message = parse_error("region == 'eu'")
    assert "unknown field 'region'" in message
    assert "meta.<column>" in message
    assert "'teacher_conf'" in message


def test_unknown_meta_column_suggests_columns_of_the_data() -> None:
    source = "meta.regoin == 'eu'"
    message = evaluate_error(source)
    assert "unknown column 'meta.regoin'" in message
    assert "did you mean 'meta.region'?" in message
    assert_points_at(message, source, "meta.regoin")


def test_unknown_meta_column_is_found_without_computing_any_field() -> None:
    with pytest.raises(ExpressionError, match=r"meta\.nothing"):
        parse("meta.nothing > 1").evaluate(StrictMapping(DATA, allowed=set()))


def test_missing_builtin_field_is_an_expression_error() -> None:
    message = evaluate_error("label == 1", {"teacher_conf": DATA["teacher_conf"]})
    assert "'label' is not available" in message


FORBIDDEN = [
    ("__import__('os')", "only quantile(field, q) can be called"),
    ("__import__('os').system('true')", "only quantile(field, q) can be called"),
    ("().__class__", "only meta.<column> can use '.'"),
    ("().__class__.__bases__[0].__subclasses__()", "only quantile(field, q) can be called"),
    ("open('x')", "'open' is not a function here"),
    ("eval('1')", "'eval' is not a function here"),
    ("meta.region.upper() == 'EU'", "'meta.region.upper' is not a function here"),
    ("lambda: 1", "lambda is not allowed"),
    ("[x for x in y]", "comprehensions are not allowed"),
    ("any(x for x in y)", "only quantile(field, q) can be called"),
    ("{x: 1 for x in y}", "comprehensions are not allowed"),
    ("label[0] == 1", "subscripts ([...]) are not allowed"),
    ("id[0] == 'e'", "subscripts ([...]) are not allowed"),
    ("teacher_conf.real > 0", "only meta.<column> can use '.'"),
    ("meta.region.lower == 'eu'", "only meta.<column> can use '.'"),
    ("meta.__class__ == 1", "names starting with '__' are not allowed"),
    ("__builtins__", "names starting with '__' are not allowed"),
    ("meta == 1", "meta needs a column"),
    ("f'{label}' == 'x'", "f-strings are not allowed"),
    ("(x := 1)", "':=' is not allowed"),
    ("(label := 1) == 1", "':=' is not allowed"),
    ("teacher_conf + 0.1 > student_conf", "arithmetic ('+') is not allowed"),
    ("teacher_conf * 2 > 1", "arithmetic ('*') is not allowed"),
    ("teacher_conf ** 2 > 1", "arithmetic ('**') is not allowed"),
    ("teacher_correct & student_correct", "write 'and'"),
    ("teacher_correct | student_correct", "write 'or'"),
    ("~teacher_correct", "write 'not'"),
    ("+teacher_conf > 1", "unary '+' is not allowed"),
    ("1 if teacher_correct else 0", "'if ... else' is not allowed"),
    ("label in {1, 2}", "sets are not allowed"),
    ("{'a': 1} == 1", "dicts are not allowed"),
    ("label in [*x]", "lists may only hold literals"),
    ("label in [teacher_pred]", "lists may only hold literals"),
    ("label in [[1]]", "lists may only hold literals"),
    ("label in [1, 'a']", "a list must hold values of one kind"),
    ("label == None", "None is not a value here"),
    ("label is 1", "'is' is not allowed"),
    ("label is not None", "'is not' is not allowed"),
    ("id == b'x'", "bytes literals are not allowed"),
    ("label == 1j", "complex numbers are not allowed"),
    ("label == ...", "this literal is not allowed"),
    ("teacher_conf > quantile(teacher_conf)", "quantile takes two arguments"),
    ("teacher_conf > quantile(teacher_conf, q=0.5)", "quantile takes two arguments"),
    ("teacher_conf > quantile(0.5, 0.5)", "first argument of quantile must be a field"),
    ("teacher_conf > quantile(teacher_conf, student_conf)", "must be a number in [0, 1]"),
    ("teacher_conf > quantile(teacher_conf, '0.5')", "must be a number in [0, 1]"),
    ("teacher_conf > quantile(teacher_conf, True)", "must be a number in [0, 1]"),
    ("teacher_conf > quantile(teacher_conf, 1.5)", "q must be in [0, 1], got 1.5"),
    ("teacher_conf > quantile(teacher_conf, -0.1)", "q must be in [0, 1], got -0.1"),
    ("quantile(teacher_correct, 0.5) > 0", "quantile needs a numeric field"),
    ("quantile == 1", "quantile is a function"),
    ("teacher_correct == true", "write True"),
    ("label == null", "'null' is not a value here"),
    ("", "empty"),
    ("   ", "empty"),
]


@pytest.mark.parametrize(("source", "fragment"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_forbidden_syntax_is_rejected(source: str, fragment: str) -> None:
    message = parse_error(source)
    assert fragment in message
    if source.strip():
        assert source in message  # the message quotes the expression


@pytest.mark.parametrize(
    ("source", "part"),
    [
        ("teacher_conf > 0.5 and label[0] == 1", "label[0]"),
        ("teacher_correct and open('x')", "open('x')"),
        ("meta.region == 'é' and foo", "foo"),  # columns count characters, not bytes
        ("label in [1, 2] or teacher_conf.real > 0", "teacher_conf.real"),
        ("teacher_conf > quantile(teacher_conf, 2)", "2"),
    ],
)
def test_caret_points_at_the_offending_part(source: str, part: str) -> None:
    assert_points_at(parse_error(source), source, part)


@pytest.mark.parametrize(
    ("source", "hint", "part"),
    [
        ("teacher_conf = 0.5", "to compare, write '=='", "="),
        ("label = 1 and teacher_correct", "to compare, write '=='", "="),
        ("teacher_correct && student_correct", "write 'and' instead of '&&'", "&&"),
        ("teacher_correct || student_correct", "write 'or' instead of '||'", "||"),
        ("!teacher_correct", "write 'not' instead of '!'", "!"),
        ("meta.region == 'a&&b' && teacher_correct", "write 'and'", "&&"),
    ],
)
def test_syntax_errors_from_other_languages_get_a_hint(source: str, hint: str, part: str) -> None:
    message = parse_error(source)
    assert "cannot parse the expression" in message
    assert hint in message
    quoted, column, width = caret(message)
    assert quoted == source
    assert column == source.rindex(part)
    assert width == len(part)


@pytest.mark.parametrize(
    ("source", "part"),
    [
        ("teacher_conf > > 0.5", "> 0.5"),
        ("label in [1, 2", "["),
        ("(teacher_conf > 0.5", "("),
    ],
)
def test_syntax_errors_point_where_python_located_them(source: str, part: str) -> None:
    error = None
    try:
        ast.parse(source, mode="eval")
    except SyntaxError as exc:
        error = exc
    assert error is not None and error.offset is not None
    message = parse_error(source)
    assert "cannot parse the expression" in message
    quoted, column, _ = caret(message)
    assert quoted == source
    assert column == error.offset - 1 == source.index(part)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("teacher_conf", "must be a condition, got a number"),
        ("-teacher_conf", "must be a condition, got a number"),
        ("quantile(teacher_conf, 0.5)", "must be a condition, got a number"),
        ("'eu'", "must be a condition, got a string"),
        ("[1, 2]", "must be a condition, got a list"),
        ("teacher_conf and teacher_correct", "'and' needs conditions"),
        ("teacher_correct or label", "'or' needs conditions"),
        ("not teacher_conf", "'not' needs conditions"),
        ("teacher_conf > 'high'", "cannot compare teacher_conf (numeric) with 'high' (text)"),
        ("teacher_correct == 1", "cannot compare teacher_correct (true/false)"),
        ("label == True", "cannot compare label (numeric) with True (true/false)"),
        ("'a' < 'b'", "'<' needs numbers"),
        ("teacher_correct > False", "'>' needs numbers"),
        ("label in 3", "'in' needs a list of values on its right"),
        ("label not in 'abc'", "'not in' needs a list of values on its right"),
        ("'eu' in meta.region", "'in' needs a list of values on its right"),
        ("label in ['1', '2']", "cannot look for label (numeric)"),
        ("[1] == label", "a list can only follow 'in' or 'not in'"),
        ("label in [1] == [1]", "a list can only follow 'in' or 'not in'"),
        ("-'a' == 1", "'-' needs a number"),
        ("-teacher_correct", "'-' needs a number"),
    ],
)
def test_type_errors_are_caught_when_parsing(source: str, fragment: str) -> None:
    assert fragment in parse_error(source)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("meta.region", "must be a condition, got a string"),
        ("meta.age", "must be a condition, got a number"),
        ("meta.region == 1", "cannot compare meta.region (text) with 1 (numeric)"),
        ("meta.region > 'eu'", "'>' needs numbers, but meta.region and 'eu' are text"),
        ("meta.age == 'old'", "cannot compare meta.age (numeric) with 'old' (text)"),
        ("meta.age == meta.region", "cannot compare meta.age (numeric) with meta.region"),
        ("meta.flagged < True", "'<' needs numbers"),
        ("meta.region in [1, 2]", "cannot look for meta.region (text)"),
        ("id > 3", "cannot compare id (text) with 3 (numeric)"),
        ("id in [1, 2]", "cannot look for id (text)"),
        ("meta.region and teacher_correct", "'and' needs conditions"),
        ("not meta.age", "'not' needs conditions"),
        ("-meta.region < 1", "'-' needs a number"),
        ("quantile(meta.region, 0.5) < 1", "quantile needs a numeric field"),
        ("quantile(id, 0.5) < 1", "quantile needs a numeric field"),
        ("meta.mixed == 1", "meta.mixed holds values of type object"),
        ("quantile(meta.holes, 0.5) < 1", "missing (NaN) values"),
    ],
)
def test_type_errors_are_caught_when_evaluating(source: str, fragment: str) -> None:
    fields = {
        **DATA,
        "meta.mixed": np.array([1, "a", None] * (N // 3) + [1] * (N % 3), dtype=object),
        "meta.holes": np.where(np.arange(N) % 7 == 0, np.nan, DATA["meta.score"]),
    }
    message = evaluate_error(source, fields)
    assert fragment in message
    assert parse(source).source in message


def test_numeric_ids_compare_with_numbers() -> None:
    fields = {"id": np.arange(10)}
    np.testing.assert_array_equal(parse("id in [2, 3]").evaluate(fields), np.isin(np.arange(10), [2, 3]))
    assert "cannot compare id (numeric)" in evaluate_error("id == 'ex1'", fields)


def test_object_and_bytes_columns_are_read_as_text() -> None:
    fields = {
        "meta.city": np.array(["Zürich", "Bern", "Genève"], dtype=object),
        "meta.code": np.array([b"ZH", b"BE", b"GE"]),
    }
    mask = parse("meta.city in ['Genève', 'Zürich'] and meta.code != 'GE'").evaluate(fields)
    np.testing.assert_array_equal(mask, [True, False, False])


def test_nan_compares_false_like_numpy() -> None:
    fields = {"meta.x": np.array([np.nan, 0.5, 2.0])}
    np.testing.assert_array_equal(parse("meta.x < 1").evaluate(fields), [False, True, False])
    np.testing.assert_array_equal(parse("meta.x != 1").evaluate(fields), [True, True, True])


def test_arrays_of_different_lengths_are_a_value_error() -> None:
    fields = {"teacher_conf": np.zeros(3), "student_conf": np.zeros(4)}
    with pytest.raises(ValueError, match="has 4 values, expected 3"):
        parse("teacher_conf < student_conf").evaluate(fields)
    with pytest.raises(ValueError, match="has 3 values, expected 5"):
        parse("teacher_conf < 1").evaluate(fields, n=5)
    with pytest.raises(ValueError, match="1-D"):
        parse("teacher_conf < 1").evaluate({"teacher_conf": np.zeros((2, 2))})


def test_deep_nesting_is_an_expression_error() -> None:
    assert "nested" in parse_error("not " * 200 + "teacher_correct")
    assert "cannot parse" in parse_error("(" * 500 + "1" + ")" * 500)
    with pytest.raises(ExpressionError):
        parse("-" * 100_000 + "1 < 2")


# -- fuzzing -------------------------------------------------------------------

SENTINEL_CALLS: list[object] = []
#: modules that may be imported again, already loaded, while an expression is parsed or evaluated:
#: numpy's own (``str(dtype)`` imports one, from C) and unicodedata (Python's parser normalises
#: non-ASCII names with it); anything else is refused
IMPORTED_LIBRARIES = ("numpy", "unicodedata")


def _sentinel(*args: object, **kwargs: object) -> None:
    SENTINEL_CALLS.append(args)


@contextlib.contextmanager
def no_code_execution() -> Iterator[None]:
    """Make eval/exec/open fail, compile refuse anything but an ast, and __import__ refuse user input.

    Inside, parsing and evaluating may only walk the tree: nothing may be compiled
    to code, run, imported or opened, whatever the expression says. The only imports
    allowed are the libraries' own of modules already loaded (``IMPORTED_LIBRARIES``).
    """
    real_compile, real_import = builtins.compile, builtins.__import__

    def library_import(name, globals=None, locals=None, fromlist=(), level=0):  # type: ignore[no-untyped-def]
        package = (globals or {}).get("__package__") or ""
        absolute = importlib.util.resolve_name("." * level + name, package) if level else name
        if absolute.split(".")[0] not in IMPORTED_LIBRARIES or absolute not in sys.modules:
            raise AssertionError(f"user input reached __import__ ({absolute!r})")
        return real_import(name, globals, locals, fromlist, level)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("user input reached eval/exec/__import__/open")

    def ast_only(source, filename, mode, flags=0, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not flags & ast.PyCF_ONLY_AST:
            raise AssertionError("user input was compiled to code")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    names = ("eval", "exec", "compile", "__import__", "open")
    saved = {name: getattr(builtins, name) for name in names}
    for name in names:
        setattr(builtins, name, {"compile": ast_only, "__import__": library_import}.get(name, refuse))
    builtins.distill_sentinel = _sentinel  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(builtins, name, value)
        del builtins.distill_sentinel  # type: ignore[attr-defined]


FUZZ_DATA = {
    **DATA,
    "meta.city": np.array(["Zürich", "Bern"] * (N // 2), dtype=object),
    "meta.mixed": np.array([1, "a"] * (N // 2), dtype=object),
    "meta.holes": np.where(np.arange(N) % 7 == 0, np.nan, DATA["meta.score"]),
    "meta.when": np.arange(N).astype("datetime64[D]"),
}


def check_only_expression_errors(source: str) -> None:
    mask = None
    with no_code_execution():
        try:
            mask = parse(source).evaluate(FUZZ_DATA)
        except ExpressionError:
            pass
    assert not SENTINEL_CALLS
    if mask is not None:
        assert mask.dtype == np.bool_
        assert mask.shape == (N,)


TOKENS = """
    label id teacher_pred student_pred teacher_conf student_conf teacher_margin teacher_entropy
    teacher_correct student_correct meta.region meta.age meta.flagged meta.city meta.mixed
    meta.holes meta.when meta.nope meta quantile 0 1 -1 0.5 1e400 99999999999999999999 'eu' "ex1"
    'é' True False None == != < <= > >= in not and or is = && || ! + - * / ** & | ~ ( ) [ ] { } ,
    : . := lambda for if else __import__ __class__ __builtins__ open eval exec distill_sentinel
    distill_sentinel() f'{label}' yield await
""".split()

# Operands and operators that mostly parse as Python, so that the fuzzing reaches
# the whitelist and the evaluation rather than stopping at syntax errors.
OPERANDS = [
    *TOKENS[:20],
    *"""
    [1,2] ['eu','us'] [] (1,) [1,'a'] [True] quantile(teacher_conf,0.5) quantile(meta.age,1)
    quantile(meta.region,0.5) quantile(id,2) quantile(meta.holes,0.1) quantile(label) 0 -1 0.5 1e400
    99999999999999999999 'eu' 'Zürich' True False None 1j b'x' ... distill_sentinel()
    __import__('os') ().__class__ label[0] f'{label}' (lambda:1) open('x') meta.region.upper()
    """.split(),
]
BINARY = ["==", "!=", "<", "<=", ">", ">=", "in", "not in", "and", "or", "+", "-", "*", "&", "|", "is"]

near_valid = st.recursive(
    st.sampled_from(OPERANDS),
    lambda children: st.one_of(
        st.tuples(children, st.sampled_from(BINARY), children).map(" ".join),
        children.map(lambda c: f"({c})"),
        st.tuples(st.sampled_from(["not ", "-", "~"]), children).map("".join),
    ),
    max_leaves=5,
)


@settings(max_examples=400, deadline=None)
@given(near_valid)
def test_fuzz_near_valid_expressions_only_raise_expression_error(source: str) -> None:
    check_only_expression_errors(source)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12).map(" ".join))
def test_fuzz_token_soup_only_raises_expression_error(source: str) -> None:
    check_only_expression_errors(source)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_random_text_only_raises_expression_error(source: str) -> None:
    check_only_expression_errors(source)


# Random Python expression trees, far beyond the language: calls, attributes, subscripts,
# lambdas, comprehensions, walrus, f-strings, every operator. Each is unparsed to source
# and must still only ever meet the tree-walking evaluator.
_AST_NAMES = [*sorted(FIELDS), "meta", "quantile", "__import__", "eval", "exec", "open", "compile",
              "getattr", "distill_sentinel", "__builtins__", "__class__", "np", "os", "x"]  # fmt: skip
_AST_ATTRS = ["region", "age", "nope", "__class__", "__globals__", "__subclasses__", "system", "upper", "T"]
_NO_ARGS = ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])

ast_leaves = st.one_of(
    st.sampled_from(_AST_NAMES).map(lambda name: ast.Name(name, ast.Load())),
    st.one_of(
        st.integers(-3, 10**20),
        st.floats(allow_nan=False, width=32),
        st.text(max_size=6),
        st.booleans(),
        st.none(),
        st.just(...),
        st.binary(max_size=3),
        st.complex_numbers(max_magnitude=2, allow_nan=False),
    ).map(ast.Constant),
)


def _ast_nodes(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
    ops = st.sampled_from([ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.BitAnd, ast.BitOr,
                           ast.BitXor, ast.LShift, ast.MatMult, ast.FloorDiv])  # fmt: skip
    compare = st.sampled_from([ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is])
    store = ast.Name("v", ast.Store())
    return st.one_of(
        st.tuples(children, st.sampled_from(_AST_ATTRS)).map(lambda t: ast.Attribute(t[0], t[1], ast.Load())),
        st.tuples(children, st.lists(children, max_size=2)).map(lambda t: ast.Call(t[0], t[1], [])),
        st.tuples(children, children).map(lambda t: ast.Subscript(t[0], t[1], ast.Load())),
        st.tuples(children, ops, children).map(lambda t: ast.BinOp(t[0], t[1](), t[2])),
        st.tuples(st.sampled_from([ast.Not, ast.USub, ast.UAdd, ast.Invert]), children).map(
            lambda t: ast.UnaryOp(t[0](), t[1])
        ),
        st.tuples(st.sampled_from([ast.And, ast.Or]), st.lists(children, min_size=2, max_size=3)).map(
            lambda t: ast.BoolOp(t[0](), t[1])
        ),
        st.tuples(children, st.lists(st.tuples(compare, children), min_size=1, max_size=3)).map(
            lambda t: ast.Compare(t[0], [op() for op, _ in t[1]], [c for _, c in t[1]])
        ),
        st.lists(children, max_size=3).map(lambda items: ast.List(items, ast.Load())),
        st.lists(children, max_size=3).map(lambda items: ast.Tuple(items, ast.Load())),
        st.lists(children, min_size=1, max_size=3).map(ast.Set),
        st.lists(st.tuples(children, children), max_size=2).map(
            lambda kv: ast.Dict([k for k, _ in kv], [v for _, v in kv])
        ),
        st.tuples(children, children, children).map(lambda t: ast.IfExp(t[0], t[1], t[2])),
        children.map(lambda body: ast.Lambda(_NO_ARGS, body)),
        st.tuples(children, children).map(lambda t: ast.ListComp(t[0], [ast.comprehension(store, t[1], [], 0)])),
        children.map(lambda value: ast.NamedExpr(store, value)),
        children.map(lambda value: ast.JoinedStr([ast.FormattedValue(value, -1, None)])),
    )


random_trees = st.recursive(ast_leaves, _ast_nodes, max_leaves=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_trees)
def test_fuzz_random_syntax_trees_only_raise_expression_error(tree: ast.expr) -> None:
    try:
        source = ast.unparse(ast.fix_missing_locations(ast.Expression(tree)))
    except ValueError:  # e.g. a backslash inside an f-string's braces: no source text spells this tree
        reject()
    check_only_expression_errors(source)


# Valid expressions from a small grammar, each paired with the same expression
# for a per-example reference: plain Python on one example's scalars, with each
# quantile replaced by np.quantile over the whole field.
SMALL = make_fields(n=24, seed=1)
SMALL["meta.score"] = np.where(np.arange(24) % 5 == 0, np.nan, SMALL["meta.score"])
NUMERIC = ["label", "teacher_pred", "student_pred", "teacher_conf", "student_conf",
           "teacher_margin", "teacher_entropy", "meta.age", "meta.score"]  # fmt: skip
Pair = tuple[str, str]


def _same(text: str) -> Pair:
    return text, text


numbers = st.one_of(
    st.integers(-5, 100).map(str),
    st.floats(-2, 2, allow_nan=False).map(lambda x: repr(round(x, 3))),
)
QUANTILE_FIELDS = NUMERIC[:-1]  # not meta.score: a field with NaNs has no quantile
quantiles = st.tuples(st.sampled_from(QUANTILE_FIELDS), st.sampled_from([0, 0.1, 0.25, 0.5, 0.9, 1])).map(
    lambda t: (f"quantile({t[0]}, {t[1]})", repr(float(np.quantile(SMALL[t[0]], t[1]))))
)
num_terms = st.one_of(
    st.sampled_from(NUMERIC).map(_same),
    numbers.map(_same),
    quantiles,
    st.sampled_from(NUMERIC).map(lambda f: _same(f"-{f}")),
)
orderings = st.lists(
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), num_terms),
    min_size=1,
    max_size=3,
)
strings = st.sampled_from(["'eu'", "'us'", "'apac'", "'mars'"])
string_terms = st.one_of(st.just(_same("meta.region")), strings.map(_same))


def _chain(first: Pair, rest: list[tuple[str, Pair]]) -> Pair:
    src, ref = first
    for op, (s, r) in rest:
        src, ref = f"{src} {op} {s}", f"{ref} {op} {r}"
    return src, ref


def _membership(args: tuple[Pair, str, list[str]]) -> Pair:
    (src, ref), op, items = args
    listed = "[" + ", ".join(items) + "]"
    return f"{src} {op} {listed}", f"{ref} {op} {listed}"


atoms = st.one_of(
    st.sampled_from(["teacher_correct", "student_correct", "meta.flagged", "True"]).map(_same),
    st.builds(_chain, num_terms, orderings),
    st.builds(
        _chain, string_terms, st.lists(st.tuples(st.sampled_from(["==", "!="]), string_terms), min_size=1, max_size=1)
    ),
    st.tuples(num_terms, st.sampled_from(["in", "not in"]), st.lists(numbers, max_size=4)).map(_membership),
    st.tuples(string_terms, st.sampled_from(["in", "not in"]), st.lists(strings, max_size=3)).map(_membership),
    st.tuples(
        st.sampled_from(["teacher_correct", "meta.flagged"]),
        st.sampled_from(["==", "!="]),
        st.sampled_from(["True", "False"]),
    ).map(lambda t: _same(" ".join(t))),
)


def _combine(children: st.SearchStrategy[Pair]) -> st.SearchStrategy[Pair]:
    def join(args: tuple[Pair, str, Pair]) -> Pair:
        (ls, lr), op, (rs, rr) = args
        return f"({ls}) {op} ({rs})", f"({lr}) {op} ({rr})"

    def bare(args: tuple[Pair, str, Pair]) -> Pair:  # no parentheses: precedence
        (ls, lr), op, (rs, rr) = args
        return f"{ls} {op} {rs}", f"{lr} {op} {rr}"

    binary = st.tuples(children, st.sampled_from(["and", "or"]), children)
    return st.one_of(
        binary.map(join),
        binary.map(bare),
        children.map(lambda c: (f"not ({c[0]})", f"not ({c[1]})")),
        children.map(lambda c: (f"not {c[0]}", f"not {c[1]}")),
    )


conditions = st.recursive(atoms, _combine, max_leaves=6)


def reference_mask(ref_source: str) -> np.ndarray:
    code = compile(ref_source, "<reference>", "eval")  # trusted, test-generated text
    result = []
    for i in range(24):
        row = {name: SMALL[name][i].item() for name in FIELDS}
        meta = {name[5:]: SMALL[name][i].item() for name in SMALL if name.startswith("meta.")}
        result.append(bool(eval(code, {"__builtins__": {}}, {**row, "meta": SimpleNamespace(**meta)})))
    return np.array(result)


@settings(max_examples=200, deadline=None)
@given(conditions)
def test_grammar_expressions_match_per_example_python(pair: Pair) -> None:
    source, ref_source = pair
    expected = reference_mask(ref_source)
    with no_code_execution():
        mask = parse(source).evaluate(SMALL)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, expected, err_msg=source)


def test_dunder_strings_are_just_strings() -> None:
    mask = parse('meta.region == \'__import__("os").system("true")\'').evaluate(DATA)
    assert not mask.any()
    assert parse("id != '__class__'").evaluate(DATA).all()
