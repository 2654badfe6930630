"""pymoo problem definitions. May use ``surrogates``; knows nothing about LLMs."""

from problems.pruning import SurrogatePruningProblem
from problems.synthetic import SyntheticPruning

__all__ = ["SurrogatePruningProblem", "SyntheticPruning"]
