"""Randomised tree ensembles (extra trees or random forest) with the spread across trees."""

from __future__ import annotations

import numpy as np

from surrogates.base import Surrogate
from surrogates.registry import register_surrogate


@register_surrogate("forest")
class ForestSurrogate(Surrogate):
    """Extra trees (``kind="extra"``, default) or a random forest (``kind="random"``).

    The predictive distribution is the equally weighted mixture of the trees' leaves: its
    variance is the spread of the trees' means plus the mean variance of the training targets
    inside the leaves reached. The within-leaf term matters: fully grown trees agree on every
    training point, and the spread across trees alone would claim certainty there.
    ``min_samples_leaf`` defaults to 2 so that a leaf has a variance to report.
    """

    def __init__(
        self,
        kind: str = "extra",
        n_estimators: int = 300,
        min_samples_leaf: int = 2,
        max_features: float | str | None = 1.0,
        random_state: int | None = 0,
    ):
        self.kind = kind
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        kinds = {"extra": ExtraTreesRegressor, "random": RandomForestRegressor}
        if self.kind not in kinds:
            raise ValueError(f"forest kind {self.kind!r} is unknown: use 'extra' or 'random'")
        self.model_ = kinds[self.kind](
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(X, y)
        self.y_floor_ = 1e-6 * max(1.0, float(np.abs(y).mean()))

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X32 = X.astype(np.float32)
        means = np.empty((len(self.model_.estimators_), X.shape[0]))
        leaf_var = np.empty_like(means)
        for i, tree in enumerate(self.model_.estimators_):
            t = tree.tree_
            leaves = t.apply(X32)
            means[i] = t.value[leaves, 0, 0]
            # For the squared-error criterion a node's impurity is the variance of its targets.
            leaf_var[i] = t.impurity[leaves]
        mean = means.mean(axis=0)
        var = means.var(axis=0) + leaf_var.mean(axis=0)
        return mean, np.sqrt(var + self.y_floor_**2)
