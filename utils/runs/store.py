"""Files that are never seen half-written, and folders that one run writes at a time.

A results folder is read while it is written: notebook 04 or a second terminal reads tables
that a run is replacing, and two runs may be started on one model. Writing a file in place
lets a reader see it empty or cut short, and lets it see a new CSV beside the old
``.meta.json`` (another run's rows under this run's key). So:

* :func:`write_atomically` writes a temporary file in the same folder and renames it over
  the target (``os.replace``, atomic on POSIX and Windows): a reader sees the old file or
  the new one, whole. A table is two files; the CSV is replaced first and its metadata,
  which records the CSV's digest, last, so a reader that finds the two out of step knows
  it (:mod:`utils.runs.results` reads them again, and refuses them if they stay so).
  Nothing is fsync'ed: this guards against concurrent readers and interrupted runs, not
  against a power cut.
* :func:`folder_lock` is an exclusive ``fcntl.flock`` on ``<folder>/.lock``, held while a
  table and its metadata are replaced. A write takes milliseconds, so a second writer
  *waits* for it, up to :data:`WRITE_WAIT` seconds, and then stops with
  :class:`ResultsBusy` naming the holder (its pid, host, what it writes, since when).
* :func:`run_lock` is the same lock on a sweep's journal, held for the whole sweep. A second
  run of the same sweep would compute the same facts again and append to the same journal,
  so it does not wait (a sweep may take hours): it stops at once with :class:`ResultsBusy`,
  before computing anything. Different sweeps of one model run side by side.

``flock`` locks belong to an open file, are released when the process ends (``kill -9``
included, so no stale lock is left) and hold on a local disk; where the file system has no
locks (some network mounts) or the folder cannot be written (nothing will be written there
either) the lock is skipped with a warning or silently, and on a platform without ``fcntl``
runs are not guarded against each other.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
WRITE_WAIT = 60.0
"""Seconds a writer waits for another run's table write to finish before it gives up."""
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class ResultsBusy(RuntimeError):
    """Another run holds the lock of a results folder or of a sweep."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""What ``open()`` would have given the file (a temporary file is created private)."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that no reader ever sees it partly written (see the module docs)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if hasattr(os, "fchmod"):
                os.fchmod(out.fileno(), _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def holder(lock_path: Path) -> str:
    """Who holds a lock, as its holder wrote it down (``"unknown"`` if it did not yet)."""
    try:
        info = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a run that has not said who it is"
    return f"pid {info.get('pid')} on {info.get('host')}, {info.get('what')}, since {info.get('since')}"


@contextlib.contextmanager
def _flock(lock_path: Path, what: str, wait: float | None, busy: str):
    """Hold an exclusive flock on ``lock_path``; ``wait`` None: fail at once when it is held."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a folder this process cannot write: it writes nothing there either
        yield False
        return
    try:
        locked = fcntl is not None
        deadline = time.monotonic() + (wait or 0.0)
        while locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None or time.monotonic() >= deadline:
                    waited = f" (waited {wait:g} s)" if wait else ""
                    raise ResultsBusy(f"{busy}: held by {holder(lock_path)}{waited}. Wait for that run to finish "
                                      f"(or stop it); its lock goes away with it (lock file: {lock_path})") from None
                time.sleep(0.02)
            except OSError as err:
                if err.errno not in _NO_LOCKS:
                    raise
                warnings.warn(f"{lock_path.parent}: the file system has no locks; runs writing it at the same time "
                              "are not kept apart", stacklevel=4)
                locked = False
        if locked:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                    "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield locked
        finally:
            if locked:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def folder_lock(folder: Path, what: str, wait: float | None = None):
    """The lock on a results folder's table writes (waits up to :data:`WRITE_WAIT` s by default)."""
    folder = Path(folder)
    return _flock(folder / LOCK_NAME, what, WRITE_WAIT if wait is None else wait,
                  f"{folder} is being written by another run")


def run_lock(journal: Path, what: str):
    """The lock of one sweep (its journal), held while it runs; a second run stops at once."""
    journal = Path(journal)
    return _flock(journal.with_suffix(".lock"), what, None, f"another run is computing {what} into {journal.parent.parent}")


def open_journal(path: Path, fresh: bool):
    """The journal opened for appending (``fresh``: emptied first). An entry an interrupted
    run cut short is ended first, so that the next entry starts on its own line instead of
    being glued to the broken one and lost with it."""
    path = Path(path)
    log = open(path, "w" if fresh else "a")
    if not fresh and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                log.write("\n")
    return log


__all__ = ["LOCK_NAME", "WRITE_WAIT", "ResultsBusy", "folder_lock", "holder", "open_journal",
           "run_lock", "write_atomically"]
