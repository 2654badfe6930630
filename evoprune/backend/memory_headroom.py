"""Memory (and disk) a step is about to take, checked against what the machine has before it starts.

A step that outgrows memory is killed by the operating system (or fails deep inside torch on a
GPU) with nothing a user can act on; refusing it first, with what it needs and what to do
instead, costs one reading of the free memory. A file written through a memory mapping onto a
full disk dies of SIGBUS, so disk space is checked the same way (``require_disk``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import torch
from rich.filesize import decimal

from evoprune.errors import EvopruneError


def available_bytes(device: torch.device | str) -> int:
    """Memory free for new allocations on ``device``: for ``cpu`` and ``mps`` (unified memory) the
    host's available memory (``psutil``, which counts reclaimable page cache), or what is left of
    this process's cgroup v2 limit when that is less (a container's ``memory.max``); for ``cuda``
    the driver's free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = int(psutil.virtual_memory().available)
    left = _cgroup_left()
    return available if left is None else min(available, left)


def _cgroup_left(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """``memory.max - memory.current`` of the cgroup v2 this process runs in (None: no limit, or no cgroup v2)."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)


def require_memory(need: int, device: torch.device | str, what: str, instead: str) -> None:
    """Raise EvopruneError naming ``what`` needs ``need`` bytes on ``device`` and ``instead`` (the
    way around it) when the device has less available."""
    device = torch.device(device)
    have = available_bytes(device)
    if need > have:
        raise EvopruneError(
            f"{what} need {decimal(need)} of {device.type} memory and {decimal(have)} is available: {instead}"
        )


def require_disk(what: str, folder: Path, need: int, instead: str = "") -> None:
    """Raise EvopruneError naming ``what`` needs ``need`` bytes of disk in ``folder`` (and
    ``instead``, another way around it) when the folder's disk has less free."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise EvopruneError(disk_text(what, folder, need, free, instead))


def disk_text(what: str, folder: Path, need: int, free: int, instead: str = "") -> str:
    """The message of ``require_disk``, for a caller that learns of the shortage otherwise."""
    return (
        f"{what} needs {decimal(need)} of disk in {folder} and {decimal(free)} is free: free space there, "
        f"set EVOPRUNE_CACHE_DIR to a folder on a larger disk{', or ' + instead if instead else ''}"
    )
