"""Gradient-boosted trees as a point predictor: the paper's choice, kept as the baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone

from surrogates.base import Surrogate
from surrogates.registry import register_surrogate

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingRegressor


@register_surrogate("gbdt")
class GBDTSurrogate(Surrogate):
    """scikit-learn ``GradientBoostingRegressor``, as in Ji et al. (2023), with a constant std.

    GBDT has no predictive uncertainty. So that the engine can still use it, ``predict``
    returns the same standard deviation for every row: the root mean squared error of
    ``cv``-fold out-of-fold predictions on the training set (training residuals would be near
    zero for boosted trees and claim a certainty the model does not have). With fewer rows than
    folds it falls back to the spread of the targets. Acquisition by uncertainty therefore
    degenerates to picking spread-out candidates of the predicted front.
    """

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        subsample: float = 1.0,
        cv: int = 5,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.cv = cv
        self.random_state = random_state

    def _model(self) -> GradientBoostingRegressor:
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            subsample=self.subsample,
            random_state=self.random_state,
        )

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.model_selection import KFold

        self.model_ = self._model().fit(X, y)
        spread = float(np.std(y))
        if len(y) >= max(self.cv, 2) * 2:
            residuals = np.empty_like(y)
            folds = KFold(self.cv, shuffle=True, random_state=self.random_state)
            for train, test in folds.split(X):
                residuals[test] = y[test] - clone(self.model_).fit(X[train], y[train]).predict(X[test])
            spread = float(np.sqrt(np.mean(residuals**2)))
        # Constant targets give a zero spread; keep a small, scale-aware floor instead.
        self.std_ = max(spread, 1e-6 * max(1.0, float(np.abs(y).mean())))

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model_.predict(X), np.full(X.shape[0], self.std_)
