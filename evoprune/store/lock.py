"""One process at a time on a path: an advisory lock on a ``.lock`` file next to it.

``path_lock`` holds the lock on ``PATH.lock`` for a ``with`` block and refuses a second process
with one line (``EvopruneError``, naming the holder's pid). Two users: ``search_lock``, one
searching process per store (two searches writing one store would both pick up each other's
pending rows, spend the same budget and race to insert the same run; SQLite keeps every write
whole but not the search consistent), and ``evoprune recover``, one recovery per output
directory (two would overwrite each other's checkpoint). The lock is the operating system's
(``flock`` / ``msvcrt.locking``), so it goes away with its process, even after SIGKILL; the
``.lock`` file stays, like SQLite's ``-wal`` file (deleting it could let two processes lock two
different files). One exception: a block that fails with ``EvopruneError`` (bad input), or fails in
any way before the guarded path exists, removes a lock file it created, while still holding it, so
that bad input or an early Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from evoprune.errors import EvopruneError


def lock_path(path: str | Path) -> Path:
    """The lock file of ``path``: ``PATH.lock`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 64).decode(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def path_lock(path: str | Path, refusal: Callable[[str], str]) -> Iterator[None]:
    """Hold the lock on ``lock_path(path)`` for the ``with`` block.

    When another process holds it, raises ``EvopruneError(refusal(holder))``, ``holder`` being
    ``"pid N"`` (or ``"another process"`` when the file does not say). A directory where the
    lock file cannot be created (or a path with no name, such as ``/``) gets no lock: writing
    there reports that problem more precisely.
    """
    lock = lock_path(path)
    try:
        created = not lock.exists()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except (OSError, ValueError):
        yield
        return
    try:
        if not _try_lock(fd):
            raise EvopruneError(refusal(_holder(fd)))
        # Who holds it, for the refusal message of the next process (the lock itself is the OS's).
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()}".encode())
        try:
            yield
        except BaseException as exc:
            # Bad input, or an interruption before the guarded path was made (Ctrl-C while a model
            # loads), leaves nothing behind: the file goes while this process holds its lock.
            if created and (isinstance(exc, EvopruneError) or not Path(path).exists()):
                with suppress(OSError):
                    lock.unlink()
            raise
    finally:
        os.close(fd)  # releases the lock


def _store_in_use(store: str | Path) -> Callable[[str], str]:
    return lambda holder: (
        f"store '{store}' is in use by another evoprune search ({holder}): "
        "wait for it to finish, then run the command again (it continues the same run), or pass another --store"
    )


def search_lock(store: str | Path) -> AbstractContextManager[None]:
    """Hold the store's search lock for the ``with`` block.

    Raises ``EvopruneError`` when another process holds it. A store whose directory cannot be
    written gets no lock: opening the store for writing reports that problem more precisely.
    """
    return path_lock(store, _store_in_use(store))
