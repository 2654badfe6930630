"""A stand-in backend whose "model" is a synthetic problem with a known front.

It has the backend's interface (space, importance, evaluate), so the real engine, store,
design, surrogate, inner search and acquisition run unchanged on it, in milliseconds per
evaluation: benchmarks use it to measure how many evaluations a search method needs to reach
a share of the true front's hypervolume. Not a model, and never used by a real search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from evoprune.backend.importance import Importance
from evoprune.backend.pruner import BackendSettings, Measurement
from evoprune.space import ArchSpec, SearchSpace
from problems.synthetic import SyntheticPruning

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
