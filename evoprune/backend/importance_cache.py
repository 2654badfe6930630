"""The on-disk entries ``compute_importance`` keeps: where they live, how they are read, written and
locked.

An entry is a safetensors file of numpy arrays under ``cache_dir("importance")``, named by a
digest (``importance.importance_cache_key``): the scores (with the inputs' means) in one, the
inputs' covariances in another, since those do not depend on the criterion. The covariances are
memory-mapped, not read (``map_entry``): a 7B model's are 17.7 GB, of which the re-fit reads one
layer at a time, and every process of a machine that maps them shares one copy in the page cache.
The covariances are also written in place (``written_entry``): layer by layer into a mapped file laid
out as safetensors, never whole in memory. A damaged entry is removed and recomputed; one written by two
processes at once is written under each process's own name and renamed, and ``locked`` lets processes
started together compute it once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from evoprune.backend.memory_headroom import disk_text, require_disk
from evoprune.cache import ABOUT_KEY, cache_dir, mark_used
from evoprune.errors import EvopruneError


def importance_cache_file(cache_key: str) -> Path:
    """Where the scores cached under ``cache_key`` (``importance_cache_key``) are kept."""
    return cache_dir("importance") / f"{cache_key}.safetensors"


def covariance_cache_file(cache_key: str) -> Path:
    """Where the input covariances cached under ``cache_key`` are kept (see ``compute_importance``)."""
    return cache_dir("importance") / f"{cache_key}-covariance.safetensors"


def load_entry(path: Path | None, required: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path``, read into memory, when it holds every ``required`` one (None
    otherwise); a damaged file is removed."""
    return _entry(path, required, load_file)


def map_entry(path: Path | None, required: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """As ``load_entry``, but each array is a read-only ``np.memmap`` of the file: its pages are
    read when first used, can be dropped again under memory pressure, and are shared by every
    process that maps the same entry (the workers of a local Ray cluster, searches started
    together)."""
    return _entry(path, required, map_file)


def map_file(path: str) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors file at ``path`` as a read-only ``np.memmap`` (an empty one
    as an empty array). Raises on a damaged file, as ``safetensors.numpy.load_file`` does."""
    with safe_open(path, framework="np") as f:  # checks the header against the file's size
        names = list(f.keys())
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    arrays = {}
    for name in names:
        info = header[name]
        dtype, shape = np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: {name} holds {end - begin} bytes, not {shape} of {dtype}")
        if end == begin:
            arrays[name] = np.empty(shape, dtype)
        else:
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + length + begin, shape=shape)
    return arrays


# safetensors' dtype names (its format specification) of the arrays an entry may hold.
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def _entry(path: Path | None, required: tuple[str, ...], read) -> dict[str, np.ndarray] | None:
    if path is None or not path.exists():
        return None
    try:
        arrays = read(str(path))
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
def written_entry(
    path: Path, shapes: dict[str, tuple[int, ...]], about: str | None = None, instead: str = ""
) -> Iterator[dict[str, np.ndarray]]:
    """A new float32 entry at ``path`` filled in place: yields a writable ``np.memmap`` of each
    ``shapes`` name, and once the block ends without an error the file is checked and renamed into
    place (on an error it is removed). Laid out as safetensors lays out a file, so ``map_entry`` and
    ``safe_open`` read it. Its disk space is reserved first: raises EvopruneError naming the space
    needed and ``instead`` when the cache folder has less free, rather than the process dying of
    SIGBUS when a full disk meets a write to the mapping."""
    names = sorted(shapes)
    header: dict = {"__metadata__": {ABOUT_KEY: about}} if about else {}
    offset = 0
    for name in names:
        size = 4 * int(np.prod(shapes[name], dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    start = 8 + len(text)
    what = f"caching the {about}" if about else f"the cache entry {path.name}"
    require_disk(what, path.parent, start + offset, instead)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(text)) + text)
            _reserve(fh, start + offset, lambda free: disk_text(what, path.parent, start + offset, free, instead))
        arrays = {}
        for name in names:
            begin, end = header[name]["data_offsets"]
            arrays[name] = (
                np.memmap(tmp, dtype=np.float32, mode="r+", offset=start + begin, shape=shapes[name])
                if end > begin
                else np.empty(shapes[name], np.float32)
            )
        yield arrays
        for a in arrays.values():
            if isinstance(a, np.memmap):
                a.flush()
        map_file(str(tmp))  # the header and the size agree, as any reader will check
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reserve(fh, size: int, refusal) -> None:
    """Allocate ``size`` bytes of ``fh`` on disk now (a sparse file where the system cannot);
    ``refusal(free bytes)`` is the error's text when the disk is full."""
    try:
        os.posix_fallocate(fh.fileno(), 0, size)
        return
    except AttributeError:  # not on every system (macOS)
        pass
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise EvopruneError(refusal(shutil.disk_usage(Path(fh.name).parent).free)) from None
    fh.truncate(size)


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
