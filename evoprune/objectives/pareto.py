"""The non-dominated, really evaluated configurations of a run, and how configurations measured
at different fidelities are compared.

Every configuration has a first-rung measurement; the promising ones also have higher rungs of
the fidelity ladder (more tokens) and the picks a validation measurement. Choices use the
highest rung each configuration reached: its figure there, less the run's mean difference
between that rung and the first (over the configurations measured at both), so a figure on
8,192 tokens and one on 2,048 are on one scale while the better-measured one decides. The
choice of one configuration (``best_of``) is among the ``contenders``: the finalists, those that
reached the highest rung, on that rung alone (the correction is the same for each), and only
those others whose first-rung figure is clearly better than every finalist's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evoprune.space import SearchSpace
from evoprune.store import Evaluation, Run, Store


@dataclass(frozen=True)
class ParetoPoint:
    """A front member. ``metrics``: its first-rung measurement; ``fidelity``: the highest rung it
    reached (``{"tokens", "metrics"}``, metrics with standard errors); ``validation``: its
    measurement on the validation split (``{"tokens", "metrics"}``) or None; ``run``: the run that
    measured it (another run of the same problem for a warm-started run's shared pairs)."""

    id: int
    params: int
    params_fraction: float
    metrics: dict
    levels: dict
    origin: str
    round: int
    fidelity: dict | None = None
    validation: dict | None = None
    run: int | None = None

    def found(self, run_id: int | None = None) -> str:
        """How it was found, e.g. ``design``, ``round 3``, ``local, round 4``; prefixed by ``run K:``
        when another run than ``run_id`` measured it."""
        how = f"round {self.round}" if self.origin == "acquired" else self.origin
        if self.origin not in ("design", "acquired", "baseline"):
            how += f", round {self.round}"
        elsewhere = self.run is not None and run_id is not None and self.run != run_id
        return f"run {self.run}: {how}" if elsewhere else how

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "run": self.run,
            "params": self.params,
            "params_fraction": self.params_fraction,
            "metrics": self.metrics,
            "fidelity": self.fidelity,
            "validation": self.validation,
            "levels": self.levels,
            "origin": self.origin,
            "round": self.round,
        }


def top_rung(e: Evaluation) -> tuple[int | None, dict]:
    """(rung token count, metrics) of the highest ladder rung ``e`` reached; (None, first rung) if none."""
    if not e.ladder:
        return None, e.metrics
    tokens = max(int(t) for t in e.ladder)
    return tokens, e.ladder.get(tokens, e.ladder.get(str(tokens), {}))


def rung_offsets(evals: list[Evaluation], metric: str) -> dict[int, float]:
    """Per rung, the mean difference (minimised scale) between it and the first rung over the
    configurations measured at both: the text of a larger rung is not equally hard."""
    from evoprune.objectives.spec import quality_value

    diffs: dict[int, list[float]] = {}
    for e in evals:
        for t, m in e.ladder.items():
            d = quality_value(metric, m) - quality_value(metric, e.metrics)
            if np.isfinite(d):
                diffs.setdefault(int(t), []).append(d)
    return {t: float(np.mean(v)) for t, v in diffs.items()}


def selection_value(e: Evaluation, metric: str, offsets: dict[int, float]) -> float:
    """The minimised ``metric`` a choice uses: the highest rung reached, on the first rung's scale."""
    from evoprune.objectives.spec import quality_value

    tokens, metrics = top_rung(e)
    value = quality_value(metric, metrics)
    if tokens is None or not np.isfinite(value):
        return quality_value(metric, e.metrics)
    return value - offsets.get(tokens, 0.0)


def contenders(evals: list[Evaluation], metric: str) -> list[Evaluation]:
    """The evaluations a choice among ``evals`` is made from, as in successive halving: those that
    reached the highest rung any of them reached (the ladder chose them on the lower rungs; the
    others lost there), and any other whose first-rung figure beats the best of theirs by more than
    noise (two standard errors of the difference), which the ladder never weighed against them
    (under a budget other than the run's, say). All of ``evals`` when none climbed.

    Why not all, by ``selection_value``: the rung offset is a mean over finalists promoted for
    first-rung figures of varying luck, so it can leave each finalist's figure worse than the raw
    first-rung figure of one the ladder passed over, and the choice fell to the luckiest
    first-rung figure, the selection the ladder exists to prevent (a 150-evaluation search at 80%
    of SmolLM2-135M picked a configuration measured on 2,048 tokens over 16 measured on 8,192)."""
    from evoprune.objectives.spec import quality_se, quality_value

    rung = {e.id: top_rung(e)[0] for e in evals}
    top = max((t for t in rung.values() if t is not None), default=None)
    if top is None:
        return list(evals)
    finalists = [e for e in evals if rung[e.id] == top]
    lead = min(finalists, key=lambda e: quality_value(metric, e.metrics))
    lead_v, lead_se = quality_value(metric, lead.metrics), quality_se(metric, lead.metrics)

    def clearly_better(e: Evaluation) -> bool:
        gap = 2 * math.hypot(lead_se, quality_se(metric, e.metrics))
        return quality_value(metric, e.metrics) < lead_v - gap

    return [e for e in evals if rung[e.id] == top or clearly_better(e)]


def best_of(evals: list[Evaluation], metric: str, offsets: dict[int, float] | None = None) -> Evaluation | None:
    """The successful evaluation with the best ``metric`` by the highest fidelity each reached,
    among the ``contenders``."""
    ok = [e for e in evals if e.status == "ok" and metric in e.metrics]
    if not ok:
        return None
    offsets = rung_offsets(ok, metric) if offsets is None else offsets
    return min(contenders(ok, metric), key=lambda e: (selection_value(e, metric, offsets), -e.params_fraction, e.id))


def split_levels(levels: list[int]) -> dict:
    half = len(levels) // 2
    return {"attn": list(levels[:half]), "mlp": list(levels[half:])}


COST_FIELDS = {
    "params": "params_fraction",
    "flops": "flops_fraction",
    "memory": "memory_bytes",
    "latency": "latency_ms",
}


def _objective_value(e: Evaluation, name: str, offsets: dict[int, float] | None = None) -> float:
    from evoprune.objectives.spec import quality_value

    if name == "params":
        return e.params_fraction
    if name in COST_FIELDS:
        return float(e.cost.get(COST_FIELDS[name], np.nan))
    if offsets is None:
        return quality_value(name, e.metrics)
    return selection_value(e, name, offsets)


def objectives(evals: list[Evaluation], names=("ppl", "params"), by_fidelity: bool = True) -> np.ndarray:
    """Minimisation objectives per evaluation: log ppl / log KL / -accuracy, and the costs.

    ``by_fidelity``: qualities from the highest rung each configuration reached (see
    ``selection_value``); otherwise from the first rung, as the surrogate sees them.
    """
    offsets = {n: rung_offsets(evals, n) if by_fidelity else None for n in names}
    rows = [[_objective_value(e, n, offsets[n]) for n in names] for e in evals]
    return np.array(rows, dtype=float).reshape(-1, len(names))


def run_objectives(run: Run) -> tuple[str, ...]:
    return tuple(n.strip() for n in run.settings.get("objectives", "ppl,params").split(","))


def quality_objective(run: Run) -> str:
    """The run's first quality objective (``ppl``, ``kl``, ``acc:TASK``): what its front, plot,
    knee and picks are shown by."""
    from evoprune.objectives.spec import is_quality

    return next((n for n in run_objectives(run) if is_quality(n)), "ppl")


def front_of(evals: list[Evaluation], names=("ppl", "params"), by_fidelity: bool = True) -> list[Evaluation]:
    """The non-dominated successful evaluations, most parameters first (qualities by fidelity)."""
    ok = [e for e in evals if e.status == "ok"]
    F = objectives(ok, names, by_fidelity)
    keep = np.all(np.isfinite(F), axis=1)
    ok, F = [e for e, k in zip(ok, keep, strict=True) if k], F[keep]
    if not ok:
        return []
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    return sorted((ok[i] for i in idx), key=lambda e: -e.params_fraction)


def front_evaluations(store: Store, run: Run, names: tuple[str, ...] | None = None) -> list[Evaluation]:
    """The evaluations of the run's front (by ``names``, default the run's objectives), over its
    own evaluations and those it shares (``Store.shared_evaluations``): the table of ``pareto``
    and the figures of ``pareto --plot`` and ``report`` choose among the same pairs."""
    return front_of(store.shared_evaluations(run), names or run_objectives(run))


def pareto_front(store: Store, run: Run) -> list[ParetoPoint]:
    """The run's front, over its evaluations and, for a warm-started run, the pairs it shares with
    other runs of the same problem (``Store.shared_evaluations``). Levels read as what they keep
    (``SearchSpace.canonical``): a sub-layer a level left untouched shows level 0, in runs
    recorded before repeated widths were merged too."""
    space = SearchSpace.from_dict(run.space)
    return [
        ParetoPoint(
            id=e.id,
            params=e.params,
            params_fraction=e.params_fraction,
            metrics=e.metrics,
            levels=split_levels(space.canonical(e.levels).tolist()),
            origin=e.origin,
            round=e.round,
            fidelity=fidelity_of(e, run),
            validation=e.validation,
            run=e.run_id,
        )
        for e in front_evaluations(store, run)
    ]


def fidelity_of(e: Evaluation, run: Run) -> dict:
    """``{"tokens", "metrics"}`` of the highest rung evaluation ``e`` of ``run`` reached."""
    tokens, metrics = top_rung(e)
    return {"tokens": first_rung_tokens(run) if tokens is None else tokens, "metrics": metrics}


def first_rung_tokens(run: Run) -> int | None:
    """Tokens of a run's first rung (its evaluations' own measurement)."""
    backend = run.settings.get("backend", {})
    return backend.get("eval_tokens")


def hypervolume_of(F: np.ndarray, ref: np.ndarray) -> float:
    """pymoo hypervolume of the points of ``F`` that dominate ``ref`` (0 when none does)."""
    F = F[np.all(np.isfinite(F), axis=1)]
    F = F[np.all(ref > F, axis=1)]
    return float(HV(ref_point=ref)(F)) if len(F) else 0.0


def knee_of(front: list[Evaluation], metric: str) -> int:
    """Index in ``front`` of its knee by ``metric`` against the kept parameter fraction, with the
    quality in nats per token where it has them: log perplexity (a cross-entropy), KL itself, not
    its log (the dense model's KL of about 0, floored to 1e-8, stretched a log axis so far that
    the knee fell on near-dense configurations), and minus an accuracy."""
    F = objectives(front, (metric, "params"))
    if metric == "kl":
        F[:, 0] = np.exp(F[:, 0])
    return knee_index(F)


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
