"""Gaussian process on the feature space, with a Matérn kernel and learned noise."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from surrogates.base import Surrogate
from surrogates.registry import register_surrogate


@register_surrogate("gp")
class GaussianProcessSurrogate(Surrogate):
    def __init__(self, nu: float = 2.5, n_restarts_optimizer: int = 2, random_state: int | None = 0):
        self.nu = nu
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        # Features come in very different scales (levels vs fractions); standardise so one
        # length scale per dimension starts from a sensible value.
        self.x_mean_ = X.mean(axis=0)
        self.x_scale_ = X.std(axis=0)
        self.x_scale_[self.x_scale_ == 0] = 1.0
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
            length_scale=np.full(X.shape[1], 3.0), length_scale_bounds=(1e-2, 1e3), nu=self.nu
        ) + WhiteKernel(1e-2, (1e-6, 1.0))
        self.model_ = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=self.n_restarts_optimizer,
            random_state=self.random_state,
        )
        # Hitting a length-scale bound on tiny training sets is expected, not actionable.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit((X - self.x_mean_) / self.x_scale_, y)

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model_.predict((X - self.x_mean_) / self.x_scale_, return_std=True)
