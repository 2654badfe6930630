"""The initial design: the configurations evaluated before any surrogate exists.

Purely random levels prune about half of every layer and waste evaluations on collapsed models
(on SmolLM2-135M, random configurations at 70-75% of the parameters measured perplexity 100 to
2,400). The design therefore mixes structured configurations, each family taken at the
intensity that meets the budget (or at a few intensities without one):

- the dense model, when the budget allows it;
- uniform: the same attention and MLP level in every layer (LLM-Pruner's allocation);
- a smooth depth profile that spares the first and last layers;
- MLP-only and attention-only uniform pruning;

and fills the rest with a Latin hypercube whose rows are scaled to a spread of pruning
intensities, keeping the feasible rows closest to the budget and far from each other. A
warm-started search that begins with at least as many pairs of earlier runs as the design's
size (``plan --spend`` on a new budget, a second search of the same problem) skips the
hypercube and spends the rest of its budget on acquisition.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pymoo.operators.sampling.lhs import sampling_lhs

from evoprune.space import SearchSpace

FeasibleFn = Callable[[np.ndarray], np.ndarray]


def intensity_sample(
    space: SearchSpace, n: int, seed: int, low: float = 0.03, high: float = 0.3, maximin: bool = True
) -> np.ndarray:
    """``n`` configurations from a Latin hypercube, each row scaled to its own pruning intensity.

    ``maximin`` keeps the most spread of pymoo's 50 hypercubes; it compares all pairs of rows, so a
    pool of tens of thousands of candidates (``predictor-rank``'s) takes one plain hypercube instead.
    """
    if n <= 0:
        return np.zeros((0, space.n_var), dtype=int)
    rng = np.random.default_rng(seed)
    if n == 1:
        u = rng.random((1, space.n_var))
    else:
        u = sampling_lhs(n, space.n_var, random_state=rng, **({} if maximin else {"criterion": None}))
    intensity = rng.permutation(np.linspace(low, high, n))
    upper = space.upper
    levels = np.floor(u * 2 * intensity[:, None] * (upper + 1))
    return np.minimum(levels, upper).astype(int)


def _profile(space: SearchSpace, weights_attn: np.ndarray, weights_mlp: np.ndarray, t: float) -> np.ndarray:
    attn = np.round(t * weights_attn * space.attn_levels)
    mlp = np.round(t * weights_mlp * space.mlp_levels)
    return np.minimum(np.concatenate([attn, mlp]), space.upper).astype(int)


def structured_families(space: SearchSpace) -> dict[str, list[np.ndarray]]:
    """Each family as a list of configurations of increasing pruning intensity."""
    L = space.num_layers
    flat = np.ones(L)
    # A bump that is 0 at both ends and 1 in the middle: first and last layers are spared.
    depth = np.sin(np.pi * (np.arange(L) + 0.5) / L) ** 0.5
    depth = np.where((np.arange(L) == 0) | (np.arange(L) == L - 1), 0.0, depth)
    steps = np.linspace(0.0, 1.0, 4 * max(space.mlp_levels, space.attn_levels) + 1)[1:]
    families = {
        "uniform": [_profile(space, flat, flat, t) for t in steps],
        "smooth": [_profile(space, 0.5 * depth, depth, t) for t in steps],
        "mlp-only": [_profile(space, 0 * flat, flat, t) for t in steps],
        "attention-only": [_profile(space, flat, 0 * flat, t) for t in steps],
    }
    out = {}
    for name, configs in families.items():
        seen, unique = set(), []
        for x in configs:
            key = space.key(x)
            if any(x) and key not in seen:
                seen.add(key)
                unique.append(x)
        out[name] = unique
    return out


def top_up(space: SearchSpace, x: np.ndarray, lighter: np.ndarray, feasible: FeasibleFn) -> np.ndarray:
    """``x`` with as many layers as stay feasible set to their level in ``lighter`` (less pruning),
    the first and last layers first (they are the most sensitive), then inwards."""
    x = x.copy()
    L = space.num_layers
    order = sorted(range(L), key=lambda i: (-abs(i - (L - 1) / 2), i))
    for i in order:
        for j in (i, L + i):
            if lighter[j] < x[j]:
                trial = x.copy()
                trial[j] = lighter[j]
                if feasible(trial[None])[0]:
                    x = trial
    return x


def _maximin(candidates: np.ndarray, chosen: list[np.ndarray], n: int) -> list[np.ndarray]:
    picked: list[np.ndarray] = []
    for _ in range(n):
        if not len(candidates):
            break
        ref = np.array(chosen + picked) if chosen or picked else None
        if ref is None:
            i = 0
        else:
            dist = np.abs(candidates[:, None, :] - ref[None]).sum(-1).min(axis=1)
            i = int(np.argmax(dist))
        picked.append(candidates[i])
        candidates = np.delete(candidates, i, axis=0)
    return picked


def feasible_design(
    space: SearchSpace, n: int, seed: int, feasible: FeasibleFn, costs=None, budget=None, space_filling: bool = True
) -> list:
    """At most ``n`` feasible configurations: dense, structured families at the budget, then (with
    ``space_filling``) a hypercube. A search that starts from enough pairs of earlier runs leaves
    the hypercube out: those pairs already cover the space, and the families at its own budget
    are what they cannot know."""
    has_budget = budget is not None and any(
        v is not None for v in (budget.max_params, budget.max_memory, budget.max_latency_ms)
    )
    design: list[np.ndarray] = []
    seen: set[str] = set()

    def add(x) -> None:
        key = space.key(x)
        if len(design) < n and key not in seen and feasible(x[None])[0]:
            seen.add(key)
            design.append(x)

    add(space.lower.copy())
    families = structured_families(space)
    # Without a budget, take each family at a gentle and a stronger intensity.
    picks_per_family = 1 if has_budget else 2
    for pick in range(picks_per_family):
        for configs in families.values():
            usable = [x for x in configs if feasible(x[None])[0]]
            if not usable:
                continue
            if has_budget:
                # The least pruning that meets the budget, topped up layer by layer towards the
                # family's next lighter member, so that it spends (nearly) all of the budget.
                first = next(i for i, x in enumerate(configs) if x is usable[0])
                add(top_up(space, usable[0], configs[first - 1], feasible) if first > 0 else usable[0])
            else:
                add(usable[min(len(usable) - 1, (pick + 1) * len(usable) // 4)])
    remaining = n - len(design) if space_filling else 0
    if remaining > 0:
        pool = intensity_sample(space, 40 * n, seed, low=0.02, high=0.6)
        pool = pool[feasible(pool)]
        if len(pool):
            params = space.params_matrix(pool)
            # Closest to the budget boundary first: the best configurations spend all of it.
            pool = pool[np.argsort(-params, kind="stable")[: max(4 * remaining, remaining)]] if has_budget else pool
            for x in _maximin(pool, list(design), remaining):
                add(x)
    return design


def initial_design(space: SearchSpace, n: int, seed: int) -> list[np.ndarray]:
    """The design without a budget beyond keeping at least half of the parameters."""
    dense = space.arch.dense_params()
    return feasible_design(space, n, seed, lambda X: space.params_matrix(X) / dense >= 0.5)
