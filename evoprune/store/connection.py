"""Opening a store's SQLite file for reading, and one accurate line when it cannot be opened."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from evoprune.errors import EvopruneError


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` that cannot write, with ``sqlite3.Row`` rows.

    Where the file could be written, a ``query_only`` connection: closing last, it removes the
    ``-wal`` and ``-shm`` files, which a ``mode=ro`` one leaves behind. Elsewhere (read-only
    media, someone else's file) ``mode=ro``, or ``immutable`` where SQLite cannot create the
    ``-shm`` file a WAL store needs. Raises ``sqlite3.DatabaseError`` as ``sqlite3.connect`` does.
    """
    if path.is_file() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()
            raise
    else:
        uri = path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # Nobody can write there either, so reading the file as immutable sees the same data.
            conn.close()
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        except BaseException:  # not a database: the caller reports it, and no handle stays open
            conn.close()
            raise
    conn.row_factory = sqlite3.Row
    return conn


def open_error(path: Path, exc: sqlite3.DatabaseError) -> EvopruneError:
    """One accurate line for a store that cannot be opened: not SQLite, not evoprune, or not writable."""
    text = str(exc)
    fix = "pass a store 'evoprune search' wrote, or a new file name to start one"
    if "file is not a database" in text or "file is encrypted" in text:
        return EvopruneError(f"'{path}' is not an evoprune store (not a SQLite database): {fix}")
    if "no such table" in text:
        if path.is_file() and path.stat().st_size == 0:
            return EvopruneError(f"'{path}' is an empty file, not an evoprune store: {fix}")
        return EvopruneError(f"'{path}' is a SQLite database but not an evoprune store (no meta table): {fix}")
    if not path.parent.is_dir():
        return EvopruneError(
            f"store '{path}': directory '{path.parent}' does not exist: create it or pass another --store"
        )
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return EvopruneError(
            f"store '{path}' cannot be written ({text}): the file or its directory is read-only; "
            "copy the store to a writable location or pass another --store"
        )
    return EvopruneError(f"could not open store '{path}': {text}")
