"""Suite files as pytest collectors: one :class:`CheckItem` per ``[[check]]``.

Node ids are ``<file>::<suite name>::<check id>``. Computing a check happens in
the item's *setup*, so a check that cannot be computed is reported by pytest
as an **error**; judging its bounds happens in the *call*, so a broken bound
is a **failure**.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from distill_eval.errors import DistillError, DistillWarning
from distill_eval.suite import CheckSpec, SuiteSpec, load_suite

if TYPE_CHECKING:  # the plugin imports this module in every pytest run: nothing heavy here
    from distill_eval.config import ProjectConfig
    from distill_eval.results import CheckResult
    from distill_eval.session import DistillSession

SESSION_KEY: pytest.StashKey[DistillSession] = pytest.StashKey()
PROJECT_KEY: pytest.StashKey[ProjectConfig] = pytest.StashKey()


class CheckFailed(Exception):
    """A check broke at least one bound; the message says which, by how much, under which gate."""


class SuiteFile(pytest.File):
    """A ``.toml`` suite file."""

    def collect(self) -> Iterator[pytest.Collector]:
        try:
            spec = load_suite(self.path, self.config.stash[PROJECT_KEY])
        except DistillError as e:
            raise self.CollectError(str(e)) from None
        yield Suite.from_parent(self, name=spec.name, spec=spec)


class Suite(pytest.Collector):
    """The ``[suite]`` of a file; its children are the checks."""

    def __init__(self, *, spec: SuiteSpec, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec

    def collect(self) -> Iterator[pytest.Item]:
        for check in self.spec.checks:
            yield CheckItem.from_parent(self, name=check.id, suite=self.spec, check=check)


class CheckItem(pytest.Item):
    """One check of a suite."""

    def __init__(self, *, suite: SuiteSpec, check: CheckSpec, **kwargs: Any):
        super().__init__(**kwargs)
        self.suite = suite
        self.check = check
        self.result: CheckResult | None = None
        self.escalated = False  # a warn check that a warnings filter turned into a failure
        # `-k calibration` selects every calibration check, whatever its id
        self.extra_keyword_matches.add(check.kind)

    def setup(self) -> None:
        session = self.config.stash[SESSION_KEY]
        try:
            self.result = session.run_check(self.suite, self.check)
        except BaseException as e:
            if isinstance(e, Exception):
                self.result = session.error_result(self.suite, self.check, e)
                session.results.append(self.result)
            raise
        session.results.append(self.result)

    def runtest(self) -> None:
        assert self.result is not None
        if self.result.outcome == "failed":
            raise CheckFailed(self.result.message)
        if self.result.outcome == "warned":
            try:
                warnings.warn(DistillWarning(f"{self.check.id}: {self.result.message}"), stacklevel=1)
            except Warning:
                # `-W error` or `filterwarnings = error` made the warning an exception, so pytest fails
                # this item: the recorded outcome, the verdict and the exit code must say so too.
                self.result.outcome = "failed"
                self.result.message += "; severity 'warn', but a warnings filter turns DistillWarning into an error"
                self.escalated = True
                raise

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # The paragraph starts with the suite file, as a collection error does, so it stands on its own.
        file = self.nodeid.split("::", 1)[0]
        if isinstance(excinfo.value, CheckFailed):
            return (
                f"{file}: {self.check.kind} check '{self.check.id}' of suite '{self.suite.name}' failed: "
                f"{excinfo.value}"
            )
        if isinstance(excinfo.value, DistillError):
            return f"{file}: {self.check.kind} check '{self.check.id}' could not be computed: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.suite.name}::{self.check.id} ({self.check.kind})"
