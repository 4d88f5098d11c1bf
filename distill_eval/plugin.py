"""The pytest plugin: options, configuration, collection and the end of the run.

Only hooks live here. State lives in one :class:`~distill_eval.session.DistillSession`
per run, stored in ``config.stash``; suite files become items in
:mod:`distill_eval.collect`; reports are rendered by :mod:`distill_eval.report`.
Without ``--distill`` none of these hooks changes anything.

pytest imports this module in every run, through the ``pytest11`` entry point,
so it imports only pytest and pure-Python parts of the package at module level;
the session (numpy, torch, scipy, the check kinds), pytest-xdist support and the
reports are imported once ``--distill`` is given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from distill_eval import hookspec
from distill_eval.collect import PROJECT_KEY, SESSION_KEY, CheckItem, SuiteFile
from distill_eval.errors import DistillError
from distill_eval.suite import GATES

if TYPE_CHECKING:
    from distill_eval.baseline import Acceptance

ACCEPTANCE_KEY: pytest.StashKey[Acceptance] = pytest.StashKey()
SYS_PATH_KEY: pytest.StashKey[str] = pytest.StashKey()  # the project root this plugin put on sys.path


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("distill", "distill_eval: gate a distilled student against its teacher")
    group.addoption(
        "--distill",
        action="store_true",
        default=False,
        help="collect and run the distill_eval suites (default: off; the plugin then changes nothing)",
    )
    group.addoption(
        "--distill-model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load model NAME from PATH instead of the configured one; repeatable (default: none)",
    )
    group.addoption(
        "--distill-student",
        metavar="PATH",
        default=None,
        help="shorthand for --distill-model student=PATH (default: none)",
    )
    group.addoption(
        "--distill-teacher",
        metavar="PATH",
        default=None,
        help="shorthand for --distill-model teacher=PATH (default: none)",
    )
    group.addoption(
        "--distill-dataset",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load dataset NAME from PATH (or a built-in sklearn:NAME); repeatable (default: none)",
    )
    group.addoption(
        "--distill-reports",
        metavar="DIR",
        default=None,
        help="write results.json, report.html and summary.md to DIR (default: the configured "
        "'reports', else ./reports)",
    )
    group.addoption(
        "--distill-gate",
        metavar="MODE",
        default=None,
        choices=GATES,
        help="override every suite's gate mode: estimate, strict or lenient (default: each suite's own)",
    )
    group.addoption(
        "--distill-device",
        metavar="DEV",
        default=None,
        help="run models on DEV: cpu, cuda, cuda:N or auto (default: the configured 'device', else auto)",
    )
    group.addoption(
        "--distill-no-cache",
        action="store_true",
        default=False,
        help="recompute every model output, leakage search and slice discovery instead of reading the cache "
        "(default: use the cache)",
    )
    group.addoption(
        "--distill-accept",
        action="store_true",
        default=False,
        help="after the run, store its results as the accepted baseline that 'regression' checks compare "
        "with, at the configured 'baseline' path; refused if any check errored (default: off, never written)",
    )


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise pytest.UsageError(f"{option} expects NAME=PATH, got {value!r}")
        if name in out:
            raise pytest.UsageError(f"{option} gives model or dataset {name!r} twice")
        out[name] = path
    return out


def _project_root(config: pytest.Config) -> Path:
    """pytest's rootdir, unless it holds no pyproject.toml: then the nearest one above the invocation dir.

    pytest fixes its rootdir before plugins register their options, so the value of
    ``--distill-student PATH`` (with a space) counts as a path when it decides; a
    student file outside the project then moves the rootdir next to it.
    ``--distill-student=PATH`` avoids that; this fallback keeps the project config.
    """
    root = config.rootpath
    if (root / "pyproject.toml").is_file():
        return root
    here = Path(config.invocation_params.dir)
    return next((d for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), root)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("distill"):
        return
    from distill_eval import xdist
    from distill_eval.config import load_project_config
    from distill_eval.progress import terminal_log
    from distill_eval.session import DistillSession

    models = _pairs(config.getoption("distill_model"), "--distill-model")
    for role in ("student", "teacher"):
        path = config.getoption(f"distill_{role}")
        if path is not None:
            if role in models:
                raise pytest.UsageError(f"--distill-{role} and --distill-model {role}=... both set model '{role}'")
            models[role] = path
    device = config.getoption("distill_device")
    if device is not None and device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
        raise pytest.UsageError(f"--distill-device must be cpu, cuda, cuda:N, mps or auto, got {device!r}")
    try:
        project = load_project_config(_project_root(config)).with_overrides(
            models=models,
            datasets=_pairs(config.getoption("distill_dataset"), "--distill-dataset"),
            reports=config.getoption("distill_reports"),
            device=device,
            base=config.invocation_params.dir,
        )
    except DistillError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[PROJECT_KEY] = project
    # Factory modules and conftest helpers of the project import as they do from its root, wherever
    # pytest was started (`cd suites && pytest --distill`); taken off again in pytest_unconfigure.
    sys.path.insert(0, str(project.rootdir))
    config.stash[SYS_PATH_KEY] = str(project.rootdir)
    config.stash[SESSION_KEY] = DistillSession(
        project,
        use_cache=not config.getoption("distill_no_cache"),
        gate=config.getoption("distill_gate"),
        load_model_hook=lambda name, spec: config.hook.pytest_distill_load_model(name=name, spec=spec, config=config),
        load_dataset_hook=lambda name, spec: config.hook.pytest_distill_load_dataset(
            name=name, spec=spec, config=config
        ),
        log=terminal_log(config),
    )
    if xdist.is_controller(config):
        config.pluginmanager.register(xdist.Gatherer(config.stash[SESSION_KEY]), "distill_eval.xdist")
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # `pytest --distill` with no paths runs the suites, not the ini `testpaths`.
        if not project.suites.is_dir():
            raise pytest.UsageError(
                f"the suites folder {project.suites} does not exist; create it with a suite file, or set "
                "'suites' in [tool.distill_eval] of pyproject.toml"
            )
        config.args[:] = [str(project.suites)]


def _named(config: pytest.Config, path: Path) -> bool:
    """Whether ``path`` was named on the command line (alone or with ``::`` node names)."""
    explicit = {Path(config.invocation_params.dir, a.split("::")[0]).resolve() for a in config.args}
    return path.resolve() in explicit


def _is_suite(config: pytest.Config, path: Path) -> bool:
    project = config.stash[PROJECT_KEY]
    # a .toml named explicitly on the command line is a suite wherever it lives
    return path.is_relative_to(project.suites) or _named(config, path)


class MissingDistillFlag(pytest.File):
    """A suite file named on the command line without ``--distill``: says how to run it."""

    def collect(self) -> list[pytest.Item]:
        shown = self.nodeid.split("::")[0] or self.path.name
        raise self.CollectError(
            f"{shown} is a distill_eval suite; its checks run only with --distill: python -m pytest --distill {shown}"
        )


def _looks_like_suite(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "[[check]]" in text or "[suite]" in text


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    config = parent.config
    if file_path.suffix != ".toml":
        return None
    if PROJECT_KEY not in config.stash:
        # Without --distill a suite named on the command line would be "not found", which misleads.
        if not config.getoption("distill") and _named(config, file_path) and _looks_like_suite(file_path):
            return MissingDistillFlag.from_parent(parent, path=file_path)
        return None
    if not _is_suite(config, file_path):
        return None
    # Node ids relative to the project root, as results.json's files are, whatever pytest's rootdir.
    root = config.stash[PROJECT_KEY].rootdir
    nodeid = file_path.relative_to(root).as_posix() if file_path.is_relative_to(root) else None
    return SuiteFile.from_parent(parent, path=file_path, nodeid=nodeid)


@pytest.hookimpl(trylast=True)  # after -k and -m deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SESSION_KEY not in config.stash:
        return
    from distill_eval import xdist

    if xdist.is_worker(config):
        # A worker cannot stop the session with a usage error (xdist reports a crash): under -n N each
        # check that needs a missing file is an error of its own, naming it.
        return
    checks = [item.check for item in items if isinstance(item, CheckItem)]
    # a pytest_distill_load_* hook (a conftest's) may provide a model or dataset without its file
    hooks = config.pluginmanager.hook
    missing = config.stash[SESSION_KEY].missing_files(
        checks,
        models=not hooks.pytest_distill_load_model.get_hookimpls(),
        datasets=not hooks.pytest_distill_load_dataset.get_hookimpls(),
    )
    if missing:
        listed = "\n".join(f"  {line}" for line in missing)
        raise pytest.UsageError(
            f"{len(missing)} file(s) the selected checks need do not exist; no check ran:\n{listed}\n"
            "fix the paths in [tool.distill_eval] of pyproject.toml or on the command line"
        )


def pytest_deselected(items: list[pytest.Item]) -> None:
    checks = [item for item in items if isinstance(item, CheckItem)]
    if not checks:
        return
    from distill_eval.results import project_file

    config = checks[0].config
    state = config.stash[SESSION_KEY]
    for item in checks:
        entry = {
            "suite": item.suite.name,
            "file": project_file(item.suite.file, state.project.rootdir),
            "id": item.check.id,
            "kind": item.check.kind,
        }
        if entry not in state.deselected:
            state.deselected.append(entry)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if not isinstance(item, CheckItem):
        return report
    if call.excinfo is not None and isinstance(call.excinfo.value, DistillError):
        # A user's mistake or unusable data reads as a sentence, not a traceback.
        report.longrepr = item.repr_failure(call.excinfo)
    from distill_eval import xdist

    if xdist.is_worker(item.config):
        xdist.attach(report, item, item.result, again=item.escalated)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if SESSION_KEY not in config.stash:
        return
    from distill_eval import xdist

    state = config.stash[SESSION_KEY]
    if xdist.is_worker(config):
        xdist.send_provenance(config, state)  # the controller writes the reports
        return
    if not state.results:
        return
    from distill_eval.report import write_reports

    state.written = write_reports(state, command=["pytest", *config.invocation_params.args])
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(state.written["summary.md"].read_text() + "\n")
    if config.getoption("distill_accept"):
        from distill_eval.baseline import accept

        config.stash[ACCEPTANCE_KEY] = accept(
            state.results, state.written["results.json"], state.project.baseline, root=state.project.rootdir
        )
        if config.stash[ACCEPTANCE_KEY].written:  # token regression checks compare per sequence: store those sums
            from distill_eval.baseline import write_token_records

            write_token_records(state.project.baseline, state.token_baseline_records)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if SESSION_KEY not in config.stash:
        return
    state = config.stash[SESSION_KEY]
    written = state.written
    if config.getoption("distill_accept") and ACCEPTANCE_KEY not in config.stash:
        terminalreporter.write_line("--distill-accept: no check ran; no baseline written")
    if not written:
        return
    from distill_eval.results import verdict

    folder = next(iter(written.values())).parent
    try:
        folder = folder.relative_to(config.invocation_params.dir)
    except ValueError:
        pass
    terminalreporter.write_sep("-", "distill_eval")
    partial = f" (partial run: {len(state.deselected)} check(s) deselected)" if state.deselected else ""
    terminalreporter.write_line(
        f"verdict: {verdict(state.results)}{partial}; reports written to {folder}/ ({', '.join(written)})"
    )
    if state.deselected:
        names = ", ".join(f"{d['suite']}::{d['id']}" for d in state.deselected)
        terminalreporter.write_line(f"deselected, not judged: {names}")
    if ACCEPTANCE_KEY in config.stash:
        terminalreporter.write_line(config.stash[ACCEPTANCE_KEY].describe(config.invocation_params.dir))
    if state.cache.enabled and config.get_verbosity() >= 0:
        from distill_eval.outputs import format_size

        entries, size = state.cache.usage()
        cache = state.cache.folder
        if cache.is_relative_to(config.invocation_params.dir):
            cache = cache.relative_to(config.invocation_params.dir)
        held = f"{entries} {'entry' if entries == 1 else 'entries'}, {format_size(size)}"
        terminalreporter.write_line(f"output cache: {held} in {cache}/ (distill-eval cache lists them)")


def pytest_unconfigure(config: pytest.Config) -> None:
    entry = config.stash.get(SYS_PATH_KEY, None)
    if entry is not None and entry in sys.path:
        sys.path.remove(entry)  # the first occurrence: the one pytest_configure put in front
