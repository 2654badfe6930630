"""Candidates inside the focus band just under a budget (``band_candidates``).

Under a budget the answer is a configuration that spends it, so with ``--focus`` acquisition
looks only within that band (``SearchContext.focus_slack``). The surrogate's inner search spreads
its front over every cost and may leave the band nearly empty; the band is then filled from the
best-ranked candidates below it, each with pruning taken back until it spends the budget
(``fill_to_budget``). Fills of different candidates often converge on the same configuration, one
already evaluated, so where that still leaves fewer than a batch the band gets the best-predicted
level swaps (``local_moves.best_neighbours``) of where the fills ended: a swap keeps the size and
moves pruning between layers, as EvoPress's search does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evoprune.engine.context import SearchContext
from evoprune.engine.local_moves import admissible, best_neighbours

ObjectiveFn = Callable[[np.ndarray], np.ndarray]


def band_candidates(
    ctx: SearchContext, pool: np.ndarray, rank: np.ndarray, objective_fn: ObjectiveFn, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Under a budget with ``focus``, the candidates inside the band, ranked by non-dominated
    sorting among themselves; ``pool`` and ``rank`` unchanged without a budget or focus, or when
    even the fills and their swaps give fewer than a batch.

    ``pool``: unknown feasible configurations (m, n_var), ``rank`` their non-dominated rank (m,);
    ``objective_fn`` maps configurations to the surrogate's objectives (m, n_obj), the first
    quality objective minimised; ``upper``: the level bounds of this round (n_var,).
    """
    slack = ctx.focus_slack(pool) if len(pool) else None
    k = max(1, min(ctx.settings.batch, ctx.budget_left()))
    if slack is None:
        return pool, rank
    band = list(pool[slack <= 0])
    if len(band) < k:
        known = ctx.known_keys() | {ctx.space.key(x) for x in band}
        ends = []
        for x in pool[np.argsort(rank, kind="stable")][: 4 * k]:
            y = fill_to_budget(ctx, x, objective_fn)
            ends.append(y)
            key = ctx.space.key(y)
            if key not in known and ctx.focus_slack(y[None])[0] <= 0:
                known.add(key)
                band.append(y)
        if len(band) < k and ends:
            q = ctx.objectives.names.index(ctx.objectives.quality[0])
            ends_array = np.array(ends)
            _, first = np.unique(ends_array, axis=0, return_index=True)
            band += list(
                best_neighbours(
                    ends_array[np.sort(first)],  # without repeats, in the rank order of the candidates filled
                    ctx.space.lower,
                    upper,
                    lambda Z: admissible(ctx, Z, known),
                    lambda Z: objective_fn(Z)[:, q],
                    2 * k - len(band),  # more than a batch: the acquisition still chooses among them
                )
            )
    if len(band) < k:
        return pool, rank
    band_array = np.array(band, dtype=int).reshape(-1, ctx.space.n_var)
    band_rank = np.empty(len(band_array))
    for r, members in enumerate(NonDominatedSorting().do(objective_fn(band_array))):
        band_rank[members] = r
    return band_array, band_rank


def fill_to_budget(ctx: SearchContext, x: np.ndarray, objective_fn: ObjectiveFn) -> np.ndarray:
    """``x`` (n_var,) with pruning taken back one level at a time, each step the one the surrogate
    predicts best, until no step stays within the budget: a candidate that spends it."""
    q = ctx.objectives.names.index(ctx.objectives.quality[0])
    x = x.copy()
    while True:
        steps = np.flatnonzero(x > 0)
        trials = np.repeat(x[None], len(steps), axis=0)
        trials[np.arange(len(steps)), steps] -= 1
        trials = trials[ctx.feasible(trials)] if len(trials) else trials
        if not len(trials):
            return x
        x = trials[int(np.argmin(objective_fn(trials)[:, q]))]
