"""Per-layer pruning levels as a pymoo problem whose objectives are cheap functions.

The engine passes the surrogate's predicted quality and the exact costs as one vectorised
``objectives`` callable, and the budgets as ``constraints`` (pymoo's ``G <= 0`` convention), so
infeasible configurations never reach real evaluation. The problem knows nothing about LLMs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pymoo.core.problem import Problem

ArrayFn = Callable[[np.ndarray], np.ndarray]


class SurrogatePruningProblem(Problem):
    def __init__(
        self,
        xl: np.ndarray,
        xu: np.ndarray,
        objectives: ArrayFn,
        n_obj: int,
        constraints: ArrayFn | None = None,
        n_constr: int = 0,
    ):
        self.objectives = objectives
        self.constraints = constraints
        super().__init__(n_var=len(xl), n_obj=n_obj, n_ieq_constr=n_constr, xl=xl, xu=xu, vtype=int)

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.round(X).astype(int)
        out["F"] = self.objectives(X)
        if self.constraints is not None:
            out["G"] = self.constraints(X)
