"""Which heads and channels a configuration keeps, given importance scores.

Masked evaluation and physical slicing both read this plan, so they agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evoprune.backend.importance import Importance
from evoprune.space import SearchSpace


@dataclass(frozen=True)
class LayerPlan:
    q_heads: tuple[int, ...]  # kept query heads, ordered by KV group
    kv_heads: tuple[int, ...]  # kept KV heads
    mlp_channels: tuple[int, ...]  # kept intermediate channels, ascending

    @property
    def attn_removed(self) -> bool:
        return not self.q_heads

    @property
    def mlp_removed(self) -> bool:
        return not self.mlp_channels


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, ascending; ties broken by index for determinism."""
    order = np.argsort(-scores, kind="stable")
    return sorted(int(i) for i in order[:k])


def resolve_plan(space: SearchSpace, x, importance: Importance) -> list[LayerPlan]:
    attn, mlp = space.split(x)
    arch = space.arch
    qpg = arch.queries_per_group
    plans = []
    for layer, (a_level, m_level) in enumerate(zip(attn, mlp, strict=True)):
        head_scores = importance.attn[layer]
        n_q, n_kv = space.attn_heads(a_level)
        if n_q == 0:
            q_heads, kv_heads = [], []
        elif n_kv == arch.num_kv_heads and n_q < arch.num_heads:
            # Same number of query heads removed from every group: KV heads all stay.
            per_group = n_q // arch.num_kv_heads
            q_heads = []
            for g in range(arch.num_kv_heads):
                members = np.arange(g * qpg, (g + 1) * qpg)
                q_heads += [int(members[i]) for i in _top(head_scores[members], per_group)]
            kv_heads = list(range(arch.num_kv_heads))
        else:
            group_scores = head_scores.reshape(arch.num_kv_heads, qpg).sum(axis=1)
            kv_heads = _top(group_scores, n_kv)
            q_heads = [g * qpg + j for g in kv_heads for j in range(qpg)]
        channels = _top(importance.mlp[layer], space.kept_mlp_channels(m_level))
        plans.append(LayerPlan(tuple(q_heads), tuple(kv_heads), tuple(channels)))
    return plans
