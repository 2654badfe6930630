"""The one-shot baselines' common frame: a deterministic recipe that lands on the largest
configuration of its family meeting every budget (``_OneShot``), on the fine level grid it runs
with (``method_settings``).

Under a parameter budget each lands within one pruning step (one MLP channel by default, see
``method_settings``) under it, so within 1% under ``--max-params``. Without a budget they
evaluate a spread of kept fractions (95%, 90%, ...). The families are in ``uniform``
(``uniform``, ``mlp-only``) and ``flap``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from evoprune.backend.settings import BackendSettings
from evoprune.engine.context import SearchContext
from evoprune.engine.registry import Strategy
from evoprune.engine.settings import SearchSettings
from evoprune.errors import BudgetUnmet
from evoprune.objectives.spec import Objectives

MeetsFn = Callable[[np.ndarray], np.ndarray]  # (n, n_var) configurations -> (n,) bool: every budget met


# -- the one-shot baselines -------------------------------------------------------------------
FINE_GRID_METHODS = ("uniform", "mlp-only", "flap")


def method_settings(settings: SearchSettings) -> SearchSettings:
    """The settings ``settings.method`` runs with.

    The one-shot baselines (``FINE_GRID_METHODS``) get the finest level grid, one MLP level per
    ``mlp_multiple`` channels (``mlp_levels=0``) and one attention level per attention unit,
    uncapped (``attn_levels=-1``), so that their continuous widths land within 1% under a budget:
    with ``baseline_grid="fine"``, or, unset, when the backend keeps the default grid
    (``mlp_levels`` 8, ``attn_levels`` 0) and no latency objective or budget asks for the levels
    the latency table was measured at. Every other method, and ``baseline_grid="given"``, is
    returned unchanged (``evoprune search`` sets ``given`` when ``--mlp-levels`` or ``attn_levels``
    is given, even at its default value).
    """
    b, default = settings.backend, BackendSettings()
    if settings.method not in FINE_GRID_METHODS or settings.baseline_grid == "given":
        return settings
    if settings.baseline_grid is None:
        if (b.mlp_levels, b.attn_levels) != (default.mlp_levels, default.attn_levels):
            return settings
        if settings.max_latency_ms is not None or "latency" in Objectives.parse(settings.objectives).names:
            return settings
    return replace(settings, backend=replace(b, mlp_levels=0, attn_levels=-1))


def budget_meets(ctx: SearchContext, max_fraction: float | None = None) -> MeetsFn:
    """Whether configurations meet every budget of the run (and ``max_fraction`` of the parameters)."""

    def meets(X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        ok = np.ones(len(X), dtype=bool)
        if ctx.constraint_names:
            ok &= np.all(ctx.costs.matrix(X, ctx.constraint_names) <= ctx.constraint_limits, axis=1)
        if max_fraction is not None:
            ok &= ctx.space.params_matrix(X) / ctx.dense_params <= max_fraction + 1e-12
        return ok

    return meets


def first_meeting(family: Callable[[int], np.ndarray], n: int, meets: MeetsFn) -> int | None:
    """The smallest ``i`` in ``0..n`` whose ``family(i)`` meets the budget; ``None`` if none does.

    ``family`` must prune more as ``i`` grows (every cost non-increasing), so a bisection finds it.
    """
    if not meets(family(n)[None])[0]:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(family(mid)[None])[0]:
            hi = mid
        else:
            lo = mid + 1
    return lo


class _OneShot(Strategy):
    """A deterministic recipe: its answer under a budget, or a spread of kept fractions without one."""

    spread = tuple(np.round(np.arange(0.95, 0.0, -0.05), 2))

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, ctx: SearchContext) -> None:
        if ctx.constraint_names:
            x = self.solve(ctx, budget_meets(ctx))
            if x is None:
                raise BudgetUnmet(
                    f"{self.name} cannot meet the budget even removing all it may prune: raise it", ctx.run.id
                )
            if not ctx.feasible(x[None])[0]:
                frac = ctx.space.params_fraction(x)
                raise BudgetUnmet(
                    f"{self.name}'s answer keeps {frac:.3f} of the parameters, under --min-params "
                    f"{ctx.settings.min_params}: lower --min-params",
                    ctx.run.id,
                )
            configs = [x]
        else:
            found = (self.solve(ctx, budget_meets(ctx, f)) for f in self.spread if f >= ctx.settings.min_params)
            configs = [x for x in found if x is not None and any(x)]
        if configs:
            ctx.evaluate_now(np.array(configs), "baseline", 0)
