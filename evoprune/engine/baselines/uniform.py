"""One ratio in every layer: ``uniform``, LLM-Pruner's recipe (Ma, Fang, Wang, NeurIPS 2023), and
``mlp-only``.

``uniform`` prunes one ratio of heads and MLP channels in every layer but the first 4 and last 2
of a 32-layer model (LLM-Pruner's defaults ``block_attention_layer_start=4``,
``block_*_layer_end=30``), counts scaled to the model's depth; ``mlp-only`` prunes one ratio of
MLP channels in every layer and leaves attention untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evoprune.engine.baselines.one_shot import MeetsFn, _OneShot, first_meeting
from evoprune.engine.context import SearchContext
from evoprune.engine.registry import register_strategy
from evoprune.errors import EvopruneError
from evoprune.space import SearchSpace


def skipped_layers(num_layers: int, first: int | None = None, last: int | None = None) -> tuple[int, int]:
    """(first, last): how many layers LLM-Pruner's recipe leaves dense at each end.

    LLM-Pruner prunes layers 4..30 of 32 (``block_attention_layer_start=4``, ``..._end=30``);
    ``None`` scales those counts to ``num_layers``, rounding half up (30 layers: 4 and 2).
    """
    if first is None:
        first = int(np.floor(4 * num_layers / 32 + 0.5))
    if last is None:
        last = int(np.floor(2 * num_layers / 32 + 0.5))
    return first, last


def _mlp_sweep(space: SearchSpace, base: np.ndarray, layers: list[int]) -> tuple[Callable[[int], np.ndarray], int]:
    """A family that raises the MLP level of ``layers`` one layer at a time, evenly.

    Step ``i`` puts every layer at level ``i // P`` and ``i % P`` of them (the deepest first) one
    level higher, so consecutive members differ by one MLP step in one layer: the first member
    under a budget is within one step of it. Returns the family and its last index.
    """
    L, P = space.num_layers, len(layers)
    order = np.array(layers[::-1], dtype=int)

    def config(i: int) -> np.ndarray:
        x = base.copy()
        k, extra = divmod(i, P)
        x[L + order] = k
        x[L + order[:extra]] = k + 1
        return x

    return config, P * space.mlp_levels


def uniform_config(space: SearchSpace, meets: MeetsFn, skip_first: int, skip_last: int) -> np.ndarray | None:
    """LLM-Pruner's allocation: one pruning ratio for heads and MLP channels in the layers
    ``skip_first .. num_layers - skip_last - 1``, the least pruning that ``meets`` the budget.

    Heads come in a few attention units per layer (3 on SmolLM2), so one ratio cannot hold
    exactly: for each head count the MLP channels take the least ratio that meets the budget,
    and the answer is the head count whose ratio is closest to that channel ratio (the fewer
    heads on a tie). Returns shape ``(2 * num_layers,)`` levels, or ``None`` when even removing
    every head and channel of those layers does not meet the budget.

    Raises EvopruneError when the skipped layers leave nothing to prune.
    """
    L, A = space.num_layers, space.attn_levels
    layers = [i for i in range(skip_first, L - skip_last) if i not in space.frozen_layers]
    if not layers:
        raise EvopruneError(
            f"uniform skips {skip_first} first and {skip_last} last of {L} layers, leaving none to prune: "
            "lower --baseline-skip-first / --baseline-skip-last"
        )
    if meets(space.lower[None])[0]:
        return space.lower.copy()
    best, best_gap = None, np.inf
    for heads in range(A + 1):
        base = space.lower.copy()
        base[layers] = heads
        family, n = _mlp_sweep(space, base, layers)
        i = first_meeting(family, n, meets)
        if i is None:
            continue
        x = family(i)
        gap = abs(heads / max(A, 1) - x[L + np.array(layers)].mean() / max(space.mlp_levels, 1))
        if gap < best_gap - 1e-12:
            best, best_gap = x, gap
    return best


def mlp_only_config(space: SearchSpace, meets: MeetsFn) -> np.ndarray | None:
    """One ratio of MLP channels in every layer, the least that ``meets`` the budget (attention kept)."""
    layers = [i for i in range(space.num_layers) if i not in space.frozen_layers]
    family, n = _mlp_sweep(space, space.lower, layers)
    i = first_meeting(family, n, meets) if layers else None
    return None if i is None else family(i)


@register_strategy
class UniformBaseline(_OneShot):
    name = "uniform"

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:
        s = ctx.settings
        first, last = skipped_layers(ctx.space.num_layers, s.baseline_skip_first, s.baseline_skip_last)
        return uniform_config(ctx.space, meets, first, last)


@register_strategy
class MLPOnlyBaseline(_OneShot):
    name = "mlp-only"

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:
        return mlp_only_config(ctx.space, meets)
