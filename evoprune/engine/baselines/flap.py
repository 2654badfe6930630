"""``flap``: FLAP's adaptive structure "AL-AM" (An et al., AAAI 2024).

Scores standardised per layer and module, one global ranking of all heads and channels, removed
lowest first until the budget is met, each counted at its real parameter cost.
"""

from __future__ import annotations

import numpy as np

from evoprune.backend.importance import Importance
from evoprune.engine.baselines.one_shot import MeetsFn, _OneShot, first_meeting
from evoprune.engine.context import SearchContext
from evoprune.engine.registry import register_strategy
from evoprune.space import SearchSpace


def _zscore(v: np.ndarray) -> np.ndarray:
    """Standardised scores (FLAP's ``standarlization``: unbiased std); zeros when they do not vary."""
    if len(v) < 2:
        return np.zeros(len(v))
    std = float(np.std(v, ddof=1))
    return (v - v.mean()) / std if std > 0 else np.zeros(len(v))


def attention_unit_scores(space: SearchSpace, head_scores: np.ndarray) -> np.ndarray:
    """Score of each attention unit of one layer, in the order the plan removes them (ascending).

    As ``backend.plan.resolve_plan`` decides: under ``query_head`` with grouped-query attention
    the k-th unit removes the k-th weakest query head of every KV group (score: their mean);
    otherwise a unit is a KV group (or a head, for multi-head attention), scored by its heads' sum.
    Shape ``(attn_units,)``.
    """
    arch = space.arch
    groups = np.asarray(head_scores, dtype=float).reshape(arch.num_kv_heads, arch.queries_per_group)
    if space.head_unit == "query_head" and arch.num_kv_heads < arch.num_heads:
        return np.sort(groups, axis=1).mean(axis=0)
    return np.sort(groups.sum(axis=1))


def _step_scores(sorted_scores: np.ndarray, kept: list[int]) -> np.ndarray:
    """Mean score of what each level step removes, given the kept count at every level.

    A step that removes nothing (widths rounded to a multiple) gets the previous step's score, so
    it never comes before it.
    """
    n, out, prev = len(sorted_scores), [], -np.inf
    for j in range(1, len(kept)):
        chunk = sorted_scores[n - kept[j - 1] : n - kept[j]]
        prev = float(chunk.mean()) if len(chunk) else prev
        out.append(prev)
    return np.array(out)


def flap_order(space: SearchSpace, importance: Importance) -> np.ndarray:
    """FLAP's global removal order (An et al., AAAI 2024, structure "AL-AM"), as rows
    ``(module, layer)`` (module 0: attention, 1: MLP), one per level step, the first removed first.

    Each layer's attention-unit scores and channel scores are standardised separately (z-score per
    layer and module); one level step scores the mean standardised score of what it removes; all
    steps of all layers are sorted ascending. Within a sub-layer the steps stay in level order, so
    every prefix of the order is a configuration. Shape ``(n_steps, 2)``; frozen layers have none.
    """
    rows, keys = [], []
    for layer in range(space.num_layers):
        if layer in space.frozen_layers:
            continue
        units = np.sort(_zscore(attention_unit_scores(space, importance.attn[layer])))
        kept_units = [space.kept_attn_units(lv) for lv in range(space.attn_levels + 1)]
        channels = np.sort(_zscore(np.asarray(importance.mlp[layer], dtype=float)))
        kept_channels = [space.kept_mlp_channels(lv) for lv in range(space.mlp_levels + 1)]
        for module, scores in ((0, _step_scores(units, kept_units)), (1, _step_scores(channels, kept_channels))):
            for step, score in enumerate(scores):
                rows.append((module, layer))
                keys.append((score, module, layer, step))
    if not rows:
        return np.zeros((0, 2), dtype=int)
    score, module, layer, step = (np.array(k) for k in zip(*keys, strict=True))
    return np.array(rows, dtype=int)[np.lexsort((step, layer, module, score))]


def flap_config(space: SearchSpace, importance: Importance, meets: MeetsFn) -> np.ndarray | None:
    """The configuration FLAP's ranking gives under the budget, as levels.

    Steps are removed in ``flap_order`` until the actual kept parameters (and every other budget)
    are met; as FLAP weighs a head by its real cost (``compression_weight``), a whole attention
    unit may overshoot the budget by more than a channel. Then that unit stays (with the later
    ones of its sub-layer) and the next-ranked steps are removed instead, until the step that
    crosses the budget is an MLP step; the answer keeps the most parameters of those tried.
    ``None`` when removing every step does not meet the budget.
    """
    order = flap_order(space, importance)
    L = space.num_layers
    flat = order[:, 0] * L + order[:, 1]  # the index of the level each step raises
    base = np.zeros(2 * L, dtype=int)
    best: np.ndarray | None = None
    while len(flat):
        steps = flat

        def config(i: int, steps=steps, base=base) -> np.ndarray:
            return base + np.bincount(steps[:i], minlength=2 * L)

        i = first_meeting(config, len(steps), meets)
        if i is None:
            break
        x = config(i)
        if best is None or space.params(x) > space.params(best):
            best = x
        if i == 0 or steps[i - 1] >= L:  # met by an MLP step (or by nothing): as fine as it gets
            break
        # an attention unit crossed the budget: keep it and the rest of that attention sub-layer
        base = config(i - 1)
        flat = steps[i:][steps[i:] != steps[i - 1]]
    return best


@register_strategy
class FLAPBaseline(_OneShot):
    name = "flap"

    def solve(self, ctx: SearchContext, meets: MeetsFn) -> np.ndarray | None:
        return flap_config(ctx.space, ctx.backend.score(), meets)
