"""Progress lines: what a long computation tells the user while it runs.

One home for the run's one-line messages. :func:`terminal_log` is the sink the
pytest plugin gives its session: every message is a whole line on pytest's
terminal (``distill_eval: ...``), written through the terminal reporter with
output capture suspended, so it never lands in the middle of a line of
progress dots (the reporter ends that line first, and starts a fresh one for
the next result). :class:`Progress` sends such lines for one long piece of
work, rate-limited: nothing for work that ends within ``every`` seconds, then
at most one line every ``every`` seconds, and a closing line with the total
time when any line was sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["Log", "Progress", "terminal_log"]

#: a sink for one-line messages
Log = Callable[[str], None]

#: seconds between two progress lines of one piece of work (and before the first)
EVERY_S = 5.0


def terminal_log(config: Any) -> Log:
    """A :data:`Log` that writes ``distill_eval: <message>`` lines on pytest's terminal.

    Parameters
    ----------
    config : pytest.Config
        The run's config. Nothing is written under ``-q`` (verbosity below 0)
        or without a terminal reporter.
    """
    verbose = config.get_verbosity() >= 0

    def log(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if not verbose or reporter is None:
            return
        if capture is None:
            reporter.write_line(f"distill_eval: {message}")
            return
        # Work happens inside a test's setup or call, where output is captured; progress must reach the terminal.
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"distill_eval: {message}")

    return log


class Progress:
    """Rate-limited progress lines for one piece of work of ``total`` steps.

    Parameters
    ----------
    log : callable or None
        Receives each line; None makes every call a no-op.
    what : str
        Names the work, e.g. ``"leakage 'clean': near-duplicate search"``.
    total : int
        Steps in all (examples, candidates, ...).
    unit : str, default "examples"
        What a step is, for the lines.
    every : float, optional
        Seconds before the first line and between two lines; default
        :data:`EVERY_S` (5 s).
    clock : callable, default time.monotonic
        The time source (tests pass a fake one).

    Examples
    --------
    >>> lines = []
    >>> ticks = iter([0.0, 6.0, 7.0, 12.5, 13.0])
    >>> p = Progress(lines.append, "search", 100, every=5.0, clock=lambda: next(ticks))
    >>> p.update(10); p.update(20); p.update(100); p.close()
    >>> lines
    ['search: 10/100 examples (10%), 6 s so far, about 54 s left', 'search: 100/100 examples (100%), 12 s so far', \
'search: done in 13 s']
    """

    def __init__(
        self,
        log: Log | None,
        what: str,
        total: int,
        *,
        unit: str = "examples",
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = log
        self.what = what
        self.total = max(int(total), 0)
        self.unit = unit
        self.every = EVERY_S if every is None else every
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self.lines = 0

    def update(self, done: int, total: int | None = None) -> None:
        """Say how far the work is, when ``every`` seconds passed since the start or the last line.

        ``total`` replaces the total given at the start (work whose size is known only later).
        """
        if total is not None:
            self.total = max(int(total), 0)
        if self._log is None:
            return
        now = self._clock()
        if now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self._start
        share = done / self.total if self.total else 1.0
        line = f"{self.what}: {done:,}/{self.total:,} {self.unit} ({share:.0%}), {elapsed:.0f} s so far"
        if 0 < share < 1:
            line += f", about {elapsed * (1 - share) / share:.0f} s left"
        self.lines += 1
        self._log(line)

    def close(self) -> None:
        """The closing line with the total time, when any progress line was sent."""
        if self._log is not None and self.lines:
            self._log(f"{self.what}: done in {self._clock() - self._start:.0f} s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
