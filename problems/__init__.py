"""pymoo problem definitions. May use ``surrogates``; knows nothing about LLMs."""

from problems.pruning import SurrogatePruningProblem

__all__ = ["SurrogatePruningProblem"]
