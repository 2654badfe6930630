"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""

import os
import tempfile
from pathlib import Path


class EvopruneError(Exception):
    """Bad input or an unusable environment. The CLI prints the message as one line and exits 2.

    Messages name the problem and the fix, e.g. "data file 'x.txt' is empty: pass a text file
    with at least a few thousand words".
    """


class BudgetUnmet(EvopruneError):
    """A one-shot method whose recipe cannot answer under the budget (e.g. ``mlp-only`` under a
    memory budget that the KV cache dominates). ``compare`` reports such a method as skipped and
    goes on with the others. ``run_id``: the run the method had opened, when known."""

    def __init__(self, message: str, run_id: int | None = None):
        super().__init__(message)
        self.run_id = run_id


def option_text(name: str, config_only: tuple[str, ...] = ()) -> str:
    """How a message names the setting ``name``: its flag (``--eval-tokens``), or, for one of
    ``config_only`` that no command takes as a flag, its key in a ``--config`` file."""
    return f"{name} (a --config setting)" if name in config_only else f"--{name.replace('_', '-')}"


def _nearest_existing(path: Path) -> Path | None:
    """``path`` or the nearest of its parents that exists (None only when even ``.`` is gone)."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def require_parent_dir(path: Path, option: str) -> None:
    """Raise EvopruneError unless the folder an output file ``path`` goes into is a directory;
    ``option`` names the flag in the message (e.g. ``--plot``)."""
    parent = path.parent
    if parent.is_dir():
        return
    found = _nearest_existing(parent)
    if found is not None and not found.is_dir():  # the parent itself, or a folder above it, is a file
        raise EvopruneError(f"{option} '{path}': '{found}' is a file, not a directory: pass another {option}")
    raise EvopruneError(f"{option} '{path}': '{parent}' does not exist: create it first")


def require_output_dir(path: Path, option: str) -> None:
    """Raise EvopruneError unless the output directory ``path`` is a writable directory or can be
    created (its nearest existing parent is a writable directory); checked before the work that
    would fill it, so that bad input costs no model loading. ``option`` names the flag (``--out``).

    A location that takes no new folders although it looks writable (``/proc``) is found by
    making and removing an empty folder in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EvopruneError(f"{option} '{path}' is a file: pass a directory path")
    found = _nearest_existing(path)
    if found is None:
        return  # the working directory is gone: make_output_dir says what fails
    if not found.is_dir():
        raise EvopruneError(f"{option} '{path}': '{found}' is a file, not a directory: pass another {option}")
    if not os.access(found, os.W_OK | os.X_OK):
        raise EvopruneError(f"{option} '{path}': '{found}' is not writable: pass another {option}")
    if not path.exists():  # a folder that takes no new folders though it looks writable (/proc): try
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".evoprune-probe-", dir=found))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise EvopruneError(f"{option} '{path}' cannot be created ({reason}): pass another {option}") from None


def make_output_dir(path: Path, option: str) -> None:
    """Create the output directory ``path`` (and its parents) for ``option``; EvopruneError, not an
    OSError, when it cannot be (see :func:`require_output_dir`, which this checks first)."""
    path = Path(path)
    require_output_dir(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EvopruneError(f"{option} '{path}' cannot be created ({reason}): pass another {option}") from None
