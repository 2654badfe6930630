"""Cheap integer multi-objective problems with a known Pareto front, shaped like layer pruning.

``SyntheticPruning`` has one integer level per variable. Variable ``i`` at level ``l`` removes
``removed[i][l]`` of the total size (monotone in ``l``) and adds ``sensitivity[i] * share **
curvature[i]`` to the loss, where ``share`` is the removed share of that variable's own size:
removing a little is nearly free, removing much hurts more than linearly, and a few variables
matter much more than the rest, as layers do in LLMs. The objectives are (loss, kept size).

Because the loss is a sum of per-variable terms, the exact front is computable by dynamic
programming over the variables (``true_front``), so searches can be scored against it.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.problem import Problem


class SyntheticPruning(Problem):
    def __init__(
        self,
        removed: np.ndarray | None = None,
        n_var: int = 16,
        levels: int = 4,
        seed: int = 0,
    ):
        rng = np.random.default_rng(seed)
        if removed is None:
            size = rng.uniform(0.5, 1.5, n_var)
            size /= size.sum()
            removed = size[:, None] * np.linspace(0, 1, levels + 1)[None, :]
        self.removed = np.asarray(removed, dtype=float)  # (n_var, levels + 1), removed[:, 0] == 0
        n_var, n_levels = self.removed.shape
        self.size = self.removed[:, -1]
        # Sensitivity per unit of size: a few variables matter a lot, most little.
        self.sensitivity = rng.lognormal(0.0, 1.0, n_var) * self.size
        self.curvature = rng.uniform(1.5, 3.0, n_var)
        super().__init__(n_var=n_var, n_obj=2, xl=np.zeros(n_var), xu=np.full(n_var, n_levels - 1), vtype=int)

    def terms(self, i: int, level: int) -> tuple[float, float]:
        """(removed size, loss term) of variable ``i`` at ``level``."""
        share = self.removed[i, level] / self.size[i] if self.size[i] > 0 else 0.0
        return self.removed[i, level], self.sensitivity[i] * share ** self.curvature[i]

    def evaluate_exact(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.round(X).astype(int))
        rows = np.arange(self.n_var)
        removed = self.removed[rows, X].sum(axis=1)
        share = self.removed[rows, X] / np.where(self.size > 0, self.size, 1)
        loss = (self.sensitivity * share**self.curvature).sum(axis=1)
        return np.column_stack([np.log1p(10 * loss), 1 - removed])

    def _evaluate(self, X, out, *args, **kwargs):
        out["F"] = self.evaluate_exact(X)

    def true_front(self, resolution: int = 2000) -> np.ndarray:
        """The front by dynamic programming over (removed-size bucket -> least loss)."""
        best = {0: 0.0}
        for i in range(self.n_var):
            options = [self.terms(i, level) for level in range(self.removed.shape[1])]
            nxt: dict[int, float] = {}
            for bucket, loss in best.items():
                for removed, term in options:
                    b = bucket + int(round(removed * resolution))
                    if loss + term < nxt.get(b, np.inf):
                        nxt[b] = loss + term
            best = nxt
        points = np.array([[np.log1p(10 * loss), 1 - b / resolution] for b, loss in best.items()])
        front, best_loss = [], np.inf
        for p in points[np.argsort(points[:, 1], kind="stable")]:  # most removed first
            if p[0] < best_loss:
                front.append(p)
                best_loss = p[0]
        return np.array(front)
