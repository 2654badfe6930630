"""The search's own predictions against its measurements (``search_predictions``): what the
surrogate the run used predicted for each acquired candidate before evaluating it, the only truly
out-of-sample figures, pooled over the run with their uncertainty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from evoprune.objectives.pareto import run_objectives
from evoprune.objectives.spec import is_quality, quality_value
from evoprune.reporting.prediction_metrics import COVERAGE_LEVEL, nan_to_none, pooled_figures
from evoprune.store import Run, Store


def target_label(objective: str) -> str:
    """What a surrogate of ``objective`` predicts: the objective on the minimised scale."""
    return {"ppl": "log perplexity", "kl": "log KL divergence"}.get(objective, f"negative {objective}")


def _measured_se(objective: str, metrics: dict) -> float | None:
    """Standard error of the measured value on the minimised scale (delta method for the logs)."""
    se = metrics.get(f"{objective}_se")
    if se is None:
        return None
    if objective in ("ppl", "kl"):
        return float(se) / max(float(metrics[objective]), 1e-8)
    return float(se)


@dataclass
class SearchPredictions:
    """The predictions the search made before evaluating each acquired candidate, next to what
    it then measured, on the surrogate's own scale (``target``: log perplexity for ``ppl``).

    ``points``: one per acquired evaluation (id, round, predicted, std, lower, upper, measured,
    measured_se, inside); ``pooled``: :func:`pooled_figures` over all of them; ``by_round``: the
    same over every acquired evaluation up to and including each round.
    """

    run_id: int
    objective: str
    target: str
    level: float
    surrogate: str | None
    points: list[dict]
    pooled: dict
    by_round: list[dict]

    def to_dict(self) -> dict:
        return nan_to_none(asdict(self))


def search_predictions(
    store: Store,
    run: Run | int | None = None,
    level: float = COVERAGE_LEVEL,
    resamples: int = 1000,
    seed: int = 0,
) -> SearchPredictions | None:
    """How well the search's own surrogate predicted what it then measured; ``None`` when the
    run stored no predictions (a baseline, or no round yet).

    Every successful evaluation with a stored prediction of the run's first quality objective
    counts once, measured on the first rung (what the surrogate is trained on). The interval is
    the central ``level`` interval of Normal(predicted, std).
    """
    run = run if isinstance(run, Run) else store.get_run(run)
    objective = next((n for n in run_objectives(run) if is_quality(n)), "ppl")
    z = float(stats.norm.ppf(0.5 + level / 2))
    points = []
    for e in store.evaluations(run.id, "ok"):
        pred = e.predicted or {}
        if objective not in pred or "std" not in pred:
            continue
        measured = quality_value(objective, e.metrics)
        mean, std = float(pred[objective]), float(pred["std"])
        if not (np.isfinite(measured) and np.isfinite(mean) and np.isfinite(std)):
            continue
        points.append(
            {
                "id": e.id,
                "round": e.round,
                "predicted": mean,
                "std": std,
                "lower": mean - z * std,
                "upper": mean + z * std,
                "measured": measured,
                "measured_se": _measured_se(objective, e.metrics),
                "inside": bool(abs(measured - mean) <= z * std),
            }
        )
    if not points:
        return None

    def figures(subset: list[dict]) -> dict:
        return pooled_figures(
            [p["measured"] for p in subset], [p["predicted"] for p in subset], [p["std"] for p in subset],
            level, resamples, seed,
        )  # fmt: skip

    rounds = sorted({p["round"] for p in points})
    by_round = [{"round": r, **figures([p for p in points if p["round"] <= r])} for r in rounds]
    return SearchPredictions(
        run_id=run.id,
        objective=objective,
        target=target_label(objective),
        level=level,
        surrogate=run.settings.get("surrogate"),
        points=points,
        pooled=figures(points),
        by_round=by_round,
    )
