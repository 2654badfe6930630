"""Features the surrogate sees for a configuration.

Raw levels alone rank configurations of equal size poorly, so next to the normalised levels we
give the share of importance each configuration removes from every sub-layer (from the scores
the backend already computed), the share removed from the whole model, and the kept fraction of
parameters. All of it comes from lookup tables, so featurising a population is cheap.
"""

from __future__ import annotations

import warnings

import numpy as np

from evoprune.backend.importance import Importance
from evoprune.backend.plan import resolve_plan
from evoprune.space import SearchSpace


class FeatureMap:
    def __init__(self, space: SearchSpace, importance: Importance):
        self.space = space
        L = space.num_layers
        upper = space.upper
        self._scale = np.where(upper > 0, upper, 1).astype(float)
        attn_total = importance.attn.sum(axis=1)
        mlp_total = importance.mlp.sum(axis=1)
        # removed[l, level]: share of layer l's importance removed at that level.
        self._attn_removed = np.zeros((L, space.attn_levels + 1))
        self._mlp_removed = np.zeros((L, space.mlp_levels + 1))
        with warnings.catch_warnings():  # non-finite scores are cleaned up below
            warnings.simplefilter("ignore", RuntimeWarning)
            self._fill_tables(space, importance, upper, attn_total, mlp_total)
        self._finish(attn_total, mlp_total)

    def _fill_tables(self, space, importance, upper, attn_total, mlp_total) -> None:
        L = space.num_layers
        for level in range(max(space.attn_levels, space.mlp_levels) + 1):
            x = np.minimum(np.concatenate([np.full(L, level), np.full(L, level)]), upper)
            for layer, plan in enumerate(resolve_plan(space, x, importance)):
                a = min(level, space.attn_levels)
                m = min(level, space.mlp_levels)
                if x[layer] == a:
                    kept = importance.attn[layer][list(plan.q_heads)].sum()
                    self._attn_removed[layer, a] = 1 - kept / attn_total[layer]
                if x[L + layer] == m:
                    kept = importance.mlp[layer][list(plan.mlp_channels)].sum()
                    self._mlp_removed[layer, m] = 1 - kept / mlp_total[layer]

    def _finish(self, attn_total, mlp_total) -> None:
        # A layer whose scores are not finite (e.g. overflowing weights) carries no information.
        np.nan_to_num(self._attn_removed, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.nan_to_num(self._mlp_removed, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        attn_total = np.where(np.isfinite(attn_total), attn_total, 0.0)
        mlp_total = np.where(np.isfinite(mlp_total), mlp_total, 0.0)
        self._attn_weight = attn_total / (attn_total.sum() or 1.0)
        self._mlp_weight = mlp_total / (mlp_total.sum() or 1.0)

    @property
    def n_features(self) -> int:
        return 4 * self.space.num_layers + 3

    def __call__(self, X) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=int))
        L = self.space.num_layers
        rows = np.arange(L)
        attn_removed = self._attn_removed[rows, X[:, :L]]
        mlp_removed = self._mlp_removed[rows, X[:, L:]]
        return np.column_stack(
            [
                X / self._scale,
                attn_removed,
                mlp_removed,
                attn_removed @ self._attn_weight,
                mlp_removed @ self._mlp_weight,
                self.space.params_matrix(X) / self.space.arch.dense_params(),
            ]
        )
