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


def objectives(evals: list[Evaluation], metric: str = "ppl") -> np.ndarray:
    """Minimisation objectives (log metric, kept parameter fraction) per evaluation."""
    return np.array([[np.log(e.metrics[metric]), e.params_fraction] for e in evals], dtype=float)


def front_of(evals: list[Evaluation], metric: str = "ppl") -> list[Evaluation]:
    ok = [e for e in evals if e.status == "ok" and metric in e.metrics]
    if not ok:
        return []
    idx = NonDominatedSorting().do(objectives(ok, metric), only_non_dominated_front=True)
    return sorted((ok[i] for i in idx), key=lambda e: -e.params_fraction)


def pareto_front(store: Store, run: Run, metric: str = "ppl") -> list[ParetoPoint]:
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
        for e in front_of(store.evaluations(run.id), metric)
    ]


def hypervolume(evals: list[Evaluation], reference_ppl: float, metric: str = "ppl") -> float:
    """Hypervolume of the evaluated front in (log metric, params fraction) up to (log ref, 1)."""
    front = front_of(evals, metric)
    if not front:
        return 0.0
    F = objectives(front, metric)
    ref = np.array([np.log(reference_ppl), 1.0 + 1e-9])
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


def pick_evaluation(store: Store, run: Run, pick: str, max_params: float | None = None, metric: str = "ppl"):
    """Resolve ``pick`` (an evaluation id, ``knee`` or ``best``) to a successful evaluation of ``run``."""
    from evoprune.errors import EvopruneError

    evals = store.evaluations(run.id)
    front = front_of(evals, metric)
    if not front:
        raise EvopruneError(f"run {run.id} has no successful evaluation yet: run 'evoprune search' first")
    if pick == "knee":
        return front[knee_index(objectives(front, metric))]
    if pick == "best":
        if max_params is None:
            raise EvopruneError("--pick best needs a budget: add --max-params FRACTION (e.g. 0.7)")
        under = [e for e in front if e.params_fraction <= max_params]
        if not under:
            smallest = min(e.params_fraction for e in front)
            raise EvopruneError(
                f"no evaluated configuration keeps at most {max_params:.3f} of the parameters "
                f"(the smallest keeps {smallest:.3f}): raise --max-params or search further"
            )
        return min(under, key=lambda e: e.metrics[metric])
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
