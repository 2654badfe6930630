"""The contract every surrogate follows."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class Surrogate(RegressorMixin, BaseEstimator):
    """A scikit-learn regressor whose ``predict`` can also return a standard deviation.

    Subclasses implement ``_fit(X, y)`` and ``_predict(X) -> (mean, std)``, and may implement
    ``_predict_mean(X)`` where the mean alone is much cheaper (the inner search asks for it
    thousands of times per round); the base class
    validates input so every plugin rejects bad data the same way. Fitted attributes end in
    ``_`` and constructor arguments are stored unchanged, so ``sklearn.base.clone`` works.
    """

    def fit(self, X, y) -> Surrogate:
        X, y = check_training_data(X, y)
        self.n_features_in_ = X.shape[1]
        self._fit(X, y)
        return self

    def predict(self, X, return_std: bool = False):
        if not hasattr(self, "n_features_in_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet: call fit(X, y) first")
        X = check_features(X, self.n_features_in_)
        if not return_std:
            return self._finite("mean", np.asarray(self._predict_mean(X), dtype=float).reshape(-1))
        mean, std = self._predict(X)
        mean = self._finite("mean", np.asarray(mean, dtype=float).reshape(-1))
        # A surrogate must never claim certainty: the acquisition step divides by it. (NaN would
        # pass np.maximum unchanged and end up stored as a prediction: refused instead.)
        std = np.maximum(self._finite("std", np.asarray(std, dtype=float).reshape(-1)), 1e-9)
        return mean, std

    def _finite(self, what: str, values: np.ndarray) -> np.ndarray:
        kinds = nonfinite_text(values)
        if kinds:
            raise ValueError(
                f"{type(self).__name__} predicted a {what} with {kinds}: "
                "a surrogate must return finite means and standard deviations"
            )
        return values

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict_mean(self, X: np.ndarray) -> np.ndarray:
        return self._predict(X)[0]


def nonfinite_text(values: np.ndarray) -> str:
    """``"NaN values (3 of 5)"`` (or infinite, or both) for an array that holds some, else ``""``."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return ""
    kinds = " and ".join(sorted({"NaN" if np.isnan(v) else "infinite" for v in values[bad]}))
    return f"{kinds} values ({int(bad.sum())} of {values.size})"


def check_features(X, n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as a finite 2-D float array, or raise ``ValueError`` saying what is wrong."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array of shape (n_samples, n_features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values: drop or impute those rows before fitting")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features but the surrogate was fitted on {n_features}")
    return X


def check_training_data(X, y) -> tuple[np.ndarray, np.ndarray]:
    """Validate a training set: finite, matching lengths, at least two rows."""
    X = check_features(X)
    y = np.asarray(y, dtype=float).reshape(-1)
    if len(y) != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {len(y)} values")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values: failed evaluations must not be training targets")
    if X.shape[0] < 2:
        raise ValueError(f"a surrogate needs at least 2 training rows, got {X.shape[0]}")
    return X, y
