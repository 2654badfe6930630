"""Local moves around the incumbents: configurations one level swap away from the best evaluated
ones under a budget (``level_swaps``, ``best_neighbours``).

A level swap prunes one variable one level more and another one level less, so the kept size stays
near the budget while pruning shifts between layers and sub-layers; EvoPress (Sieberling et al.,
2024, "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search") searches by
these moves alone. Here the surrogate ranks every neighbour of each incumbent and the
best-predicted one is measured, so part of each batch refines where the search already stands
while the rest explores where the surrogate is unsure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evoprune.engine.context import SearchContext
from evoprune.objectives.spec import quality_value


def level_swaps(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Every configuration one move from ``x``: each swap (variable ``i`` one level up, ``j != i``
    one level down) and each single-level step, within ``lower``..``upper``.

    ``x``, ``lower``, ``upper``: integer level vectors of shape (n_var,). Returns an int array of
    shape (m, n_var), swaps first; m is 0 when no variable can move.
    """
    x = np.asarray(x, dtype=int)
    up = np.flatnonzero(x < upper)
    down = np.flatnonzero(x > lower)
    i, j = np.meshgrid(up, down, indexing="ij")
    keep = i != j
    i, j = i[keep], j[keep]
    rows = np.arange(len(i))
    swaps = np.repeat(x[None], len(i), axis=0)
    swaps[rows, i] += 1
    swaps[rows, j] -= 1
    steps_up = np.repeat(x[None], len(up), axis=0)
    steps_up[np.arange(len(up)), up] += 1
    steps_down = np.repeat(x[None], len(down), axis=0)
    steps_down[np.arange(len(down)), down] -= 1
    return np.vstack([swaps, steps_up, steps_down]).reshape(-1, len(x))


def best_neighbours(
    incumbents: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    admissible: Callable[[np.ndarray], np.ndarray],
    predict: Callable[[np.ndarray], np.ndarray],
    k: int,
) -> np.ndarray:
    """Up to ``k`` neighbours (``level_swaps``) of the incumbents, the best-predicted first.

    The incumbents (shape (n, n_var), best first) take turns: each gives its best-predicted
    admissible neighbour not yet taken, so ``k`` moves spread over ``min(k, n)`` incumbents
    rather than crowding around one. ``admissible`` maps candidates (m, n_var) to a boolean mask
    (feasible, in the band, not evaluated yet); ``predict`` maps them to the minimised quality
    (m,). Returns an int array of shape (<= k, n_var).
    """
    ranked = []
    for x in np.atleast_2d(incumbents):
        near = level_swaps(x, lower, upper)
        near = near[admissible(near)] if len(near) else near
        order = np.argsort(predict(near), kind="stable") if len(near) else np.array([], dtype=int)
        ranked.append(near[order])
    chosen: list[np.ndarray] = []
    taken: set[bytes] = set()
    position = [0] * len(ranked)
    while len(chosen) < k and any(p < len(r) for p, r in zip(position, ranked, strict=True)):
        for n, options in enumerate(ranked):
            while position[n] < len(options) and options[position[n]].tobytes() in taken:
                position[n] += 1
            if position[n] < len(options) and len(chosen) < k:
                chosen.append(options[position[n]])
                taken.add(options[position[n]].tobytes())
                position[n] += 1
    return np.array(chosen, dtype=int).reshape(-1, len(lower))


def moves_around_incumbents(ctx: SearchContext, model, featurize, upper: np.ndarray, n: int) -> np.ndarray:
    """Under a budget, ``n`` level-swap neighbours of the best evaluated configurations within
    it (in the focus band when there is one), each the surrogate's best-predicted unknown
    neighbour of its incumbent (``local_moves.best_neighbours``); none without a budget."""
    none = np.zeros((0, ctx.space.n_var), dtype=int)
    if n <= 0 or not ctx.constraint_names:
        return none
    ok = [e for e in ctx.shared_evaluations() if e.status == "ok"]
    if not ok:
        return none
    X = np.array([e.levels for e in ok], dtype=int)
    values = np.array([quality_value(ctx.objectives.quality[0], e.metrics) for e in ok])
    inside = admissible(ctx, X, known=set()) & np.isfinite(values)
    order = [i for i in np.argsort(values, kind="stable") if inside[i]][:n]
    if not order:
        return none
    known = ctx.known_keys()
    return best_neighbours(
        X[order],
        ctx.space.lower,
        upper,
        lambda Z: admissible(ctx, Z, known),
        lambda Z: model.predict(featurize(Z)),
        n,
    )


def admissible(ctx: SearchContext, X: np.ndarray, known: set[str]) -> np.ndarray:
    """Mask (m,) of the configurations ``X`` (m, n_var) that are feasible,
    inside the focus band (when there is one) and not in ``known``."""
    ok = ctx.feasible(X)
    slack = ctx.focus_slack(X)
    if slack is not None:
        ok &= slack <= 0
    if known:  # keys only for the rows still in, validated at once: per-row keys dominated the move choice
        rows = np.flatnonzero(ok)
        ok[rows] = [k not in known for k in ctx.space.keys(X[rows])]
    return ok
