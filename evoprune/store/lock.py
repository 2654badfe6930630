"""One searching process per store: an advisory lock on a file next to the store.

Two searches writing one store would both pick up each other's pending rows, spend the same
budget and race to insert the same run; SQLite keeps every write whole but not the search
consistent. ``search_lock`` lets the first process search and refuses the second with one
line. The lock is the operating system's (``flock`` / ``msvcrt.locking``), so it goes away with
its process, even after SIGKILL; the ``.lock`` file stays, like SQLite's ``-wal`` file, and is
never deleted (deleting it would let two processes lock two different files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evoprune.errors import EvopruneError


def lock_path(store: str | Path) -> Path:
    p = Path(store)
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
def search_lock(store: str | Path) -> Iterator[None]:
    """Hold the store's search lock for the ``with`` block.

    Raises ``EvopruneError`` when another process holds it. A store whose directory cannot be
    written gets no lock: opening the store for writing reports that problem more precisely.
    """
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        if not _try_lock(fd):
            raise EvopruneError(
                f"store '{store}' is in use by another evoprune search ({_holder(fd)}): "
                "wait for it to finish, then run the command again (it continues the same run), or pass another --store"
            )
        # Who holds it, for the refusal message of the next process (the lock itself is the OS's).
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
