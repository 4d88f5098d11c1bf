"""The reference pages that ship with distill_eval: ``distill-eval docs [TOPIC]``.

Each topic is one Markdown file in this folder (installed as package data), so
the reference travels with the code it describes and ``tests/test_docs.py``
checks it against the code's own registries.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["read_topic", "topics"]


def topics() -> dict[str, str]:
    """Every topic, by name, with its one-line summary (the page's first heading).

    Returns
    -------
    dict of str to str
        ``{"suites": "Suite files: check kinds, metrics, bounds", ...}``, ``index`` first,
        the rest in alphabetical order.
    """
    names = sorted(
        entry.name[: -len(".md")] for entry in resources.files(__name__).iterdir() if entry.name.endswith(".md")
    )
    names.sort(key=lambda name: name != "index")
    return {name: _title(read_topic(name)) for name in names}


def read_topic(name: str) -> str:
    """The Markdown text of one topic.

    Parameters
    ----------
    name : str
        A topic name, as listed by :func:`topics` (``"suites"``, ``"cli"``, ...).

    Returns
    -------
    str
        The page.

    Raises
    ------
    KeyError
        When there is no such topic.
    """
    page = resources.files(__name__).joinpath(f"{name}.md")
    if "/" in name or "\\" in name or not page.is_file():
        raise KeyError(name)
    return page.read_text(encoding="utf-8")


def _title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""
