"""Atomic file writes and advisory locks: a reader never sees half a file, a crash leaves none.

:func:`atomic_write` writes through a temporary file that no reader opens (its name starts
with a dot and ends in ``.tmp``, and holds the writer's pid), then renames it over the
destination with :func:`os.replace`, which is atomic on POSIX and Windows. :func:`file_lock`
is an advisory lock (``flock``) that lets the output cache make a pair of files change
together; where locks are unsupported it degrades to no lock, never to an error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:  # POSIX only; elsewhere file_lock holds nothing
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: what every temporary file of :func:`atomic_write` ends with
TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object] | bytes) -> None:
    """Write ``path`` via a temporary file in the same folder, fsync, then rename.

    Parameters
    ----------
    path : str or Path
        The destination; its folder is created if needed.
    write : bytes or callable
        The content, or a function that writes it to a binary file object.

    Notes
    -----
    The temporary file is ``.<name>.<pid>.<random>.tmp`` next to ``path``, created
    exclusively (:func:`tempfile.mkstemp`), so concurrent writers of the same path
    never share one, and the last rename wins whole. A process killed mid-write
    leaves only its temporary file, which nothing reads (the pid in its name tells
    ``distill-eval cache`` whose it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would, so reports and a
        # shared cache stay readable as the umask allows
        os.chmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@functools.cache
def _file_mode() -> int:
    """0666 less the process's umask: the mode ``open(path, "w")`` gives a new file."""
    try:  # Linux says it without changing it
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)  # elsewhere reading it means setting it: restored at once
        os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_writer_pid(name: str) -> int | None:
    """The pid in the name of an :func:`atomic_write` temporary file, or None if it has none."""
    if not name.endswith(TEMP_SUFFIX):
        return None
    parts = name[: -len(TEMP_SUFFIX)].split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


class LockTimeout(TimeoutError):
    """Another process held a :func:`file_lock` for longer than the caller would wait."""


@contextlib.contextmanager
def file_lock(path: str | Path, *, shared: bool = False, timeout: float | None = None) -> Iterator[bool]:
    """Hold an advisory ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Parameters
    ----------
    path : str or Path
        The lock file. It is never deleted: removing a lock file that another
        process has open would let two holders lock two different files.
    shared : bool, default False
        A shared (reader) lock instead of an exclusive (writer) one.
    timeout : float, optional
        Seconds to wait for the lock; None waits as long as it takes.

    Yields
    ------
    bool
        Whether a lock is held. False where locks are unsupported (no ``fcntl``,
        a read-only folder, a file system that refuses ``flock``): callers must
        stay correct without it.

    Raises
    ------
    LockTimeout
        When ``timeout`` passed first.
    """
    fd = _open_lock(Path(path))
    if fd is None:
        yield False
        return
    try:
        held = _acquire(fd, shared=shared, timeout=timeout, path=Path(path))
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _open_lock(path: Path) -> int | None:
    if fcntl is None:
        return None
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # flock works on a read-only descriptor too
        try:
            return os.open(path, flags, 0o666)
        except OSError:
            continue
    return None


def _acquire(fd: int, *, shared: bool, timeout: float | None, path: Path) -> bool:
    assert fcntl is not None
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, mode | (0 if deadline is None else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            assert deadline is not None
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{path} stayed locked by another process for {timeout:g} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
            return False
