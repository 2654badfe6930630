"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""

from pathlib import Path


class EvopruneError(Exception):
    """Bad input or an unusable environment. The CLI prints the message as one line and exits 2.

    Messages name the problem and the fix, e.g. "data file 'x.txt' is empty: pass a text file
    with at least a few thousand words".
    """


def require_parent_dir(path: Path, option: str) -> None:
    """Raise EvopruneError unless the folder an output file ``path`` goes into is a directory;
    ``option`` names the flag in the message (e.g. ``--plot``)."""
    parent = path.parent
    if parent.is_dir():
        return
    problem = "is a file, not a directory" if parent.exists() else "does not exist: create it first"
    raise EvopruneError(f"{option} '{path}': '{parent}' {problem}")
