"""The initial design: the configurations evaluated before any surrogate exists.

Purely random levels prune about half of every layer and waste evaluations on collapsed
models, so the design is the dense model, a few uniform configurations, and a Latin hypercube
whose rows are scaled to a spread of overall pruning intensities.
"""

from __future__ import annotations

import numpy as np
from pymoo.operators.sampling.lhs import sampling_lhs

from evoprune.space import SearchSpace


def uniform_configs(space: SearchSpace, count: int) -> list[np.ndarray]:
    """The same MLP level in every layer (levels 1, 2, ...) with a matching attention level."""
    L, out = space.num_layers, []
    for k in range(1, count + 1):
        mlp = min(k, space.mlp_levels - 1)
        attn = min(int(round(k * space.attn_levels / space.mlp_levels)), max(space.attn_levels - 1, 0))
        x = np.minimum(np.concatenate([np.full(L, attn), np.full(L, mlp)]), space.upper)
        out.append(x)
    return out


def intensity_sample(space: SearchSpace, n: int, seed: int, low: float = 0.03, high: float = 0.3) -> np.ndarray:
    """``n`` configurations from a Latin hypercube, each row scaled to its own pruning intensity."""
    if n <= 0:
        return np.zeros((0, space.n_var), dtype=int)
    rng = np.random.default_rng(seed)
    u = sampling_lhs(n, space.n_var, random_state=rng) if n > 1 else rng.random((1, space.n_var))
    intensity = rng.permutation(np.linspace(low, high, n))
    upper = space.upper
    levels = np.floor(u * 2 * intensity[:, None] * (upper + 1))
    return np.minimum(levels, upper).astype(int)


def initial_design(space: SearchSpace, n: int, seed: int) -> list[np.ndarray]:
    """Dense first, then uniform configurations, then the intensity-scaled hypercube; no repeats."""
    n_uniform = min(3, max(0, (n - 1) // 4))
    candidates = [space.lower.copy(), *uniform_configs(space, n_uniform)]
    candidates += list(intensity_sample(space, 2 * n, seed))
    seen, design = set(), []
    for x in candidates:
        key = space.key(x)
        if key not in seen:
            seen.add(key)
            design.append(x)
        if len(design) == n:
            break
    return design
