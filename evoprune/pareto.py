"""The non-dominated, really evaluated configurations of a run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evoprune.store import Evaluation, Run, Store


@dataclass(frozen=True)
class ParetoPoint:
    id: int
    params: int
    params_fraction: float
    metrics: dict
    levels: dict
    origin: str
    round: int

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "params": self.params,
            "params_fraction": self.params_fraction,
            "metrics": self.metrics,
            "levels": self.levels,
            "origin": self.origin,
            "round": self.round,
        }


def split_levels(levels: list[int]) -> dict:
    half = len(levels) // 2
    return {"attn": list(levels[:half]), "mlp": list(levels[half:])}


COST_FIELDS = {
    "params": "params_fraction",
    "flops": "flops_fraction",
    "memory": "memory_bytes",
    "latency": "latency_ms",
}


def _objective_value(e: Evaluation, name: str) -> float:
    from evoprune.objectives import quality_value

    if name == "params":
        return e.params_fraction
    if name in COST_FIELDS:
        return float(e.cost.get(COST_FIELDS[name], np.nan))
    return quality_value(name, e.metrics)


def objectives(evals: list[Evaluation], names=("ppl", "params")) -> np.ndarray:
    """Minimisation objectives per evaluation: log ppl / log KL / -accuracy, and the costs."""
    return np.array([[_objective_value(e, n) for n in names] for e in evals], dtype=float).reshape(-1, len(names))


def run_objectives(run: Run) -> tuple[str, ...]:
    return tuple(n.strip() for n in run.settings.get("objectives", "ppl,params").split(","))


def front_of(evals: list[Evaluation], names=("ppl", "params")) -> list[Evaluation]:
    ok = [e for e in evals if e.status == "ok"]
    F = objectives(ok, names)
    keep = np.all(np.isfinite(F), axis=1)
    ok, F = [e for e, k in zip(ok, keep, strict=True) if k], F[keep]
    if not ok:
        return []
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    return sorted((ok[i] for i in idx), key=lambda e: -e.params_fraction)


def pareto_front(store: Store, run: Run) -> list[ParetoPoint]:
    return [
        ParetoPoint(
            id=e.id,
            params=e.params,
            params_fraction=e.params_fraction,
            metrics=e.metrics,
            levels=split_levels(e.levels),
            origin=e.origin,
            round=e.round,
        )
        for e in front_of(store.evaluations(run.id), run_objectives(run))
    ]


def hypervolume_of(F: np.ndarray, ref: np.ndarray) -> float:
    """pymoo hypervolume of the points of ``F`` that dominate ``ref`` (0 when none does)."""
    F = F[np.all(np.isfinite(F), axis=1)]
    F = F[np.all(ref > F, axis=1)]
    return float(HV(ref_point=ref)(F)) if len(F) else 0.0


def knee_index(F: np.ndarray) -> int:
    """The front point farthest from the straight line through its two extremes (normalised).

    pymoo's HighTradeoffPoints needs dense fronts and tends to return an extreme on the few
    points a pruning search evaluates, so the knee is the classic largest-gap-to-chord point.
    """
    if len(F) <= 2:
        return 0
    lo, hi = F.min(axis=0), F.max(axis=0)
    N = (F - lo) / np.where(hi > lo, hi - lo, 1)
    a, b = N[np.argmin(N[:, 1])], N[np.argmax(N[:, 1])]
    direction = (b - a) / (np.linalg.norm(b - a) or 1)
    rel = N - a
    distance = np.abs(rel[:, 0] * direction[1] - rel[:, 1] * direction[0])
    return int(np.argmax(distance))


def pick_evaluation(store: Store, run: Run, pick: str, max_params: float | None = None):
    """Resolve ``pick`` (an evaluation id, ``knee`` or ``best``) to a successful evaluation of ``run``.

    ``best`` is the best quality (the run's first quality objective) among the evaluated
    configurations that keep at most ``max_params`` of the parameters.
    """
    from evoprune.errors import EvopruneError
    from evoprune.objectives import is_quality

    names = run_objectives(run)
    metric = next(n for n in names if is_quality(n))
    evals = store.evaluations(run.id)
    front = front_of(evals, names)
    if not front:
        raise EvopruneError(f"run {run.id} has no successful evaluation yet: run 'evoprune search' first")
    if pick == "knee":
        return front[knee_index(objectives(front, (metric, "params")))]
    if pick == "best":
        if max_params is None:
            raise EvopruneError("--pick best needs a budget: add --max-params FRACTION (e.g. 0.7)")
        limit = max_params if max_params <= 1 else max_params / run.dense_params
        under = [e for e in evals if e.status == "ok" and e.params_fraction <= limit]
        if not under:
            smallest = min(e.params_fraction for e in front)
            raise EvopruneError(
                f"no evaluated configuration keeps at most {limit:.3f} of the parameters "
                f"(the smallest keeps {smallest:.3f}): raise --max-params or search further"
            )
        return min(under, key=lambda e: _objective_value(e, metric))
    try:
        eval_id = int(pick)
    except ValueError:
        raise EvopruneError(f"--pick must be an evaluation id, 'knee' or 'best', got {pick!r}") from None
    match = [e for e in evals if e.id == eval_id]
    if not match:
        raise EvopruneError(f"run {run.id} has no evaluation {eval_id}: see 'evoprune pareto --store {store.path}'")
    if match[0].status != "ok":
        raise EvopruneError(f"evaluation {eval_id} is {match[0].status}, not a usable configuration: pick another")
    return match[0]
