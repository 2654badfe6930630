"""XGBoost with uncertainty from a bootstrap ensemble."""

from __future__ import annotations

import numpy as np

from surrogates.base import Surrogate
from surrogates.registry import register_surrogate


@register_surrogate("xgboost")
class XGBoostSurrogate(Surrogate):
    """``n_members`` XGBoost regressors, each fitted on a bootstrap resample of the pairs.

    Uncertainty comes from the bootstrap, not from quantile objectives: on the 10-100 pairs of
    a search, separately fitted quantiles cross each other and a std read off a quantile pair
    jumps from one round to the next. The predictive variance is the variance across members
    (what the data do not pin down) plus the mean squared out-of-bag residual (what the trees
    cannot fit at all); each member is scored only on the rows its resample left out.
    """

    def __init__(
        self,
        n_members: int = 16,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        min_child_weight: float = 1.0,
        reg_lambda: float = 1.0,
        random_state: int | None = 0,
    ):
        self.n_members = n_members
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from xgboost import XGBRegressor

        if self.n_members < 2:
            raise ValueError(f"n_members must be at least 2 to give a spread, got {self.n_members}")
        rng = np.random.default_rng(self.random_state)
        n = len(y)
        self.members_ = []
        oob_sq, oob_count = np.zeros(n), np.zeros(n)
        for _ in range(self.n_members):
            idx = rng.integers(0, n, size=n)
            member = XGBRegressor(
                n_estimators=self.n_estimators,
                learning_rate=self.learning_rate,
                max_depth=self.max_depth,
                min_child_weight=self.min_child_weight,
                reg_lambda=self.reg_lambda,
                # One thread and the exact method: bit-for-bit repeatable under a seed.
                n_jobs=1,
                tree_method="exact",
                random_state=int(rng.integers(2**31 - 1)),
                # Start from the resample's mean so a constant target is predicted exactly.
                base_score=float(np.mean(y[idx])),
            ).fit(X[idx], y[idx])
            self.members_.append(member)
            out = np.setdiff1d(np.arange(n), idx)
            if out.size:
                oob_sq[out] += (y[out] - member.predict(X[out])) ** 2
                oob_count[out] += 1
        seen = oob_count > 0
        noise = float(np.mean(oob_sq[seen] / oob_count[seen])) if seen.any() else float(np.var(y))
        self.noise_std_ = max(np.sqrt(noise), 1e-6 * max(1.0, float(np.abs(y).mean())))

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        preds = np.stack([m.predict(X) for m in self.members_]).astype(float)
        return preds.mean(axis=0), np.sqrt(preds.var(axis=0) + self.noise_std_**2)
