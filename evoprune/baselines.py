"""Baselines that run through the same evaluator, store and budget as evoprune's own search.

- ``uniform``: the same pruning ratio in every layer, as LLM-Pruner does.
- ``owl``: a layer-importance heuristic in the manner of OWL: layers with a larger share of
  outlier units (importance above ``M`` times the layer mean) are pruned less, around a mean
  ratio set to meet the budget; one configuration per strength ``lambda``.
- ``random``: random feasible configurations near the budget.
- ``predictor-rank``: the paper's method. Random pairs, a gradient-boosted tree on the levels,
  10,000 random candidates ranked by it, the top ones evaluated.
- ``ga``: NSGA-II on real evaluations (ask/tell, no surrogate), as evolutionary searches such
  as EvoPress do.
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
from sklearn.ensemble import GradientBoostingRegressor

from evoprune.design import intensity_sample, structured_families
from evoprune.objectives import quality_value
from evoprune.search import ActiveLearning, SearchContext, Strategy


def _near_budget(ctx: SearchContext, n: int, seed: int, pool_size: int) -> np.ndarray:
    """Random feasible configurations, those that spend most of the budget first."""
    pool = intensity_sample(ctx.space, pool_size, seed, low=0.02, high=0.6)
    pool = pool[ctx.feasible(pool)]
    if not len(pool):
        return pool
    has_budget = bool(ctx.constraint_names)
    if has_budget:
        pool = pool[np.argsort(-ctx.space.params_matrix(pool), kind="stable")]
        pool = pool[: max(n, len(pool) // 4)]
    rng = np.random.default_rng(seed)
    return pool[rng.permutation(len(pool))[:n]] if not has_budget else pool[:n]


class UniformBaseline(Strategy):
    name = "uniform"

    def run(self, ctx: SearchContext) -> None:
        configs = structured_families(ctx.space)["uniform"]
        feasible = [x for x in configs if ctx.feasible(x[None])[0]]
        # Least pruning first: under a budget the first feasible one is the baseline's answer.
        ctx.evaluate_now(np.array(feasible or [ctx.space.lower]), "baseline", 0)


class OWLBaseline(Strategy):
    name = "owl"
    lambdas = (0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3)
    outlier_factor = 3.0

    def layer_outlier_share(self, ctx: SearchContext) -> np.ndarray:
        imp = ctx.backend.score()
        shares = []
        for attn, mlp in zip(imp.attn, imp.mlp, strict=True):
            units = np.concatenate([attn / attn.mean(), mlp / mlp.mean()])
            shares.append(float(np.mean(units > self.outlier_factor)))
        return np.array(shares)

    def config(self, ctx: SearchContext, mean_ratio: float, lam: float, share: np.ndarray) -> np.ndarray:
        span = share.max() - share.min()
        centred = (share - share.mean()) / span if span > 0 else np.zeros_like(share)
        ratio = np.clip(mean_ratio - lam * centred * 2, 0, 1)  # more outliers -> less pruning
        attn = np.round(ratio * ctx.space.attn_levels)
        mlp = np.round(ratio * ctx.space.mlp_levels)
        return np.minimum(np.concatenate([attn, mlp]), ctx.space.upper).astype(int)

    def run(self, ctx: SearchContext) -> None:
        share = self.layer_outlier_share(ctx)
        proposals = []
        for lam in self.lambdas:
            # The smallest mean ratio whose configuration meets the budget (and min-params).
            for mean_ratio in np.linspace(0.02, 0.9, 89):
                x = self.config(ctx, mean_ratio, lam, share)
                if any(x) and ctx.feasible(x[None])[0]:
                    if ctx.constraint_names:
                        proposals.append(x)
                        break
                    proposals.append(x)  # without a budget: a spread of ratios
                    if len(proposals) % 3 == 0:
                        break
        ctx.evaluate_now(np.array(proposals).reshape(-1, ctx.space.n_var), "baseline", 0)


class RandomBaseline(Strategy):
    name = "random"

    def run(self, ctx: SearchContext) -> None:
        ctx.evaluate_now(_near_budget(ctx, ctx.settings.evals * 3, ctx.settings.seed, 60 * ctx.settings.evals),
                         "baseline", 0)  # fmt: skip


class PredictorRank(Strategy):
    """Ji, Cao, Liu (2023): train a GBDT on random pairs, rank many candidates, evaluate the top."""

    name = "predictor-rank"
    train_share = 0.8
    candidates = 10_000

    def run(self, ctx: SearchContext) -> None:
        s = ctx.settings
        n_train = max(2, int(round(self.train_share * s.evals)))
        ctx.evaluate_now(_near_budget(ctx, 3 * n_train, s.seed, 60 * s.evals), "baseline", 0)
        ok = [e for e in ctx.evaluations() if e.status == "ok"]
        if len(ok) < 2 or ctx.budget_left() <= 0:
            return
        primary = ctx.objectives.quality[0]
        X = np.array([e.levels for e in ok])
        y = np.array([quality_value(primary, e.metrics) for e in ok])
        model = GradientBoostingRegressor(random_state=s.seed).fit(X, y)
        pool = _near_budget(ctx, self.candidates, s.seed + 1, self.candidates * 3)
        if not len(pool):
            return
        ranked = pool[np.argsort(model.predict(pool), kind="stable")]
        ctx.evaluate_now(ranked[: 4 * ctx.budget_left()], "baseline", 1)


class _RealProblem(Problem):
    """Shape only: the GA's fitness comes from real evaluations, told back through ask/tell."""

    def __init__(self, ctx: SearchContext):
        n_obj = len(ctx.objectives.names)
        super().__init__(n_var=ctx.space.n_var, n_obj=n_obj, n_ieq_constr=1 + len(ctx.constraint_names),
                         xl=ctx.space.lower, xu=ctx.space.upper, vtype=int)  # fmt: skip


class GABaseline(Strategy):
    """NSGA-II whose every fitness is a real evaluation; pymoo's ask/tell keeps the loop here."""

    name = "ga"

    def run(self, ctx: SearchContext) -> None:
        s = ctx.settings
        pop_size = max(4, min(16, s.evals // 4))
        problem = _RealProblem(ctx)
        start = _near_budget(ctx, pop_size, s.seed, 60 * pop_size)
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


STRATEGIES = {
    "evoprune": ActiveLearning,
    "uniform": UniformBaseline,
    "owl": OWLBaseline,
    "random": RandomBaseline,
    "predictor-rank": PredictorRank,
    "ga": GABaseline,
}
