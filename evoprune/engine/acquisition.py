"""Which predicted-good candidates deserve a real evaluation.

An acquisition strategy scores candidates from the surrogate's predictive mean and standard
deviation; the batch is then picked greedily by score with a minimum distance between picks,
so a batch is not k near-copies of one configuration.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evoprune.errors import EvopruneError


def _uncertainty(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return std


def _greedy(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -mean


def _lcb(mean: np.ndarray, std: np.ndarray, kappa: float = 2.0) -> np.ndarray:
    return -(mean - kappa * std)


ACQUISITIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray] | None] = {
    "uncertainty": _uncertainty,
    "greedy": _greedy,
    "lcb": _lcb,
    "ehvi": None,  # needs the evaluated front: see expected_hv_improvement
}


def expected_hv_improvement(
    F_known: np.ndarray,
    ref: np.ndarray,
    quality_index: int,
    F_pred: np.ndarray,
    std: np.ndarray,
    seed: int,
    samples: int = 32,
) -> np.ndarray:
    """Monte-Carlo expected hypervolume improvement of each candidate over the evaluated front.

    The quality objective of each candidate is drawn from its predictive Normal distribution;
    the costs are exact. Improvement is measured with pymoo's hypervolume up to ``ref``.
    """
    from pymoo.indicators.hv import HV

    rng = np.random.default_rng(seed)
    F_known = F_known[np.all(np.isfinite(F_known), axis=1)]
    F_known = F_known[np.all(F_known < ref, axis=1)]
    hv = HV(ref_point=ref)
    base = float(hv(F_known)) if len(F_known) else 0.0
    draws = rng.standard_normal((samples, len(F_pred)))
    scores = np.zeros(len(F_pred))
    for j in range(len(F_pred)):
        gains = []
        for z in draws[:, j]:
            point = F_pred[j].copy()
            point[quality_index] += z * std[j]
            if np.all(point < ref):
                gains.append(float(hv(np.vstack([F_known, point]) if len(F_known) else point[None])) - base)
            else:
                gains.append(0.0)
        scores[j] = float(np.mean(gains))
    return scores


def select_batch(
    name: str,
    X: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    cost: np.ndarray,
    k: int,
    min_distance: int = 2,
    scores: np.ndarray | None = None,
) -> list[int]:
    """Indices of up to ``k`` rows of ``X`` to evaluate, spread along the cost axis.

    Candidates are cut into ``k`` segments of equal size by cost and the best-scoring one of
    each segment is taken, so the batch covers the front instead of crowding where the
    surrogate is least sure (usually its most pruned end). Rows closer than ``min_distance``
    (L1, in levels) to an earlier pick are skipped while others remain.
    """
    if scores is not None:
        score = np.asarray(scores, dtype=float)
    elif ACQUISITIONS.get(name) is None:
        raise EvopruneError(f"acquisition {name!r} is unknown: use one of {', '.join(ACQUISITIONS)}")
    else:
        score = ACQUISITIONS[name](mean, std)
    by_cost = np.argsort(cost, kind="stable")
    segments = [seg for seg in np.array_split(by_cost, min(k, len(X))) if len(seg)]
    chosen: list[int] = []

    def far_enough(i: int, distance: int) -> bool:
        return all(np.abs(X[i] - X[j]).sum() >= distance for j in chosen)

    for distance in (min_distance, 1):
        for seg in segments:
            if len(chosen) == k:
                return chosen
            if any(j in seg for j in chosen):
                continue
            for i in seg[np.argsort(-score[seg], kind="stable")]:
                if far_enough(int(i), distance):
                    chosen.append(int(i))
                    break
    # Fewer segments than k, or every segment used: fill by score.
    for i in np.argsort(-score, kind="stable"):
        if len(chosen) == k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen
