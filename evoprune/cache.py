"""Where evoprune keeps what is expensive to recompute: converted models, importance scores, latency tables.

``cache_dir`` is where the parts of evoprune that cache write; ``cache_entries`` and ``clear_cache``
are what a user needs to see and reclaim that space (``evoprune cache list`` / ``evoprune cache
clear``). Everything in the cache is recomputed on next use when missing: clearing it costs time,
never results.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evoprune.errors import EvopruneError

#: The cache's folders, in the order they are listed, and what each holds.
KINDS = {
    "models": "models converted to plain transformers folders (e.g. SmolLM2-135M de-quantized from GGUF)",
    "importance": "importance scores and calibration statistics (input means and covariances)",
    "latency": "measured latency tables, per search space and machine",
}
#: The metadata key under which a cached safetensors file says what it holds, in words.
ABOUT_KEY = "evoprune.about"
_LEFTOVER_SUFFIXES = (".partial", ".tmp")  # written by a process that was stopped before it finished


def cache_root() -> Path:
    """``$EVOPRUNE_CACHE_DIR``, or ``~/.cache/evoprune`` when that is unset or empty (not created)."""
    return Path(os.environ.get("EVOPRUNE_CACHE_DIR") or Path.home() / ".cache" / "evoprune")


def cache_dir(*parts: str) -> Path:
    """``cache_root()`` joined with ``parts``, created. Raises EvopruneError when it cannot be (a
    read-only disk, a file in the way), naming ``EVOPRUNE_CACHE_DIR``."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvopruneError(
            f"the evoprune cache folder {path} cannot be created ({exc.strerror or exc}): "
            "set EVOPRUNE_CACHE_DIR to a folder you can write to"
        ) from None
    return path


def mark_used(path: Path) -> None:
    """Set ``path``'s access time to now (its modification time kept) when evoprune reuses it:
    ``relatime`` mounts refresh access times about once a day, so `cache list` and `clear
    --older-than` would otherwise see an entry reused a minute ago as unused since it was made.
    Never raises (a read-only cache is still usable)."""
    with contextlib.suppress(OSError):
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache: a model folder, an importance or covariance file, a latency table,
    or the leftover of a process stopped while writing one.

    ``size``: bytes on disk; ``last_used``: seconds since the epoch, the newest access or
    modification time of its files (evoprune sets the access time when it reuses an entry,
    :func:`mark_used`); ``about``: what it holds, in words, where
    the entry records it (importance files record their criterion, model and calibration text, those written
    before evoprune recorded it excepted; latency tables their shape and threads).
    """

    kind: str
    name: str
    path: Path
    size: int
    last_used: float
    leftover: bool = False
    about: str = ""

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return [path] if path.is_file() else []


def _entry(kind: str, path: Path) -> CacheEntry:
    files = [f.stat() for f in _files(path)]
    stats = files or [path.stat()]
    name = path.name
    leftover = name.endswith(_LEFTOVER_SUFFIXES)
    for suffix in (".safetensors", ".json"):
        if not leftover and name.endswith(suffix):
            name = name[: -len(suffix)]
    return CacheEntry(
        kind=kind,
        name=name,
        path=path,
        size=sum(s.st_size for s in files),
        last_used=max(max(s.st_atime, s.st_mtime) for s in stats),
        leftover=leftover,
        about="" if leftover else _about(path),
    )


def _about(path: Path) -> str:
    """What a cache file says it holds, or ``""``; never raises (a damaged entry is still listed)."""
    try:
        before = path.stat()
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "np") as f:  # reads the header only
                about = (f.metadata() or {}).get(ABOUT_KEY, "")
        elif path.suffix == ".json" and path.parent.name == "latency":
            t = json.loads(path.read_text())
            about = f"{t['seq_len']} tokens x {t['batch']}, {t['device']}, {t['threads']} threads"
        else:
            return ""
        # Looking is not using: keep the access time that `clear --older-than` goes by.
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return about
    except Exception:  # noqa: BLE001 - a description is a courtesy; listing must not fail on it
        return ""


def _check_kinds(kinds: list[str] | None) -> list[str]:
    if kinds is None:
        return list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise EvopruneError(f"cache kind {unknown[0]!r} is unknown: use one of {', '.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def cache_entries(kinds: list[str] | None = None) -> list[CacheEntry]:
    """Everything in the cache (of ``kinds``, default all of ``KINDS``), by kind then name.

    Lock files (``*.lock``, a few bytes each, taken while an entry is written) are not entries:
    they go with the entry they guard. Raises EvopruneError for an unknown kind.
    """
    entries = []
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise EvopruneError(f"the evoprune cache {root} is a file, not a folder: set EVOPRUNE_CACHE_DIR to a folder")
    for kind in _check_kinds(kinds):
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".lock"):
                continue
            try:
                entries.append(_entry(kind, path))
            except FileNotFoundError:  # removed by another process while we looked
                continue
    return entries


def _lock_path(path: Path) -> Path:
    # The lock ``evoprune.backend.importance`` takes while it writes an entry, and
    # ``evoprune.backend.loading`` while it converts a model.
    return path.with_name(f"{path.name}.lock")


def _guarded(entry: CacheEntry) -> Path | None:
    """The entry whose lock says whether ``entry`` is being written: itself, or for a leftover
    ``NAME.PID.tmp`` of the importance cache, NAME, whose lock its writer holds all along (the
    covariances are written in place for minutes, ``importance_cache.written_entry``); None for
    other leftovers, which no lock guards."""
    if entry.kind not in ("importance", "models"):
        return None
    if not entry.leftover:
        return entry.path
    owner = re.fullmatch(r"(.+)\.\d+\.tmp", entry.path.name)
    return entry.path.with_name(owner.group(1)) if entry.kind == "importance" and owner else None


def _try_lock(path: Path):
    """``path``'s lock, held, or None when another process holds it (it is writing the entry)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(_lock_path(path)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def clear_cache(
    kinds: list[str] | None = None, older_than_days: float | None = None, dry_run: bool = False
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove cache entries; returns ``(removed, in_use)``.

    ``kinds``: which folders (default all of ``KINDS``); ``older_than_days``: only entries not used
    for at least this many days (leftovers of stopped processes go whatever their age, once an
    hour old); ``dry_run``: remove nothing, return what would go. An entry whose lock another
    process holds (it is computing that entry now) is left alone and returned in ``in_use``, and so
    is the leftover an importance entry is being written into (``NAME.PID.tmp``, while NAME's lock
    is held). Raises EvopruneError for an unknown kind or a negative age.
    """
    if older_than_days is not None and not older_than_days >= 0:
        raise EvopruneError(f"--older-than {older_than_days} is not an age: give a number of days, 0 or more")
    now = time.time()
    removed, in_use = [], []
    for entry in cache_entries(kinds):
        age_days = (now - entry.last_used) / 86400
        if entry.leftover:
            if age_days < 1 / 24:  # may still be being written
                continue
        elif older_than_days is not None and age_days < older_than_days:
            continue
        guarded = _guarded(entry)
        had_lock_file = guarded is not None and _lock_path(guarded).exists()
        lock = _try_lock(guarded) if guarded is not None else None
        if guarded is not None and lock is None:
            in_use.append(entry)
            continue
        try:
            if not dry_run:
                _remove(entry)
            removed.append(entry)
        finally:
            if lock is not None:
                lock.release()
                if not (dry_run and had_lock_file) and not entry.leftover:  # NAME's lock stays NAME's
                    _lock_path(guarded).unlink(missing_ok=True)
    return removed, in_use


def _remove(entry: CacheEntry) -> None:
    if entry.path.is_dir() and not entry.path.is_symlink():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)
