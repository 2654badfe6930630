"""``python -m evoprune.cli``: the same command line as ``evoprune``."""

from evoprune.cli import main

main()
