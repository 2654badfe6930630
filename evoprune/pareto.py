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
