"""Compression planning: the best really evaluated configuration under a budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from evoprune.engine.run import search
from evoprune.engine.settings import ProgressFn, log_progress
from evoprune.errors import EvopruneError
from evoprune.objectives.pareto import best_of, first_rung_tokens, rung_offsets, top_rung
from evoprune.objectives.spec import Budget, CostModel, parse_size, prediction_on_metric_scale
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

    def to_dict(self) -> dict:
        e = self.evaluation
        return {
            "run": self.run.id,
            "evaluation": e.id,
            "levels": {"attn": e.levels[: len(e.levels) // 2], "mlp": e.levels[len(e.levels) // 2 :]},
            "measured": e.metrics,
            "fidelity": {"tokens": top_rung(e)[0] or first_rung_tokens(self.run), "metrics": top_rung(e)[1]},
            "validation": e.validation,
            "predicted": prediction_on_metric_scale(e.predicted),
            "cost": self.cost,
            "layers": self.layers,
            "candidates_under_budget": self.candidates,
            "evaluations_spent": self.spent,
            "recoveries": [asdict(r) for r in self.recoveries],
        }


def plan(
    store_path: str,
    budget: Budget,
    spend: int = 0,
    run_id: int | None = None,
    progress: ProgressFn = log_progress,
    metric: str = "ppl",
) -> PlanResult:
    """Pick the lowest-``metric`` configuration meeting ``budget``; with ``spend`` > 0, first run
    ``spend`` more evaluations of a search focused on that budget (it reuses the stored pairs)."""
    from evoprune.engine.config import settings_from_run

    if all(v is None for v in (budget.max_params, budget.max_memory, budget.max_latency_ms)):
        raise EvopruneError("plan needs a budget: pass --max-params, --max-memory or --max-latency-ms")
    budget.check()
    with Store.open_existing(store_path, readonly=True) as st:
        run = st.get_run(run_id)
    spent = 0
    if spend > 0:
        base = settings_from_run(run.settings)
        focused = replace(
            base,
            max_params=budget.max_params,
            max_memory=budget.max_memory,
            max_latency_ms=budget.max_latency_ms,
            min_params=0.0,
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
    limit_params = budget.params_fraction_limit(run.dense_params)
    limit_memory = parse_size(budget.max_memory) if budget.max_memory else None
    latency = _latencies(run, space, evals) if budget.max_latency_ms is not None else {}
    under = []
    for e in evals:
        if metric not in e.metrics:
            continue
        if limit_params is not None and e.params_fraction > limit_params:
            continue
        if limit_memory is not None and cost_model.cost(e.levels).memory_bytes > limit_memory:
            continue
        if budget.max_latency_ms is not None and latency[e.id] > budget.max_latency_ms:
            continue
        under.append(e)
    if not under:
        raise EvopruneError(
            "no evaluated configuration meets the budget: run 'evoprune plan' with --spend N to search for one"
        )
    best = best_of(under, metric, rung_offsets(evals, metric))
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
    return PlanResult(run, best, layers, cost, len(under), spent, recoveries)


def _latencies(run: Run, space: SearchSpace, evals: list[Evaluation]) -> dict[int, float]:
    """Predicted forward latency (ms, the cached latency table of this machine) of each evaluation,
    by id: a store records latency only for runs that searched under a latency budget, so every
    configuration is priced by the same table here."""
    from evoprune.backend.loading import load_config, resolve_model
    from evoprune.objectives.spec import CostEvaluator

    if not evals:
        return {}
    config = load_config(resolve_model(run.model))
    costs = CostEvaluator(space, config, dtype=run.settings["backend"].get("dtype", "float32"))
    X = np.array([e.levels for e in evals], dtype=int)
    return {e.id: float(ms) for e, ms in zip(evals, costs.matrix(X, ["latency"])[:, 0], strict=True)}
