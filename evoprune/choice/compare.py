"""Methods side by side at the same budget of real evaluations, on one loaded model and one store."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from evoprune.engine.run import prepare_backend, search
from evoprune.engine.settings import ProgressFn, SearchSettings, log_progress
from evoprune.errors import BudgetUnmet, EvopruneError
from evoprune.objectives.pareto import best_of, fidelity_of, rung_offsets
from evoprune.objectives.spec import Budget, CostEvaluator
from evoprune.space import SearchSpace
from evoprune.store import Evaluation, Run, Store

DEFAULT_METHODS = ("evoprune", "uniform", "mlp-only", "flap", "owl", "random", "predictor-rank", "ga")


@dataclass(frozen=True)
class CompareRow:
    method: str
    run_id: int | None  # None: the method was skipped before its run was stored
    evaluations: int
    failed: int
    best_id: int | None
    best_value: float | None  # the first quality metric (e.g. ppl), as measured on the first rung
    best_params_fraction: float | None
    eval_s: float
    wall_s: float | None  # this call's wall time; None when the run was already complete
    best_se: float | None = None  # standard error of best_value
    best_fidelity: dict | None = None  # {"tokens", "metrics"}: the highest rung the best reached
    best_validation: dict | None = None  # {"tokens", "metrics"} on the validation split, when measured
    skipped: str | None = None  # why the method has no answer at this budget (see BudgetUnmet)

    def to_dict(self) -> dict:
        """The row as JSON: ``run`` is the run id, as in ``pareto``, ``plan`` and ``runs``."""
        d = self.__dict__.copy()
        d["run"] = d.pop("run_id")
        return d


def choice_order(rows: Sequence[CompareRow], metric: str = "ppl") -> list[CompareRow]:
    """``rows`` best first by ``metric`` on windows that judge every pick alike, rows without a pick
    last: the validation split (never chosen by) when every pick has a finite figure there, else
    the top rung when every pick reached the same one with a finite figure, else the first rung.
    Figures of different splits or rungs are never set against each other: a larger rung's text is
    not equally hard. A pick whose figure is not finite (a collapsed model) sorts after the others."""
    from evoprune.objectives.spec import quality_value

    picked = [r for r in rows if r.best_value is not None]
    figures = (
        lambda r: (r.best_validation or {}).get("metrics") or {},
        lambda r: (r.best_fidelity or {}).get("metrics") or {},
        lambda r: {metric: r.best_value},
    )
    for i, figure in enumerate(figures):
        values = {id(r): quality_value(metric, figure(r)) for r in picked}
        same_rung = i != 1 or len({(r.best_fidelity or {}).get("tokens") for r in picked}) == 1
        if same_rung and all(np.isfinite(v) for v in values.values()):
            break

    def key(r: CompareRow) -> tuple:
        v = values.get(id(r), math.nan)
        return (r.best_value is None, not np.isfinite(v), v if np.isfinite(v) else 0.0)

    return sorted(rows, key=key)


def best_under_budget(evals: list[Evaluation], metric: str, budget: Budget, costs: CostEvaluator) -> Evaluation | None:
    """The best measured configuration of one run that meets every bound of ``budget`` (None if
    none does). Unlike ``objectives.budget.best_under_budget`` (plan, export), it does not raise
    and prices configurations in the run's own space with ``costs``."""
    ok = [e for e in evals if e.status == "ok" and metric in e.metrics]
    if not ok:
        return None
    names, limits = costs.constraints(budget)
    X = np.array([e.levels for e in ok])
    feasible = np.all(costs.matrix(X, names) <= limits, axis=1) if names else np.ones(len(ok), dtype=bool)
    candidates = [e for e, f in zip(ok, feasible, strict=True) if f]
    if not candidates:
        return None
    return best_of(candidates, metric, rung_offsets(ok, metric))


def summarize(
    store: Store, run: Run, settings: SearchSettings, costs: CostEvaluator, wall_s: float | None
) -> CompareRow:
    from evoprune.objectives.spec import Objectives

    metric = Objectives.parse(settings.objectives).quality[0]
    evals = store.evaluations(run.id)
    best = best_under_budget(evals, metric, settings.budget, costs)
    return CompareRow(
        method=settings.method,
        run_id=run.id,
        evaluations=len(evals),
        failed=sum(e.status == "failed" for e in evals),
        best_id=best.id if best else None,
        best_value=float(best.metrics[metric]) if best else None,
        best_params_fraction=best.params_fraction if best else None,
        eval_s=float(sum(e.duration_s or 0 for e in evals)),
        wall_s=wall_s,
        best_se=best.metrics.get(f"{metric}_se") if best else None,
        best_fidelity=fidelity_of(best, run) if best else None,
        best_validation=best.validation if best else None,
    )


def compare(
    model: str,
    data: str,
    store: str,
    settings: SearchSettings,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    progress: ProgressFn = log_progress,
) -> list[CompareRow]:
    """Run every method with ``settings`` (same budget, seed and evaluator) and summarise each.

    ``methods``: names, or one comma-separated string of them. Warm start is off for all of
    them, so no method sees another's evaluations. The model is loaded once; a method on another
    level grid (``evoprune.engine.baselines.one_shot.method_settings``) gets a second backend on
    it, and its evaluations are costed in its own run's space. A one-shot method whose recipe
    cannot answer under the budget (``BudgetUnmet``) is a row with ``skipped`` set; raises that
    error when every method is skipped, and ``EvopruneError`` for an unknown method.
    """
    from evoprune.engine.registry import STRATEGIES

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not methods:
        raise EvopruneError(f"no method to compare: name one or more of {', '.join(STRATEGIES)}")
    unknown = [m for m in methods if m not in STRATEGIES]
    if unknown:
        raise EvopruneError(f"method {unknown[0]!r} is unknown: use any of {', '.join(STRATEGIES)}")
    backend = prepare_backend(model, data, settings, progress)
    rows = []
    for method in methods:
        progress("phase", name=f"method {method}")
        s = replace(settings, method=method, warm_start=False)
        start = time.perf_counter()
        try:
            result = search(model, data, store, s, progress, backend=backend)
        except BudgetUnmet as exc:
            progress("phase", name=f"method {method} skipped: {exc}")
            rows.append(CompareRow(method, exc.run_id, 0, 0, None, None, None, 0.0, None, skipped=str(exc)))
            continue
        wall = time.perf_counter() - start if result.new_evaluations else None
        costs = CostEvaluator(
            SearchSpace.from_dict(result.run.space), backend.loaded.model.config, dtype=backend.settings.dtype
        )
        with Store(store) as st:
            rows.append(summarize(st, result.run, s, costs, wall))
    if all(r.skipped for r in rows):
        raise BudgetUnmet(rows[0].skipped)
    return rows
