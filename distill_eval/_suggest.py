"""'Did you mean ...?' hints for unknown names in user input."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``.

    Parameters
    ----------
    name : str
        The unknown name the user wrote.
    candidates : iterable of str
        The valid names.

    Examples
    --------
    >>> did_you_mean("student_ec", ["student_ece", "teacher_ece"])
    " (did you mean 'student_ece'?)"
    """
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def one_of(candidates: Iterable[str]) -> str:
    """Format valid names for a message: ``'a', 'b' or 'c'``."""
    names = [f"'{c}'" for c in sorted(candidates)]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]
