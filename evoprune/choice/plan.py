"""Compression planning: the best really evaluated configuration under a budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from evoprune.engine.design import intensity_sample, structured_families
from evoprune.engine.run import search
from evoprune.engine.settings import ProgressFn, log_progress
from evoprune.errors import EvopruneError
from evoprune.objectives.budget import best_under_budget, cost_evaluator, has_limit, recorded_budget
from evoprune.objectives.pareto import first_rung_tokens, run_objectives, top_rung
from evoprune.objectives.spec import Budget, CostModel, frac_above, is_quality, prediction_on_metric_scale
from evoprune.space import SearchSpace
from evoprune.store import Evaluation, RecoveryRecord, Run, Store


@dataclass
class PlanResult:
    run: Run
    evaluation: Evaluation
    layers: list[dict]
    cost: dict
    candidates: int
    spent: int
    recoveries: list[RecoveryRecord] = field(default_factory=list)  # recovery trainings of its export
    metric: str = "ppl"  # the quality the pick was chosen by (the run's first quality objective by default)
    # Configurations under the budget that keep more than the pick and competed on their first rung
    # alone, when the pick climbed the ladder: the run's ladder never weighed them (it searched
    # without this budget, say); ``--spend`` would.
    passed_over: int = 0

    def to_dict(self) -> dict:
        e = self.evaluation
        return {
            "run": self.run.id,
            "evaluation": e.id,
            "evaluation_run": e.run_id,
            "levels": {"attn": e.levels[: len(e.levels) // 2], "mlp": e.levels[len(e.levels) // 2 :]},
            "measured": e.metrics,
            "fidelity": {"tokens": top_rung(e)[0] or first_rung_tokens(self.run), "metrics": top_rung(e)[1]},
            "validation": e.validation,
            "predicted": prediction_on_metric_scale(e.predicted),
            "cost": self.cost,
            "layers": self.layers,
            "candidates_under_budget": self.candidates,
            "evaluations_spent": self.spent,
            "kept_more_first_rung_only": self.passed_over,
            "recoveries": [asdict(r) for r in self.recoveries],
        }


def plan(
    store_path: str,
    budget: Budget,
    spend: int = 0,
    run_id: int | None = None,
    progress: ProgressFn = log_progress,
    metric: str | None = None,
) -> PlanResult:
    """Pick the best configuration meeting ``budget`` by ``metric`` (default: the run's first
    quality objective, as ``export --pick best`` does, e.g. ``ppl`` or ``acc:arc_easy``); with
    ``spend`` > 0, first run ``spend`` more evaluations of a search focused on that budget (it
    reuses the stored pairs). A ``budget`` without a limit is the run's own (``recorded_budget``),
    as for ``export --pick best``."""
    from evoprune.engine.config import settings_from_run

    with Store.open_existing(store_path, readonly=True) as st:
        run = st.get_run(run_id)
    if not has_limit(budget):
        budget = recorded_budget(run)
    if not has_limit(budget):
        raise EvopruneError(
            f"plan needs a budget and run {run.id} searched without one: pass --max-params, --max-memory or "
            "--max-latency-ms"
        )
    budget.check()
    spent = 0
    if spend > 0:
        base = settings_from_run(run.settings)
        focused = replace(
            base,
            max_params=budget.max_params,
            max_memory=budget.max_memory,
            max_latency_ms=budget.max_latency_ms,
            min_params=focused_min_params(run, base.min_params, budget),
            warm_start=True,
            method="evoprune",
        )
        # The focused run is found again by its settings: a second --spend on the same budget
        # continues it, and the spend counts only its own evaluations.
        key, identity = run.settings.get("pair_key"), focused.identity()
        with Store.open_existing(store_path, readonly=True) as st:
            same = [r for r in st.runs() if r.settings.get("pair_key") == key]
            prior = max(
                (len(st.evaluations(r.id)) for r in same if settings_from_run(r.settings).identity() == identity),
                default=0,
            )
        result = search(run.model, run.data, store_path, replace(focused, evals=prior + spend), progress)
        spent = result.new_evaluations
    space = SearchSpace.from_dict(run.space)
    cost_model = CostModel(space, dtype=run.settings["backend"].get("dtype", "float32"))  # the run's bytes per weight
    with Store.open_existing(store_path, readonly=True) as st:
        # Every run of the problem, whatever its method: a plan takes the best answer in the store,
        # the baselines' of ``compare`` included.
        evals = st.problem_evaluations(run, status="ok")
    metric = metric or next(n for n in run_objectives(run) if is_quality(n))
    best, under, latency = best_under_budget(run, evals, budget, metric)
    widths = space.widths(best.levels)
    layers = [{"layer": i, "q_heads": w.q_heads, "kv_heads": w.kv_heads, "mlp": w.mlp_channels}
              for i, w in enumerate(widths)]  # fmt: skip
    c = cost_model.cost(best.levels)
    cost = {"params": c.params, "params_fraction": c.params_fraction, "flops_per_token": c.flops_per_token,
            "flops_context_tokens": cost_model.context, "memory_bytes": c.memory_bytes,
            "memory_context_tokens": cost_model.context,
            **({"latency_ms": latency[best.id]} if best.id in latency
               else {k: v for k, v in best.cost.items() if k == "latency_ms"})}  # fmt: skip
    with Store.open_existing(store_path, readonly=True) as st:
        recoveries = st.recoveries(eval_id=best.id)
    passed_over = 0
    if top_rung(best)[0] is not None:  # the pick climbed: count who never did yet keeps more
        passed_over = sum(1 for e in under if top_rung(e)[0] is None and e.params_fraction > best.params_fraction)
    return PlanResult(run, best, layers, cost, len(under), spent, recoveries, metric, passed_over)


def focused_min_params(run: Run, min_params: float, budget: Budget) -> float:
    """The ``--min-params`` of the search that ``plan --spend`` focuses on ``budget``: the parent
    run's ``min_params``, unless the budget needs lower; then 0.

    The parent's floor is the user's statement of which configurations are worth evaluating at
    all (below it models collapse), and the best model under a budget spends all of it, so the
    floor removes nothing the answer needs, except where no configuration above it meets the
    budget: a parameter limit at or below the floor, or a memory or latency limit that none of
    the structured families and a hypercube of the space meets above it (memory and latency are
    not functions of the parameter count alone)."""
    space = SearchSpace.from_dict(run.space)
    if not min_params or frac_above(replace(budget, min_params=min_params), space.arch.dense_params()):
        return 0.0
    costs = cost_evaluator(run, latency=budget.max_latency_ms is not None)
    names, limits = costs.constraints(budget)
    if all(name == "params" for name in names):
        return min_params
    X = np.vstack([*(np.array(c) for c in structured_families(space).values()), intensity_sample(space, 512, 0)])
    X = X[space.params_matrix(X) / space.arch.dense_params() >= min_params]
    meets = np.all(costs.matrix(X, names) <= limits, axis=1)  # every bound at once, the parameter limit too
    return min_params if meets.any() else 0.0
