"""``ga``: NSGA-II on real evaluations (ask/tell, no surrogate), as evolutionary searches such as
EvoPress do.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.problems.static import StaticProblem

from evoprune.engine.baselines.sampling import near_budget
from evoprune.engine.context import SearchContext
from evoprune.engine.design import intensity_sample
from evoprune.engine.registry import Strategy, register_strategy


class _RealProblem(Problem):
    """Shape only: the GA's fitness comes from real evaluations, told back through ask/tell."""

    def __init__(self, ctx: SearchContext):
        n_obj = len(ctx.objectives.names)
        super().__init__(n_var=ctx.space.n_var, n_obj=n_obj, n_ieq_constr=1 + len(ctx.constraint_names),
                         xl=ctx.space.lower, xu=ctx.space.upper, vtype=int)  # fmt: skip


@register_strategy
class GABaseline(Strategy):
    """NSGA-II whose every fitness is a real evaluation; pymoo's ask/tell keeps the loop here."""

    name = "ga"

    def run(self, ctx: SearchContext) -> None:
        s = ctx.settings
        pop_size = max(4, min(16, s.evals // 4))
        problem = _RealProblem(ctx)
        start = near_budget(ctx, pop_size, s.seed, 60 * pop_size)
        algorithm = NSGA2(
            pop_size=pop_size,
            sampling=start.astype(float) if len(start) else intensity_sample(ctx.space, pop_size, s.seed),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        algorithm.setup(problem, seed=s.seed, termination=("n_eval", 10**9))
        generation = 0
        while ctx.budget_left() > 0:
            pop = algorithm.ask()
            if pop is None or not len(pop):  # pymoo found no offspring unlike those seen: the space is exhausted
                break
            X = np.round(pop.get("X")).astype(int)
            ctx.evaluate_now(X, "baseline", generation)
            by_key = {e.config_key: e for e in ctx.evaluations() if e.status == "ok"}
            F, G = [], []
            for x in X:
                G.append(ctx.constraint_matrix(x[None])[0])
                e = by_key.get(ctx.space.key(x))
                F.append(ctx.objective_matrix([e])[0] if e is not None else np.full(problem.n_obj, 1e6))
            Evaluator().eval(StaticProblem(problem, F=np.array(F), G=np.array(G)), pop)
            algorithm.tell(infills=pop)
            generation += 1
            if generation > 10 * s.evals:  # nothing new left to propose
                break
