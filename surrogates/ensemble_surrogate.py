"""A mixture of other surrogates' predictive distributions."""

from __future__ import annotations

import numpy as np

from surrogates.base import Surrogate
from surrogates.registry import make_surrogate, register_surrogate


@register_surrogate("ensemble")
class EnsembleSurrogate(Surrogate):
    """Fits every member (by registered name) and predicts their Gaussian mixture.

    With member means ``m_i``, stds ``s_i`` and weights ``w_i`` (equal unless given), the
    mixture has mean ``sum w_i m_i`` and variance ``sum w_i (s_i^2 + m_i^2) - mean^2``: where
    members disagree, the ensemble is less sure than any of them. Members get this estimator's
    ``random_state``.

    ``members`` and ``weights`` are sequences, or (as ``--surrogate`` options, where ``,``
    separates options) strings joined by ``+``: ``ensemble:members=additive+gbdt,weights=3+1``.
    """

    def __init__(
        self,
        members: tuple[str, ...] = ("additive", "forest"),
        weights: tuple[float, ...] | None = None,
        random_state: int | None = 0,
    ):
        self.members = members
        self.weights = weights
        self.random_state = random_state

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        names = self.members.split("+") if isinstance(self.members, str) else list(self.members)
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise ValueError("an ensemble needs at least one member surrogate")
        if "ensemble" in names:
            raise ValueError("an ensemble cannot contain itself: list other surrogates as members")
        w = np.ones(len(names)) if self.weights is None else _numbers(self.weights)
        if w.shape != (len(names),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"weights must be {len(names)} non-negative numbers with a positive sum, got {self.weights}"
            )
        self.weights_ = w / w.sum()
        self.members_ = [make_surrogate(name, random_state=self.random_state).fit(X, y) for name in names]

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = [m.predict(X, return_std=True) for m in self.members_]
        means = np.stack([m for m, _ in out])
        stds = np.stack([s for _, s in out])
        w = self.weights_[:, None]
        mean = (w * means).sum(axis=0)
        var = (w * (stds**2 + means**2)).sum(axis=0) - mean**2
        return mean, np.sqrt(np.maximum(var, 0.0))


def _numbers(weights) -> np.ndarray:
    """Weights as given in Python (a sequence) or as a spec option (``3+1``, or one number)."""
    if isinstance(weights, str):
        try:
            return np.array([float(v) for v in weights.split("+")])
        except ValueError:
            return np.array([np.nan])  # refused below with the weights as given
    return np.atleast_1d(np.asarray(weights, dtype=float))
