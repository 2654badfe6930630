"""The features a surrogate sees for a configuration: one home for every feature map.

- ``FeatureMap`` (what the search uses): raw levels alone rank configurations of equal size
  poorly, so next to the normalised levels it gives the share of importance each configuration
  removes from every sub-layer (from the scores the backend already computed), the share removed
  from the whole model, and the kept fraction of parameters. All of it comes from lookup tables,
  so featurising a population is cheap.
- ``LevelsAndFraction``: levels and the kept fraction, from a stored run alone (the surrogate
  report's fallback when the importance scores are not in the cache).
- ``LevelFeatures``: a scikit-learn transformer on plain level matrices (group-wise summaries of
  how hard and where a model is pruned), for any caller that has only the levels. It fits in a
  ``Pipeline`` in front of any surrogate::

      from sklearn.pipeline import make_pipeline
      model = make_pipeline(LevelFeatures(n_groups=2), make_surrogate("gp")).fit(levels, log_ppl)
      mean, std = model.predict(new_levels, return_std=True)
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from evoprune.backend.importance import Importance
from evoprune.backend.plan import resolve_plan
from evoprune.space import SearchSpace
from surrogates.base import check_features


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


class LevelsAndFraction:
    """Features from the stored run alone: levels scaled by their top level, and the exact kept
    parameter fraction. Cheaper but weaker than the engine's ``FeatureMap``, which also knows
    how much importance each level removes."""

    label = "levels + kept parameter fraction"

    def __init__(self, space: SearchSpace):
        self.space = space
        upper = space.upper
        self._scale = np.where(upper > 0, upper, 1).astype(float)

    def __call__(self, X) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=int))
        return np.column_stack([X / self._scale, self.space.params_matrix(X) / self.space.arch.dense_params()])


class LevelFeatures(TransformerMixin, BaseEstimator):
    """Normalised levels plus group-wise summaries of how hard and where a model is pruned.

    The first ``n_levels`` columns of ``X`` are levels laid out group after group (the engine's
    ``[attn_0..attn_{L-1}, mlp_0..mlp_{L-1}]`` is ``n_groups=2``); any further columns (say a
    kept-parameter fraction) pass through unchanged. ``upper`` is the top level of each level
    column (a scalar or one value per column, the level that removes the sub-layer); ``None``
    takes the largest level seen in ``fit``, which is only right if the training set reaches it.

    Per group it adds: the mean normalised level; the mean squared normalised level (damage
    grows faster than linearly with the share removed, and this lets a linear model see it);
    the share of sub-layers removed entirely (a removed sub-layer is qualitatively different
    from a thinned one); and the mean normalised level in each of ``depth_bins`` depth bands
    (early and late layers are more sensitive than middle ones in most LLMs).
    """

    def __init__(
        self,
        n_groups: int = 2,
        n_levels: int | None = None,
        upper=None,
        depth_bins: int = 3,
        include_levels: bool = True,
    ):
        self.n_groups = n_groups
        self.n_levels = n_levels
        self.upper = upper
        self.depth_bins = depth_bins
        self.include_levels = include_levels

    def fit(self, X, y=None) -> LevelFeatures:
        X = check_features(X)
        n_levels = X.shape[1] if self.n_levels is None else self.n_levels
        if self.n_groups < 1 or n_levels % self.n_groups or not 0 < n_levels <= X.shape[1]:
            raise ValueError(
                f"{n_levels} level columns do not split into {self.n_groups} equal groups: "
                f"pass n_levels (the number of level columns) and n_groups that divide it"
            )
        if self.depth_bins < 1:
            raise ValueError(f"depth_bins must be at least 1, got {self.depth_bins}")
        levels = X[:, :n_levels]
        if np.any(levels < 0):
            raise ValueError("levels must be non-negative: 0 means untouched")
        upper = levels.max(axis=0) if self.upper is None else np.broadcast_to(np.asarray(self.upper, float), n_levels)
        # A column that never moves (a frozen layer) would otherwise divide by zero.
        self.scale_ = np.where(upper > 0, upper, 1.0).astype(float)
        self.n_levels_ = n_levels
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        if not hasattr(self, "scale_"):
            raise ValueError("LevelFeatures is not fitted yet: call fit(X) first")
        X = check_features(X, self.n_features_in_)
        z = X[:, : self.n_levels_] / self.scale_
        groups = np.split(z, self.n_groups, axis=1)
        removed = np.split(X[:, : self.n_levels_] >= self.scale_, self.n_groups, axis=1)
        parts = [z] if self.include_levels else []
        for g, r in zip(groups, removed, strict=True):
            parts += [g.mean(axis=1, keepdims=True), (g**2).mean(axis=1, keepdims=True), r.mean(axis=1, keepdims=True)]
            parts += [band.mean(axis=1, keepdims=True) for band in np.array_split(g, self.depth_bins, axis=1)]
        parts.append(X[:, self.n_levels_ :])
        return np.hstack(parts)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        per_group = self.n_levels_ // self.n_groups
        names = [f"g{g}_l{i}" for g in range(self.n_groups) for i in range(per_group)] if self.include_levels else []
        for g in range(self.n_groups):
            names += [f"g{g}_mean", f"g{g}_mean_sq", f"g{g}_removed"]
            names += [f"g{g}_depth{b}" for b in range(self.depth_bins)]
        names += [f"x{i}" for i in range(self.n_levels_, self.n_features_in_)]
        return np.asarray(names, dtype=object)
