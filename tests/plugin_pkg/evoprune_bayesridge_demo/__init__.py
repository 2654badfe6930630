"""A third-party surrogate plugin, as an outside package would ship one.

It is found only through the ``evoprune.surrogates`` entry point declared in the
``evoprune_bayesridge_demo-0.1.0.dist-info`` next to it (what ``pip install`` would write), so
putting this folder on ``sys.path``/``PYTHONPATH`` is all it takes to use it as
``evoprune search --surrogate bayesridge-demo``. Nothing in evoprune names it.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import BayesianRidge

from surrogates import Surrogate


class BayesianRidgeSurrogate(Surrogate):
    """Bayesian linear regression on standardised features; its posterior gives the std."""

    def __init__(self, max_iter: int = 300, random_state: int | None = None):
        self.max_iter = max_iter
        # Unused (the fit is deterministic) but part of the contract: the engine passes it.
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.x_mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.x_scale_ = np.where(scale > 0, scale, 1.0)
        self.y_mean_ = float(y.mean())
        self.y_scale_ = float(y.std()) or 1.0
        z = (y - self.y_mean_) / self.y_scale_
        self.model_ = BayesianRidge(max_iter=self.max_iter).fit((X - self.x_mean_) / self.x_scale_, z)

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.model_.predict((X - self.x_mean_) / self.x_scale_, return_std=True)
        return mean * self.y_scale_ + self.y_mean_, std * self.y_scale_
