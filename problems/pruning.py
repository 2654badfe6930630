"""Per-layer pruning levels as a pymoo problem whose quality objective is a surrogate's prediction."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pymoo.core.problem import Problem

from surrogates import Surrogate


class SurrogatePruningProblem(Problem):
    """Minimise (predicted quality loss, cost) over integer level vectors.

    ``featurize`` maps level vectors to the surrogate's features and ``cost`` maps them to a
    cost in [0, 1] (e.g. the kept fraction of parameters); both come from the caller, so this
    problem works for any model. Cost bounds are pymoo inequality constraints, so infeasible
    configurations never reach real evaluation.
    """

    def __init__(
        self,
        surrogate: Surrogate,
        featurize: Callable[[np.ndarray], np.ndarray],
        cost: Callable[[np.ndarray], np.ndarray],
        xl: np.ndarray,
        xu: np.ndarray,
        min_cost: float = 0.0,
        max_cost: float = 1.0,
    ):
        self.surrogate = surrogate
        self.featurize = featurize
        self.cost = cost
        self.min_cost = min_cost
        self.max_cost = max_cost
        super().__init__(n_var=len(xl), n_obj=2, n_ieq_constr=2, xl=xl, xu=xu, vtype=int)

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.round(X).astype(int)
        cost = self.cost(X)
        mean = self.surrogate.predict(self.featurize(X))
        out["F"] = np.column_stack([mean, cost])
        out["G"] = np.column_stack([self.min_cost - cost, cost - self.max_cost])
