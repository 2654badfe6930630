"""A synthetic pruning problem with a known front, and a stand-in backend whose "model" it is.

``SyntheticPruning``: cheap integer multi-objective problems (a pymoo ``Problem``) shaped like
layer pruning. It has one integer level per variable. Variable ``i`` at level ``l`` removes
``removed[i][l]`` of the total size (monotone in ``l``) and adds ``sensitivity[i] * share **
curvature[i]`` to the loss, where ``share`` is the removed share of that variable's own size:
removing a little is nearly free, removing much hurts more than linearly, and a few variables
matter much more than the rest, as layers do in LLMs. The objectives are (loss, kept size).
Because the loss is a sum of per-variable terms, the exact front is computable by dynamic
programming over the variables (``true_front``), so searches can be scored against it.

``SyntheticBackend`` has the backend's interface (space, importance, evaluate) over such a
problem, so the real engine, store, design, surrogate, inner search and acquisition run unchanged
on it, in milliseconds per evaluation: benchmarks use it to measure how many evaluations a search
method needs to reach a share of the true front's hypervolume. Not a model, and never used by a
real search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from pymoo.core.problem import Problem

from evoprune.backend.importance import Importance
from evoprune.backend.pruner import Measurement
from evoprune.backend.settings import BackendSettings
from evoprune.space import ArchSpec, SearchSpace


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


# Standard deviation of a screening's loss at the full token count (it grows as 1/sqrt(tokens)).
SCREEN_NOISE = 0.02

# A small Llama-like shape: 8 layers, GQA 8/2 heads, gated MLP.
DEFAULT_ARCH = ArchSpec(
    model_type="llama", num_layers=8, hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=32,
    intermediate_size=768, vocab_size=1000, tie_word_embeddings=True, norm_params=256,
)  # fmt: skip


@dataclass
class SyntheticBackend:
    space: SearchSpace
    problem: SyntheticPruning
    seed: int
    settings: BackendSettings

    @classmethod
    def create(cls, seed: int = 0, arch: ArchSpec = DEFAULT_ARCH, mlp_levels: int = 4) -> SyntheticBackend:
        space = SearchSpace(arch, mlp_levels=mlp_levels)
        dense = arch.dense_params()
        removed = np.zeros((space.n_var, max(space.attn_levels, space.mlp_levels) + 1))
        for i in range(space.n_var):
            top = space.upper[i]
            x = space.lower.copy()
            for level in range(top + 1):
                x[i] = level
                removed[i, level] = (dense - space.params(x)) / dense
            removed[i, top + 1 :] = removed[i, top]
        problem = SyntheticPruning(removed=removed, seed=seed)
        # Exact losses: a ladder of more tokens or a validation split would measure the same thing.
        return cls(space, problem, seed, BackendSettings(ladder="none", validation_tokens=0))

    # -- what the engine reads --------------------------------------------------------------
    @property
    def loaded(self):
        config = SimpleNamespace(model_type="synthetic")
        return SimpleNamespace(fingerprint=f"synthetic-{self.seed}", source=SimpleNamespace(spec="synthetic"),
                               model=SimpleNamespace(config=config))  # fmt: skip

    @property
    def text(self):
        return SimpleNamespace(spec="synthetic")

    data_fingerprint = "synthetic"
    importance_cached = True
    extra_metrics = ()  # no task accuracies

    def score(self) -> Importance:
        """Per-unit scores proportional to each variable's sensitivity (what importance would show)."""
        a = self.space.arch
        L = a.num_layers
        sens = self.problem.sensitivity
        attn = np.repeat(sens[:L, None] / a.num_heads, a.num_heads, axis=1)
        mlp = np.repeat(sens[L:, None] / a.intermediate_size, a.intermediate_size, axis=1)
        return Importance(attn=attn, mlp=mlp)

    def with_grid(self, settings: BackendSettings) -> SyntheticBackend:
        """The same backend: the synthetic problem has one level grid (one-shot baselines keep it)."""
        return self

    def evaluate(self, x, tokens: int | None = None, split: str = "search") -> Measurement:
        loss = float(self.problem.evaluate_exact(np.asarray(x)[None])[0, 0])
        if tokens is not None:
            # A screening: fewer tokens, a noisier loss; the noise is a function of the configuration.
            rng = np.random.default_rng(int(self.space.key(np.asarray(x)), 16))
            loss += float(rng.normal(0.0, SCREEN_NOISE * math.sqrt(self.settings.eval_tokens / tokens)))
        # "perplexity" e^(loss) * 10: the search minimises its log, i.e. the loss itself plus a constant.
        return Measurement(metrics={"ppl": 10 * math.exp(loss)}, ok=True, error=None, duration_s=0.0)
