"""Cheap integer multi-objective problems with a known Pareto front, shaped like pruning.

``SyntheticPruning`` has ``2 * layers`` integer levels. Cost is the kept share of a weighted
"size"; loss grows with the removed share of a per-variable sensitivity, convexly (removing a
little is nearly free, removing much hurts more than linearly). Because the loss is a
monotone function of a sum of per-variable terms, the exact front is computable by dynamic
programming over the variables (``true_front``). These problems let the search loop be benchmarked against NSGA-II on real evaluations in
seconds.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.problem import Problem


class SyntheticPruning(Problem):
    """Minimise (loss, kept size) over integer levels 0..levels for ``n_var`` variables."""

    def __init__(self, n_var: int = 16, levels: int = 4, seed: int = 0, noise: float = 0.0):
        rng = np.random.default_rng(seed)
        self.levels = levels
        self.size = rng.uniform(0.5, 1.5, n_var)
        self.size /= self.size.sum()
        # Sensitivity per unit of size: a few variables matter a lot, most little (as in LLMs).
        self.sensitivity = rng.lognormal(0.0, 1.0, n_var)
        self.curvature = rng.uniform(1.5, 3.0, n_var)
        self.noise = noise
        self._rng = np.random.default_rng(seed + 1)
        super().__init__(n_var=n_var, n_obj=2, xl=np.zeros(n_var), xu=np.full(n_var, levels), vtype=int)

    def loss_terms(self, X: np.ndarray) -> np.ndarray:
        share = np.asarray(X, dtype=float) / self.levels
        return self.size * self.sensitivity * share**self.curvature

    def evaluate_exact(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.round(X).astype(int))
        loss = np.log1p(10 * self.loss_terms(X).sum(axis=1))
        kept = 1 - (self.size * X / self.levels).sum(axis=1)
        return np.column_stack([loss, kept])

    def _evaluate(self, X, out, *args, **kwargs):
        F = self.evaluate_exact(X)
        if self.noise:
            F[:, 0] += self._rng.normal(0, self.noise, len(F))
        out["F"] = F

    def true_front(self, resolution: int = 400) -> np.ndarray:
        """The exact front by dynamic programming over (kept size bucket -> least loss)."""
        buckets = resolution
        best = {0: 0.0}
        for i in range(self.n_var):
            nxt: dict[int, float] = {}
            for removed_bucket, loss in best.items():
                for level in range(self.levels + 1):
                    b = removed_bucket + int(round(self.size[i] * level / self.levels * buckets))
                    term = self.size[i] * self.sensitivity[i] * (level / self.levels) ** self.curvature[i]
                    if loss + term < nxt.get(b, np.inf):
                        nxt[b] = loss + term
            best = nxt
        points = np.array([[np.log1p(10 * loss), 1 - b / buckets] for b, loss in best.items()])
        order = np.argsort(points[:, 1], kind="stable")
        front, best_loss = [], np.inf
        for p in points[order]:  # from the smallest kept size up: keep what lowers the loss
            if p[0] < best_loss:
                front.append(p)
                best_loss = p[0]
        return np.array(front)
