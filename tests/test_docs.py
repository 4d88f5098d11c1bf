"""The reference pages that ship in ``distill_eval/docs`` against the code they describe.

Every name a user can write or read (check kinds, metrics, parameters, ``where``
fields, config keys, command-line options, results.json keys) is taken from the
code's own registries or from a real run, never from a list kept here, so a name
added to the code without a line in the docs fails this file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import digits
import pytest

from distill_eval import cli, expr
from distill_eval._tables import TableReader
from distill_eval.checks import KINDS
from distill_eval.config import load_project_config, read_toml
from distill_eval.docs import read_topic, topics
from distill_eval.results import CheckResult
from distill_eval.suite import load_suite
from distill_eval.train.config import parse_train_config

ROOT = Path(__file__).resolve().parents[1]


def section(page: str, heading: str) -> str:
    """The part of a Markdown page under the first heading containing ``heading``, up to the next peer heading."""
    lines = page.splitlines()
    for start, line in enumerate(lines):
        if line.startswith("#") and heading in line:
            level = len(line) - len(line.lstrip("#"))
            end = next(
                (
                    i
                    for i in range(start + 1, len(lines))
                    if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
                ),
                len(lines),
            )
            return "\n".join(lines[start:end])
    raise AssertionError(f"no heading containing {heading!r} in the page")


def undocumented(names: set[str] | list[str], text: str) -> list[str]:
    """The names that do not appear as inline code (`` `name` ``, or the start of a code span) in ``text``."""
    return sorted(n for n in names if not re.search("`" + re.escape(n) + r"[`\s=\[]", text))


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, frozenset[str]]]:
    """Every TOML table read while the fixture is active: (where, the keys its reader accepts).

    A reader takes every key it knows before :meth:`TableReader.finish` rejects the
    rest, so the keys known at ``finish`` are exactly the keys the loader accepts.
    """
    seen: list[tuple[str | None, frozenset[str]]] = []
    finish = TableReader.finish

    def recording(self: TableReader) -> None:
        seen.append((self.where, frozenset(self._known)))
        finish(self)

    monkeypatch.setattr(TableReader, "finish", recording)
    return seen


# -- the pages themselves -----------------------------------------------------------


def test_every_topic_is_listed_on_the_index_and_titled() -> None:
    pages = topics()
    assert next(iter(pages)) == "index"
    index = read_topic("index")
    assert undocumented(set(pages) - {"index"}, index) == []
    assert all(pages.values()), pages


def test_the_pages_are_package_data() -> None:
    """A wheel carries the pages only if pyproject.toml lists them as package data."""
    globs = read_toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]
    folder = ROOT / "distill_eval" / "docs"
    packaged = {p for pattern in globs["distill_eval.docs"] for p in folder.glob(pattern)}
    assert packaged == set(folder.glob("*.md")) and packaged


# -- suites ---------------------------------------------------------------------------

# The least a check of each kind needs to be read; other kinds need nothing.
_MINIMAL = {
    "slices": 'slices = [{ name = "a", where = "label == 1" }]',
    "leakage": 'train = "train"',
}


def test_every_kind_metric_and_parameter_is_documented(tmp_path: Path, readers: list) -> None:
    checks = "\n".join(f'[[check]]\nkind = "{kind}"\n{_MINIMAL.get(kind, "")}\n' for kind in KINDS)
    (tmp_path / "gate.toml").write_text(f"[suite]\n{checks}")
    load_suite(tmp_path / "gate.toml")
    page = read_topic("suites")
    suite_keys = {key for where, keys in readers if where == "[suite]" for key in keys}
    assert undocumented(suite_keys, section(page, "The `[suite]` table")) == []
    common = section(page, "Keys every check has")
    check_keys = {where: keys for where, keys in readers if where and where.startswith("check '")}
    tokens = section(page, "## Token-level (language-model) data")
    for kind in KINDS:
        text = section(page, f"## {kind}")
        assert undocumented(set(KINDS[kind].metrics + KINDS[kind].slice_metrics), text) == [], kind
        if KINDS[kind].token_metrics:
            on_tokens = section(tokens, f"### {kind} on token data")
            assert undocumented(set(KINDS[kind].token_metrics), on_tokens) == [], kind
        keys = check_keys[f"check '{kind}'"]
        missing = [key for key in undocumented(keys, text) if undocumented({key}, common)]
        assert missing == [], kind
    slice_keys = {key for where, keys in readers if where and ", slice " in where for key in keys}
    assert slice_keys and undocumented(slice_keys, section(page, "## slices")) == []


def test_every_where_field_is_documented() -> None:
    page = read_topic("where")
    assert undocumented(set(expr.FIELDS) | {"meta.<column>", "quantile(field, q)"}, page) == []


# -- configuration ------------------------------------------------------------------------


def test_every_project_config_key_is_documented(tmp_path: Path, readers: list) -> None:
    (tmp_path / "pyproject.toml").write_text(
        """
[tool.distill_eval]
device = "cpu"
[tool.distill_eval.models.teacher]
path = "teacher.pt2"
[tool.distill_eval.models.student]
factory = "pkg.mod:build"
weights = "student.pt"
[tool.distill_eval.datasets.test]
path = "test.csv"
[tool.distill_eval.datasets.train]
source = "sklearn:digits"
"""
    )
    load_project_config(tmp_path)
    page = read_topic("configuration")
    tables = {
        "[tool.distill_eval]": section(page, "Top-level keys"),
        "[tool.distill_eval.models.": section(page, "## Models"),
        "[tool.distill_eval.datasets.": section(page, "## Datasets"),
    }
    assert len(readers) == 5
    for where, keys in readers:
        (text,) = [text for prefix, text in tables.items() if where.startswith(prefix)]
        assert undocumented(keys, text) == [], where


_TRAIN = """
[data]
train = { source = "sklearn:digits", split = "train" }
val = { path = "val.csv" }
[student]
factory = "pkg.mod:build"
[distill]
epochs = 1
[augment]
noise_std = 0.1
[output]
dir = "out"
"""


@pytest.mark.parametrize(
    "teacher", ['[teacher]\npath = "teacher.pt2"\n', '[teacher]\ntrain = true\nfactory = "pkg.mod:build"\n']
)
def test_every_training_config_key_is_documented(tmp_path: Path, readers: list, teacher: str) -> None:
    (tmp_path / "train.toml").write_text(_TRAIN + teacher)
    parse_train_config(read_toml(tmp_path / "train.toml"), file="train.toml", base=tmp_path)
    page = read_topic("trainer")
    for where, keys in readers:
        if where is None:  # the top level: its keys are the tables, each with a heading of its own
            assert [key for key in keys if f"### `[{key}]`" not in page] == []
            continue
        # "[data] train" is a dataset table inside [data]
        assert undocumented(keys, section(page, f"`{where.split()[0]}`")) == [], where


def test_every_token_training_config_key_is_documented(tmp_path: Path, readers: list) -> None:
    data = (
        'kind = "tokens"\ntrain = { path = "t.jsonl", tokenizer = "bytes", max_length = 8, bos = true }\n'
        'val = { source = "builtin:bytes", seq_len = 8 }\n'
    )
    text = _TRAIN.split("[student]")[1].replace("[augment]\nnoise_std = 0.1\n", "")
    document = f'[data]\n{data}[teacher]\npath = "t.pt2"\n[student]{text}'.replace(
        "epochs = 1", 'epochs = 1\ndivergence = "jsd"'
    )
    (tmp_path / "train.toml").write_text(document)
    parse_train_config(read_toml(tmp_path / "train.toml"), file="train.toml", base=tmp_path)
    page = read_topic("trainer")
    for where, keys in readers:
        if where is not None:
            assert undocumented(keys, section(page, f"`{where.split()[0]}`")) == [], where


# -- command line ----------------------------------------------------------------


def test_every_distill_pytest_option_is_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--help")
    options = set(re.findall(r"(?<![\w-])(--distill[\w-]*)", result.stdout.str()))
    assert "--distill" in options and "--distill-accept" in options
    page = section(read_topic("cli"), "## pytest options")
    assert undocumented(options, page) == []


def _subcommands() -> Iterator[tuple[str, list[str]]]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, subparser in sub.choices.items():
        options = [o for a in subparser._actions for o in a.option_strings if o not in ("-h", "--help")]
        yield name, options


def test_every_subcommand_and_its_options_are_documented() -> None:
    page = read_topic("cli")
    names = [name for name, _ in _subcommands()]
    assert {"train", "report", "predict", "cache", "docs"} <= set(names)
    for name, options in _subcommands():
        text = section(page, f"### distill-eval {name}")
        missing = [o for o in options if not re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])", text)]
        assert missing == [], name


# -- results.json ---------------------------------------------------------------------


def test_every_results_json_key_of_a_real_run_is_documented(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject=digits.pyproject(dataset='source = "sklearn:digits"'))
    (pytester.path / "suites").mkdir()
    checks = '[[check]]\nkind = "agreement"\nid = "kept"\nmin = { top1 = 0.5 }\n'
    checks += '[[check]]\nkind = "agreement"\nid = "dropped"\n'
    (pytester.path / "suites" / "gate.toml").write_text(checks)
    # a -k selection too, so keys written only for a partial run show up as well
    pytester.runpytest("-p", "no:cacheprovider", "--distill", "-k", "kept").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "reports" / "results.json").read_text())
    page = read_topic("results-schema")
    assert undocumented(set(doc), section(page, "## Top-level keys")) == []
    for key in ("models", "datasets", "environment"):
        documented = section(page, f"## `{key}")
        names = {k for entry in doc[key].values() for k in entry} if key != "environment" else set(doc[key])
        assert undocumented(names, documented) == [], key
    assert undocumented(set(doc["suites"][0]), section(page, "## `suites[]`")) == []
    base = CheckResult(suite="s", file="f", gate="estimate", id="c", kind="slices", outcome="passed", slices=[])
    assert undocumented(set(base.to_json()), section(page, "## `suites[].checks[]`")) == []
    (check,) = doc["suites"][0]["checks"]
    (bound,) = check["bounds"]
    assert undocumented(set(bound) | {"slice", "note"}, section(page, "## `suites[].checks[]`")) == []


# -- distill-eval docs ---------------------------------------------------------------


def test_docs_lists_topics_and_prints_a_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["docs"]) == 0
    listing = capsys.readouterr().out
    assert all(re.search(rf"^\s+{re.escape(name)}\s", listing, re.M) for name in topics())
    assert cli.main(["docs", "where"]) == 0
    assert capsys.readouterr().out == read_topic("where")


def test_docs_unknown_topic_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["docs", "sutes"]) == 2
    err = capsys.readouterr().err
    assert "unknown topic 'sutes' (did you mean 'suites'?)" in err
    with pytest.raises(KeyError):
        read_topic("../cli")


def test_docs_works_from_the_console_script_door(pytester: pytest.Pytester) -> None:
    result = pytester.run(sys.executable, "-m", "distill_eval", "docs", "statistics")
    assert result.ret == 0
    assert result.stdout.str().startswith("# Statistics")


# -- no citation of an unshipped document --------------------------------------------

_WORD = "SP" + "EC"  # spelt in two, so this file does not cite it either
_SKIP_DIRS = {".git", "__pycache__", "node_modules", ".distill_cache", ".ruff_cache", ".pytest_cache", "build", "dist"}


def _project_files() -> Iterator[Path]:
    for folder, dirs, files in os.walk(ROOT):
        # a virtual environment, whatever its name, holds a pyvenv.cfg at its top
        dirs[:] = [
            d
            for d in dirs
            if d not in _SKIP_DIRS
            and not d.endswith(".egg-info")
            and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
        ]
        for name in files:
            path = Path(folder, name)
            if path.stat().st_size < 2_000_000:
                yield path


def test_nothing_cites_a_document_users_do_not_have() -> None:
    hits = []
    for path in _project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files: weights, images
        for number, line in enumerate(text.splitlines(), start=1):
            if re.search(rf"\b{_WORD}\b", line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == [], "\n".join(hits)
