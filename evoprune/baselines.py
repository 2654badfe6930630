"""Baselines that run through the same evaluator, store and budget as evoprune's own search.

The one-shot recipes an expert runs first. Each lands, under a parameter budget, on the largest
configuration of its family that meets every budget: within one pruning step (one MLP channel by
default, see ``method_settings``) under it, so within 1% under ``--max-params``. Without a budget
they evaluate a spread of kept fractions (95%, 90%, ...). All rank heads and channels by the
run's ``--importance`` (``backend.score()``), as evoprune's search does.

- ``uniform``: LLM-Pruner's recipe (Ma, Fang, Wang, NeurIPS 2023): one ratio of heads and MLP
  channels in every layer but the first 4 and last 2 of a 32-layer model (its defaults
  ``block_attention_layer_start=4``, ``block_*_layer_end=30``), counts scaled to the model's depth.
- ``mlp-only``: one ratio of MLP channels in every layer, attention untouched.
- ``flap``: FLAP's adaptive structure "AL-AM" (An et al., AAAI 2024): scores standardised per layer
  and module, one global ranking of all heads and channels, removed lowest first until the budget
  is met, each counted at its real parameter cost.
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

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.problems.static import StaticProblem
from sklearn.ensemble import GradientBoostingRegressor

from evoprune.backend.importance import Importance
from evoprune.backend.pruner import BackendSettings
from evoprune.design import intensity_sample
from evoprune.errors import EvopruneError
from evoprune.objectives import Objectives, quality_value
from evoprune.search import ActiveLearning, SearchContext, SearchSettings, Strategy
from evoprune.space import SearchSpace

MeetsFn = Callable[[np.ndarray], np.ndarray]  # (n, n_var) configurations -> (n,) bool: every budget met


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


# -- the one-shot baselines -------------------------------------------------------------------
FINE_GRID_METHODS = ("uniform", "mlp-only", "flap")


def method_settings(settings: SearchSettings) -> SearchSettings:
    """The settings ``settings.method`` runs with.

    The one-shot baselines (``FINE_GRID_METHODS``) get the finest level grid when the run keeps
    the default one (``mlp_levels`` 8, ``attn_levels`` 0): one MLP level per ``mlp_multiple``
    channels (``mlp_levels=0``) and one attention level per attention unit, uncapped
    (``attn_levels=-1``), so their continuous widths land within 1% under a budget. A latency
    objective or budget keeps the default grid, whose latency table is measured per level.
    Every other method, and any grid the user chose, is returned unchanged.
    """
    b, default = settings.backend, BackendSettings()
    if settings.method not in FINE_GRID_METHODS or (b.mlp_levels, b.attn_levels) != (
        default.mlp_levels,
        default.attn_levels,
    ):
        return settings
    if settings.max_latency_ms is not None or "latency" in Objectives.parse(settings.objectives).names:
        return settings
    return replace(settings, backend=replace(b, mlp_levels=0, attn_levels=-1))


def skipped_layers(num_layers: int, first: int | None = None, last: int | None = None) -> tuple[int, int]:
    """(first, last): how many layers LLM-Pruner's recipe leaves dense at each end.

    LLM-Pruner prunes layers 4..30 of 32 (``block_attention_layer_start=4``, ``..._end=30``);
    ``None`` scales those counts to ``num_layers``, rounding half up (30 layers: 4 and 2).
    """
    if first is None:
        first = int(np.floor(4 * num_layers / 32 + 0.5))
    if last is None:
        last = int(np.floor(2 * num_layers / 32 + 0.5))
    return first, last


def budget_meets(ctx: SearchContext, max_fraction: float | None = None) -> MeetsFn:
    """Whether configurations meet every budget of the run (and ``max_fraction`` of the parameters)."""

    def meets(X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        ok = np.ones(len(X), dtype=bool)
        if ctx.constraint_names:
            ok &= np.all(ctx.costs.matrix(X, ctx.constraint_names) <= ctx.constraint_limits, axis=1)
        if max_fraction is not None:
            ok &= ctx.space.params_matrix(X) / ctx.dense_params <= max_fraction + 1e-12
        return ok

    return meets


def _first_meeting(family: Callable[[int], np.ndarray], n: int, meets: MeetsFn) -> int | None:
    """The smallest ``i`` in ``0..n`` whose ``family(i)`` meets the budget; ``None`` if none does.

    ``family`` must prune more as ``i`` grows (every cost non-increasing), so a bisection finds it.
    """
    if not meets(family(n)[None])[0]:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(family(mid)[None])[0]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _mlp_sweep(space: SearchSpace, base: np.ndarray, layers: list[int]) -> tuple[Callable[[int], np.ndarray], int]:
    """A family that raises the MLP level of ``layers`` one layer at a time, evenly.

    Step ``i`` puts every layer at level ``i // P`` and ``i % P`` of them (the deepest first) one
    level higher, so consecutive members differ by one MLP step in one layer: the first member
    under a budget is within one step of it. Returns the family and its last index.
    """
    L, P = space.num_layers, len(layers)
    order = np.array(layers[::-1], dtype=int)

    def config(i: int) -> np.ndarray:
        x = base.copy()
        k, extra = divmod(i, P)
        x[L + order] = k
        x[L + order[:extra]] = k + 1
        return x

    return config, P * space.mlp_levels


def _half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


def uniform_config(space: SearchSpace, meets: MeetsFn, skip_first: int, skip_last: int) -> np.ndarray | None:
    """LLM-Pruner's allocation: one pruning ratio for heads and MLP channels in the layers
    ``skip_first .. num_layers - skip_last - 1``, the least pruning that ``meets`` the budget.

    The ratio ``r`` is the smallest whose heads (``round(r * attn_levels)``) and channels meet it;
    heads then round to the attention unit, and the MLP ratio absorbs the rest (never more heads
    than would overshoot the budget alone). ``None`` when even removing every head and channel of
    those layers does not meet it.

    Raises EvopruneError when the skipped layers leave nothing to prune.
    """
    L, A = space.num_layers, space.attn_levels
    layers = [i for i in range(skip_first, L - skip_last) if i not in space.frozen_layers]
    if not layers:
        raise EvopruneError(
            f"uniform skips {skip_first} first and {skip_last} last of {L} layers, leaving none to prune: "
            "lower --baseline-skip-first / --baseline-skip-last"
        )
    idx = np.array(layers)
    zero = space.lower

    def both(r: float) -> np.ndarray:
        x = zero.copy()
        x[idx] = _half_up(r * A)
        x[L + idx] = _half_up(r * space.mlp_levels)
        return x

    def attention_only(a: int) -> np.ndarray:
        x = zero.copy()
        x[idx] = a
        return x

    if meets(zero[None])[0]:
        return zero
    if not meets(both(1.0)[None])[0]:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):  # bisection on the ratio: 1e-15 is far below one channel
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(both(mid)[None])[0] else (mid, hi)
    heads = _half_up(hi * A)
    cap = _first_meeting(attention_only, A, meets)
    if cap is not None:
        heads = min(heads, max(cap - 1, 0))  # heads alone would overshoot: the MLP takes the rest
    for a in range(heads, A + 1):
        family, n = _mlp_sweep(space, attention_only(a), layers)
        i = _first_meeting(family, n, meets)
        if i is not None:
            return family(i)
    return None


def mlp_only_config(space: SearchSpace, meets: MeetsFn) -> np.ndarray | None:
    """One ratio of MLP channels in every layer, the least that ``meets`` the budget (attention kept)."""
    layers = [i for i in range(space.num_layers) if i not in space.frozen_layers]
    family, n = _mlp_sweep(space, space.lower, layers)
    i = _first_meeting(family, n, meets) if layers else None
    return None if i is None else family(i)


def _zscore(v: np.ndarray) -> np.ndarray:
    """Standardised scores (FLAP's ``standarlization``: unbiased std); zeros when they do not vary."""
    if len(v) < 2:
        return np.zeros(len(v))
    std = float(np.std(v, ddof=1))
    return (v - v.mean()) / std if std > 0 else np.zeros(len(v))


def attention_unit_scores(space: SearchSpace, head_scores: np.ndarray) -> np.ndarray:
    """Score of each attention unit of one layer, in the order the plan removes them (ascending).

    As ``backend.plan.resolve_plan`` decides: under ``query_head`` with grouped-query attention
    the k-th unit removes the k-th weakest query head of every KV group (score: their mean);
    otherwise a unit is a KV group (or a head, for multi-head attention), scored by its heads' sum.
    Shape ``(attn_units,)``.
    """
    arch = space.arch
    groups = np.asarray(head_scores, dtype=float).reshape(arch.num_kv_heads, arch.queries_per_group)
    if space.head_unit == "query_head" and arch.num_kv_heads < arch.num_heads:
        return np.sort(groups, axis=1).mean(axis=0)
    return np.sort(groups.sum(axis=1))


def _step_scores(sorted_scores: np.ndarray, kept: list[int]) -> np.ndarray:
    """Mean score of what each level step removes, given the kept count at every level.

    A step that removes nothing (widths rounded to a multiple) gets the previous step's score, so
    it never comes before it.
    """
    n, out, prev = len(sorted_scores), [], -np.inf
    for j in range(1, len(kept)):
        chunk = sorted_scores[n - kept[j - 1] : n - kept[j]]
        prev = float(chunk.mean()) if len(chunk) else prev
        out.append(prev)
    return np.array(out)


def flap_order(space: SearchSpace, importance: Importance) -> np.ndarray:
    """FLAP's global removal order (An et al., AAAI 2024, structure "AL-AM"), as rows
    ``(module, layer)`` (module 0: attention, 1: MLP), one per level step, the first removed first.

    Each layer's attention-unit scores and channel scores are standardised separately (z-score per
    layer and module); one level step scores the mean standardised score of what it removes; all
    steps of all layers are sorted ascending. Within a sub-layer the steps stay in level order, so
    every prefix of the order is a configuration. Shape ``(n_steps, 2)``; frozen layers have none.
    """
    rows, keys = [], []
    for layer in range(space.num_layers):
        if layer in space.frozen_layers:
            continue
        units = np.sort(_zscore(attention_unit_scores(space, importance.attn[layer])))
        kept_units = [space.kept_attn_units(lv) for lv in range(space.attn_levels + 1)]
        channels = np.sort(_zscore(np.asarray(importance.mlp[layer], dtype=float)))
        kept_channels = [space.kept_mlp_channels(lv) for lv in range(space.mlp_levels + 1)]
        for module, scores in ((0, _step_scores(units, kept_units)), (1, _step_scores(channels, kept_channels))):
            for step, score in enumerate(scores):
                rows.append((module, layer))
                keys.append((score, module, layer, step))
    if not rows:
        return np.zeros((0, 2), dtype=int)
    score, module, layer, step = (np.array(k) for k in zip(*keys, strict=True))
    return np.array(rows, dtype=int)[np.lexsort((step, layer, module, score))]


def flap_config(space: SearchSpace, importance: Importance, meets: MeetsFn) -> np.ndarray | None:
    """The configuration FLAP's ranking gives under the budget, as levels.

    Steps are removed in ``flap_order`` until the actual kept parameters (and every other budget)
    are met; as FLAP weighs a head by its real cost (``compression_weight``), a whole attention
    unit may overshoot the budget by more than a channel. Then that unit stays (with the later
    ones of its sub-layer) and the next-ranked steps are removed instead, until the step that
    crosses the budget is an MLP step; the answer keeps the most parameters of those tried.
    ``None`` when removing every step does not meet the budget.
    """
    order = flap_order(space, importance)
    L = space.num_layers
    flat = order[:, 0] * L + order[:, 1]  # the index of the level each step raises
    base = np.zeros(2 * L, dtype=int)
    best: np.ndarray | None = None
    while len(flat):
        steps = flat

        def config(i: int, steps=steps, base=base) -> np.ndarray:
            return base + np.bincount(steps[:i], minlength=2 * L)

        i = _first_meeting(config, len(steps), meets)
        if i is None:
            break
        x = config(i)
        if best is None or space.params(x) > space.params(best):
            best = x
        if i == 0 or steps[i - 1] >= L:  # met by an MLP step (or by nothing): as fine as it gets
            break
        # an attention unit crossed the budget: keep it and the rest of that attention sub-layer
        base = config(i - 1)
        flat = steps[i:][steps[i:] != steps[i - 1]]
    return best


class _OneShot(Strategy):
    """A deterministic recipe: its answer under a budget, or a spread of kept fractions without one."""

    spread = tuple(np.round(np.arange(0.95, 0.0, -0.05), 2))

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, ctx: SearchContext) -> None:
        if ctx.constraint_names:
            x = self.solve(ctx, budget_meets(ctx))
            if x is None:
                raise EvopruneError(f"{self.name} cannot meet the budget even removing all it may prune: raise it")
            if not ctx.feasible(x[None])[0]:
                frac = ctx.space.params_fraction(x)
                raise EvopruneError(
                    f"{self.name}'s answer keeps {frac:.3f} of the parameters, under --min-params "
                    f"{ctx.settings.min_params}: lower --min-params"
                )
            configs = [x]
        else:
            found = (self.solve(ctx, budget_meets(ctx, f)) for f in self.spread if f >= ctx.settings.min_params)
            configs = [x for x in found if x is not None and any(x)]
        if configs:
            ctx.evaluate_now(np.array(configs), "baseline", 0)


class UniformBaseline(_OneShot):
    name = "uniform"

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:
        s = ctx.settings
        first, last = skipped_layers(ctx.space.num_layers, s.baseline_skip_first, s.baseline_skip_last)
        return uniform_config(ctx.space, meets, first, last)


class MLPOnlyBaseline(_OneShot):
    name = "mlp-only"

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:
        return mlp_only_config(ctx.space, meets)


class FLAPBaseline(_OneShot):
    name = "flap"

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:
        return flap_config(ctx.space, ctx.backend.score(), meets)


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
    "mlp-only": MLPOnlyBaseline,
    "flap": FLAPBaseline,
    "owl": OWLBaseline,
    "random": RandomBaseline,
    "predictor-rank": PredictorRank,
    "ga": GABaseline,
}
