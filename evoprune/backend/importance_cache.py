"""The on-disk entries ``compute_importance`` keeps: where they live, how they are read, written and
locked.

An entry is a safetensors file of numpy arrays under ``cache_dir("importance")``, named by a
digest (``importance.importance_cache_key``): the scores (with the inputs' means) in one, the
inputs' covariances in another, since those do not depend on the criterion. A damaged entry is
removed and recomputed; one written by two processes at once is written under each process's own
name and renamed, and ``locked`` lets processes started together compute it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from evoprune.backend.memory_headroom import require_memory
from evoprune.cache import ABOUT_KEY, cache_dir, mark_used


def importance_cache_file(cache_key: str) -> Path:
    """Where the scores cached under ``cache_key`` (``importance_cache_key``) are kept."""
    return cache_dir("importance") / f"{cache_key}.safetensors"


def covariance_cache_file(cache_key: str) -> Path:
    """Where the input covariances cached under ``cache_key`` are kept (see ``compute_importance``)."""
    return cache_dir("importance") / f"{cache_key}-covariance.safetensors"


def load_entry(
    path: Path | None, required: tuple[str, ...], too_large: tuple[str, str] | None = None
) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path`` when it holds every ``required`` one (None otherwise); a
    damaged file is removed. With ``too_large`` = (what the arrays are, in words; what to do
    instead), first raise EvopruneError for a file larger than the memory available to load it
    into: such an entry (the covariances of a 7B model are 17.7 GB) would otherwise be killed by
    the operating system midway. The entry is kept."""
    if path is None or not path.exists():
        return None
    if too_large is not None:
        require_memory(path.stat().st_size, "cpu", *too_large)
    try:
        arrays = load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
        path.unlink(missing_ok=True)
        return None
    if not all(k in arrays for k in required):
        return None
    mark_used(path)
    return arrays


def save_entry(path: Path | None, arrays: dict[str, np.ndarray], about: str | None = None) -> None:
    """Write ``arrays`` to ``path`` (nothing when None); ``about`` names the entry for
    ``evoprune cache list``, since its file name is a digest."""
    if path is None:
        return
    # A name of this process's own: searches started together may score the same model at once.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(arrays, str(tmp), metadata={ABOUT_KEY: about} if about else None)
    tmp.replace(path)


@contextmanager
def locked(*paths: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``PATH.lock`` for each cache entry, in the order given (every caller
    takes the scores' before the covariances', so two processes never wait on each other). The
    operating system releases a killed process's locks."""
    from filelock import FileLock

    with ExitStack() as stack:
        for path in paths:
            if path is not None:
                stack.enter_context(FileLock(str(path.with_name(f"{path.name}.lock"))))
        yield
