"""Where evoprune keeps what is expensive to recompute: converted models, importance scores, latency tables."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$EVOPRUNE_CACHE_DIR`` (default ``~/.cache/evoprune``) joined with ``parts``, created."""
    root = Path(os.environ.get("EVOPRUNE_CACHE_DIR") or Path.home() / ".cache" / "evoprune")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
