"""evoprune's own search method (``ActiveLearning``): surrogate-assisted multi-objective search.

An initial design, then rounds of: fit one surrogate per quality objective on every successful
pair; run a pymoo algorithm on (predicted quality, exact costs) under the budget constraints;
narrow the level ranges the surrogate says are harmful (optional); send the candidates of the
predicted front that the acquisition strategy ranks highest, spread along the first cost, to
real evaluation.
"""

from __future__ import annotations

import math
import time

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize
from pymoo.util.ref_dirs import get_reference_directions
from scipy.stats import kendalltau

from evoprune.engine.acquisition import expected_hv_improvement, select_batch
from evoprune.engine.checked_surrogate import CheckedSurrogate
from evoprune.engine.context import SearchContext
from evoprune.engine.design import feasible_design, intensity_sample
from evoprune.engine.features import FeatureMap
from evoprune.engine.focus_band import band_candidates
from evoprune.engine.local_moves import moves_around_incumbents
from evoprune.engine.registry import Strategy, register_strategy
from evoprune.errors import EvopruneError
from evoprune.objectives.spec import quality_limit, quality_value
from evoprune.store import Evaluation
from problems import SurrogatePruningProblem


def initial_design_phase(ctx: SearchContext, n: int, origin: str = "design") -> None:
    space_filling = ctx.inherited_pairs() < n
    s = ctx.settings
    design = feasible_design(ctx.space, n, s.seed, ctx.feasible, ctx.costs, s.budget, space_filling=space_filling)
    ctx.evaluate_now(design, origin, 0)


@register_strategy
class ActiveLearning(Strategy):
    """evoprune: surrogate-assisted multi-objective search with active learning."""

    name = "evoprune"

    def run(self, ctx: SearchContext) -> None:
        initial_design_phase(ctx, ctx.settings.init)
        stalled = 0
        while ctx.budget_left() > 0 and stalled < 3:
            round_ = max(ctx.next_round(), 1)
            if sum(e.status == "ok" for e in ctx.shared_evaluations()) < 2:
                added = self.explore(ctx, round_)  # nothing to learn from yet: keep sampling
            else:
                added = self.round(ctx, round_)
            stalled = stalled + 1 if added == 0 else 0

    def explore(self, ctx: SearchContext, round_: int) -> int:
        """Space-filling samples over a wide range of intensities, when too few evaluations succeeded."""
        before = len(ctx.evaluations())
        seed = ctx.settings.seed * 1000 + round_
        pool = intensity_sample(ctx.space, 20 * ctx.settings.batch, seed, low=0.05, high=0.9)
        pool = pool[ctx.feasible(pool)]
        ctx.evaluate_now(pool[: ctx.settings.batch], "explore", round_)
        return len(ctx.evaluations()) - before

    # -- one round --------------------------------------------------------------------------
    def _train(self, ctx: SearchContext):
        ok = [e for e in ctx.shared_evaluations() if e.status == "ok"]
        X = np.array([e.levels for e in ok], dtype=int)
        targets = {}
        for name in ctx.objectives.quality:
            y = np.array([quality_value(name, e.metrics) for e in ok])
            targets[name] = y
        return X, targets

    def _fit(self, ctx: SearchContext, featurize, X, targets):
        s = ctx.settings
        models = {}
        for name, y in targets.items():
            finite = np.isfinite(y)
            if finite.sum() < 2:
                raise EvopruneError(
                    f"fewer than 2 successful evaluations with {name} to train the surrogate on: "
                    "lower the pruning intensity or check the model and data"
                )
            models[name] = CheckedSurrogate.fit(s.surrogate, s.seed, featurize(X[finite]), y[finite])
        return models

    def _objective_fn(self, ctx: SearchContext, models, featurize):
        names = ctx.objectives.names

        def objectives(X: np.ndarray) -> np.ndarray:
            F = featurize(X)
            costs = ctx.cost_objectives(X)
            cols, c = [], 0
            for name in names:
                if name in ctx.objectives.costs:
                    cols.append(costs[:, c])
                    c += 1
                else:
                    cols.append(models[name].predict(F))
            return np.column_stack(cols)

        return objectives

    def _algorithm(self, ctx: SearchContext, sampling: np.ndarray):
        s = ctx.settings
        ops = dict(
            sampling=sampling.astype(float),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        n_obj = len(ctx.objectives.names)
        if s.algorithm == "nsga3":
            ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=12 if n_obj == 2 else 6)
            return NSGA3(ref_dirs=ref_dirs, pop_size=s.pop_size, **ops)
        if s.algorithm == "agemoea":
            try:
                from pymoo.algorithms.moo.age import AGEMOEA
            except Exception:  # noqa: BLE001 - pymoo raises a bare Exception when numba is missing
                raise EvopruneError("--algorithm agemoea needs numba: pip install numba") from None
            return AGEMOEA(pop_size=s.pop_size, **ops)
        if s.algorithm == "smsemoa":
            return SMSEMOA(pop_size=s.pop_size, **ops)
        return NSGA2(pop_size=s.pop_size, **ops)

    def refine_bounds(self, ctx: SearchContext, models, featurize, X: np.ndarray) -> np.ndarray:
        """Upper level bounds, narrowed where the surrogate and the data agree a level is harmful.

        As the paper narrows its space with the predictor's feature importance, we use partial
        dependence: for each variable, set it to each level in every evaluated configuration and
        average the predicted quality. A level is cut when its predicted loss exceeds level 0's
        by more than ``max_ppl_ratio`` allows (``objectives.spec.quality_limit``: a factor of
        perplexity, the same increase in nats for KL, no cut for accuracy) and at least two
        evaluated configurations reached it.
        """
        upper = ctx.space.upper.copy()
        if not ctx.settings.refine or len(X) < 8:
            return upper
        name = ctx.objectives.quality[0]
        model = models[name]
        # One prediction over every (variable, level) substitution: per-call overhead dominates.
        blocks, index = [], []
        for i in range(ctx.space.n_var):
            for level in range(upper[i] + 1):
                Z = X.copy()
                Z[:, i] = level
                blocks.append(Z)
                index.append((i, level))
        if not blocks:
            return upper
        pred = model.predict(featurize(np.vstack(blocks))).reshape(len(blocks), len(X)).mean(axis=1)
        pd = {key: float(v) for key, v in zip(index, pred, strict=True)}
        for i in range(ctx.space.n_var):
            limit = quality_limit(name, pd[(i, 0)], ctx.settings.max_ppl_ratio)
            if limit is None:
                continue
            for level in range(1, upper[i] + 1):
                reached = int(np.sum(X[:, i] >= level))
                if pd[(i, level)] > limit and reached >= 2:
                    upper[i] = level - 1
                    break
        return upper

    def round(self, ctx: SearchContext, round_: int) -> int:
        s = ctx.settings
        if ctx.budget_left() <= 0:  # the store may have been filled since the caller looked
            return 0
        X, targets = self._train(ctx)
        featurize = FeatureMap(ctx.space, ctx.backend.score())
        t0 = time.perf_counter()
        models = self._fit(ctx, featurize, X, targets)
        fit_s = time.perf_counter() - t0
        ctx.progress("phase", name=f"round {round_}: inner search")
        t0 = time.perf_counter()
        upper = self.refine_bounds(ctx, models, featurize, X)
        seed = s.seed * 1000 + round_
        seeds = np.vstack([X, intensity_sample(ctx.space, s.pop_size, seed)])
        seeds = np.minimum(seeds, upper)
        problem = SurrogatePruningProblem(
            ctx.space.lower,
            upper,
            self._objective_fn(ctx, models, featurize),
            n_obj=len(ctx.objectives.names),
            constraints=ctx.constraint_matrix,
            n_constr=1 + len(ctx.constraint_names),
        )
        res = minimize(problem, self._algorithm(ctx, seeds[: s.pop_size]), ("n_gen", s.generations), seed=seed)
        pool, rank = self._candidates(ctx, res)
        pool, rank = band_candidates(ctx, pool, rank, self._objective_fn(ctx, models, featurize), upper)
        k = min(s.batch, ctx.budget_left())
        n_local = math.floor(k * s.local_share)
        local = moves_around_incumbents(ctx, models[ctx.objectives.quality[0]], featurize, upper, n_local)
        if len(local):  # the acquisition fills the rest of the batch from the other candidates
            taken = {ctx.space.key(x) for x in local}
            keep = np.array([ctx.space.key(x) not in taken for x in pool], dtype=bool)
            pool, rank = pool[keep], rank[keep]
        search_s = time.perf_counter() - t0
        ctx.timings["fit_s"] += fit_s
        ctx.timings["search_s"] += search_s
        narrowed = {int(i): int(u) for i, u in enumerate(upper) if u < ctx.space.upper[i]}
        ctx.store.record_round(ctx.run.id, round_, n_train=len(X), fit_s=fit_s, search_s=search_s, bounds=narrowed)
        if not len(pool) and not len(local):
            ctx.store.close_round(ctx.run.id, round_, eval_s=0.0, hypervolume=ctx.hypervolume())
            return 0
        primary = ctx.objectives.quality[0]
        before = len(ctx.evaluations())
        if len(local):
            mean, std = models[primary].predict(featurize(local), return_std=True)
            moves = [{primary: float(m), "std": float(d)} for m, d in zip(mean, std, strict=True)]
            ctx.evaluate_now(local, "local", round_, moves)
        k -= len(local)
        if k > 0 and len(pool):
            self._acquire_and_evaluate(ctx, round_, models, featurize, pool, rank, k, seed)
        screened = sum(sc.duration_s or 0 for sc in ctx.store.screenings(ctx.run.id) if sc.round == round_)
        batch = [e for e in ctx.evaluations() if e.round == round_ and e.status == "ok" and e.predicted]
        tau, rmse = _prediction_quality(batch, primary)
        ctx.store.close_round(
            ctx.run.id,
            round_,
            eval_s=sum(e.duration_s or 0 for e in batch) + screened,
            hypervolume=ctx.hypervolume(),
            tau=tau,
            rmse=rmse,
        )
        return len(ctx.evaluations()) - before

    def _acquire_and_evaluate(self, ctx: SearchContext, round_: int, models, featurize, pool, rank, k, seed) -> None:
        """Send the ``k`` candidates of ``pool`` that the acquisition strategy ranks highest to real evaluation."""
        s = ctx.settings
        front = pool[rank == 0]
        pool = front if len(front) >= k else pool
        primary = ctx.objectives.quality[0]
        mean, std = models[primary].predict(featurize(pool), return_std=True)
        pool, mean, std = self._region_of_interest(ctx, pool, mean, std, k)
        pool, mean, std = self._focus(ctx, pool, mean, std, k)
        cost = ctx.cost_objectives(pool)
        first_cost = cost[:, 0] if cost.shape[1] else ctx.space.params_matrix(pool) / ctx.dense_params
        predictions = [{primary: float(mean[i]), "std": float(std[i])} for i in range(len(pool))]
        if s.screen_tokens:
            wide = self._acquire(ctx, models, featurize, pool, mean, std, first_cost, k * s.screen_factor, seed)
            chosen = self._screened_best(ctx, round_, pool, wide, first_cost, k, predictions)
        else:
            chosen = self._acquire(ctx, models, featurize, pool, mean, std, first_cost, k, seed)
        ctx.evaluate_now(pool[chosen], "acquired", round_, [predictions[i] for i in chosen])

    def _acquire(self, ctx: SearchContext, models, featurize, pool, mean, std, first_cost, k, seed) -> list[int]:
        """Indices of the ``k`` candidates of ``pool`` the acquisition strategy sends on."""
        s = ctx.settings
        if s.acquisition != "ehvi":
            return select_batch(s.acquisition, pool, mean, std, first_cost, k)
        primary = ctx.objectives.quality[0]
        ok = [e for e in ctx.evaluations() if e.status == "ok"]
        predicted = self._objective_fn(ctx, models, featurize)(pool)
        index = ctx.objectives.names.index(primary)
        scores = expected_hv_improvement(ctx.objective_matrix(ok), ctx.reference_point(), index, predicted, std, seed)
        return select_batch("ehvi", pool, mean, std, first_cost, k, scores=scores)

    def _screened_best(self, ctx: SearchContext, round_, pool, wide, first_cost, k, predictions) -> list[int]:
        """Multi-fidelity: screen the ``wide`` candidates on few tokens, keep the ``k`` that
        screened best (spread along the cost as acquisition does); a failed screening drops out."""
        primary = ctx.objectives.quality[0]
        results = ctx.screen(pool[wide], round_)
        for i, sc in zip(wide, results, strict=True):
            if sc.status == "ok":
                predictions[i][f"screen_{primary}"] = quality_value(primary, sc.metrics)
        passed = [i for i, sc in zip(wide, results, strict=True) if sc.status == "ok"]
        if not passed:
            return []
        values = np.array([predictions[i][f"screen_{primary}"] for i in passed])
        sub = np.array(passed)
        picked = select_batch("greedy", pool[sub], values, np.zeros(len(sub)), first_cost[sub], k)
        return [int(sub[j]) for j in picked]

    def _candidates(self, ctx: SearchContext, res) -> tuple[np.ndarray, np.ndarray]:
        """Feasible, unknown, unique configurations of the final population, predicted front first.

        Feasible means within the budget and above the parameter floor (``ctx.feasible``).
        """
        known = ctx.known_keys()
        pop = res.pop
        rank = pop.get("rank")
        rank = rank.reshape(-1) if rank is not None else np.zeros(len(pop))
        rank = np.where(np.isnan(rank.astype(float)), 1e9, rank)
        out, ranks = [], []
        for i in np.lexsort((np.arange(len(pop)), rank)):
            x = np.round(pop[i].X).astype(int)
            key = ctx.space.key(x)
            if key not in known and ctx.feasible(x[None])[0]:
                known.add(key)
                out.append(x)
                ranks.append(rank[i])
        return np.array(out, dtype=int).reshape(-1, ctx.space.n_var), np.array(ranks)

    def _focus(self, ctx: SearchContext, pool, mean, std, k):
        """Keep the candidates inside the focus band under the budget, or the ``k`` closest to it."""
        slack = ctx.focus_slack(pool)
        if slack is None or not len(pool):
            return pool, mean, std
        keep = slack <= 0
        if keep.sum() < k:
            keep = np.zeros(len(pool), dtype=bool)
            keep[np.argsort(slack, kind="stable")[:k]] = True
        return pool[keep], mean[keep], std[keep]

    def _region_of_interest(self, ctx: SearchContext, pool, mean, std, k):
        """Drop candidates predicted far worse than the best evaluated one (collapsed models teach
        the user nothing); keep at least the ``k`` best predicted. "Far worse" is
        ``--max-ppl-ratio`` times the best perplexity; for KL (where the dense model's 0 makes any
        ratio meaningless) the same limit as a cross-entropy increase (``quality_limit``);
        accuracies are not filtered."""
        primary = ctx.objectives.quality[0]
        best = min(
            (quality_value(primary, e.metrics) for e in ctx.shared_evaluations() if e.status == "ok"),
            default=None,
        )
        limit = None if best is None else quality_limit(primary, best, ctx.settings.max_ppl_ratio)
        if limit is None:
            return pool, mean, std
        keep = mean <= limit
        if keep.sum() < k:
            keep = np.zeros(len(pool), dtype=bool)
            keep[np.argsort(mean, kind="stable")[:k]] = True
        return pool[keep], mean[keep], std[keep]


def _prediction_quality(batch: list[Evaluation], primary: str) -> tuple[float | None, float | None]:
    """Out-of-sample Kendall tau and RMSE of the predictions made before evaluating a batch."""
    pairs = [(e.predicted[primary], quality_value(primary, e.metrics)) for e in batch if primary in e.predicted]
    if not pairs:
        return None, None
    pred, true = np.array(pairs).T
    rmse = float(np.sqrt(np.mean((pred - true) ** 2)))
    tau = float(kendalltau(pred, true)[0]) if len(pairs) >= 3 else None
    return (None if tau is not None and math.isnan(tau) else tau), rmse
