"""Gaussian process on the feature space, with a kernel suited to integer levels."""

from __future__ import annotations

import warnings

import numpy as np

from surrogates.base import Surrogate
from surrogates.registry import register_surrogate


def _min_gaps(X: np.ndarray) -> np.ndarray:
    """Smallest distance between two distinct values of each column (1 for constant columns)."""
    gaps = np.ones(X.shape[1])
    for j in range(X.shape[1]):
        d = np.diff(np.unique(X[:, j]))
        if d.size:
            gaps[j] = d.min()
    return gaps


@register_surrogate("gp")
class GaussianProcessSurrogate(Surrogate):
    """scikit-learn GP: Matérn plus a linear term plus learned noise, on normalised targets.

    - Inputs are scaled to [0, 1] per column. Levels are integers, so nothing is ever observed
      between two adjacent levels: a length scale shorter than that gap cannot be identified
      from data and only lets the GP overfit. Length scales are therefore bounded below by
      ``min_gap_ratio`` times the smallest gap between distinct values of a column.
    - One length scale for all columns by default. A search has fewer pairs than features
      (SmolLM2: 123 features, a few dozen pairs), so per-column (``ard=True``) length scales
      are not identified, and optimising them took minutes per fit on 2 CPU cores.
    - The linear (dot-product) term carries the roughly additive damage of pruning more
      layers; the Matérn term the interactions and curvature on top of it.
    - Targets are standardised (``normalize_y``) so the kernel amplitudes start at scale 1
      whatever the unit of the target.
    """

    def __init__(
        self,
        nu: float = 2.5,
        linear: bool = True,
        ard: bool = False,
        min_gap_ratio: float = 0.5,
        n_restarts_optimizer: int = 2,
        random_state: int | None = 0,
    ):
        self.nu = nu
        self.linear = linear
        self.ard = ard
        self.min_gap_ratio = min_gap_ratio
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct, Matern, WhiteKernel

        self.x_min_ = X.min(axis=0)
        span = X.max(axis=0) - self.x_min_
        self.x_span_ = np.where(span > 0, span, 1.0)
        Z = (X - self.x_min_) / self.x_span_
        low = np.clip(self.min_gap_ratio * _min_gaps(Z), 1e-3, 1.0)
        if self.ard:
            scale, bounds = np.maximum(np.full(X.shape[1], 2.0), low), np.column_stack([low, np.full(len(low), 1e3)])
        else:
            scale, bounds = 2.0, (float(low.min()), 1e3)
        kernel = ConstantKernel(1.0, (1e-3, 1e2)) * Matern(length_scale=scale, length_scale_bounds=bounds, nu=self.nu)
        if self.linear:
            kernel = kernel + ConstantKernel(0.1, (1e-4, 1e2)) * DotProduct(sigma_0=1.0, sigma_0_bounds="fixed")
        kernel = kernel + WhiteKernel(1e-2, (1e-6, 1.0))
        self.model_ = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=self.n_restarts_optimizer,
            random_state=self.random_state,
        )
        # Hitting a length-scale bound on tiny training sets is expected, not actionable.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(Z, y)

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model_.predict((X - self.x_min_) / self.x_span_, return_std=True)
