"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""


class EvopruneError(Exception):
    """Bad input or an unusable environment. The CLI prints the message as one line and exits 2.

    Messages name the problem and the fix, e.g. "data file 'x.txt' is empty: pass a text file
    with at least a few thousand words".
    """
