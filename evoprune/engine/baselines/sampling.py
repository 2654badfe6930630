"""Baselines that sample: ``random`` (random feasible configurations near the budget) and
``predictor-rank``, the paper's method (Ji, Cao, Liu 2023: random pairs, a gradient-boosted tree on
the levels, 10,000 random candidates ranked by it, the top ones evaluated).
"""

from __future__ import annotations

import numpy as np

from evoprune.engine.context import SearchContext
from evoprune.engine.design import intensity_sample
from evoprune.engine.registry import Strategy, register_strategy
from evoprune.objectives.spec import quality_value


def near_budget(ctx: SearchContext, n: int, seed: int, pool_size: int, maximin: bool = True) -> np.ndarray:
    """``n`` random feasible configurations, shape (n, num_genes) (fewer if the pool has fewer).

    Under a budget they are the ``n`` of a random pool of ``pool_size`` that keep the most
    parameters: a random configuration far under the budget wastes it, so a random baseline that
    an expert would run samples near it. Without a budget, ``n`` of the pool at random.
    """
    pool = intensity_sample(ctx.space, pool_size, seed, low=0.02, high=0.6, maximin=maximin)
    pool = pool[ctx.feasible(pool)]
    if ctx.constraint_names:
        return pool[np.argsort(-ctx.space.params_matrix(pool), kind="stable")][:n]
    return pool[np.random.default_rng(seed).permutation(len(pool))[:n]]


@register_strategy
class RandomBaseline(Strategy):
    name = "random"

    def run(self, ctx: SearchContext) -> None:
        ctx.evaluate_now(near_budget(ctx, ctx.settings.evals * 3, ctx.settings.seed, 60 * ctx.settings.evals),
                         "baseline", 0)  # fmt: skip


@register_strategy
class PredictorRank(Strategy):
    """Ji, Cao, Liu (2023): evaluate ``train_share`` of the budget on random configurations, train a
    GBDT on those pairs, rank ``candidates`` random configurations with it, and spend the rest of the
    budget on the best-ranked ones not yet evaluated.

    Resumable: the training pairs are the run's round-0 rows (pending ones included), so a killed run
    tops them up to the same ``n_train`` configurations, fits the same tree and ranks the same pool.
    """

    name = "predictor-rank"
    train_share = 0.8
    candidates = 10_000

    def run(self, ctx: SearchContext) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        s = ctx.settings
        n_train = max(2, int(round(self.train_share * s.evals)))
        started = sum(1 for e in ctx.evaluations() if e.round == 0)
        ctx.evaluate_now(near_budget(ctx, 3 * n_train, s.seed, 60 * s.evals), "baseline", 0, limit=n_train - started)
        ok = [e for e in ctx.evaluations() if e.status == "ok" and e.round == 0]
        if len(ok) < 2 or ctx.budget_left() <= 0:
            return
        primary = ctx.objectives.quality[0]
        X = np.array([e.levels for e in ok])
        y = np.array([quality_value(primary, e.metrics) for e in ok])
        model = GradientBoostingRegressor(random_state=s.seed).fit(X, y)
        pool = near_budget(ctx, self.candidates, s.seed + 1, self.candidates * 3, maximin=False)
        if not len(pool):
            return
        ranked = pool[np.argsort(model.predict(pool), kind="stable")]
        ctx.evaluate_now(ranked, "baseline", 1)  # stops once the budget is spent
