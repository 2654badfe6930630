"""``owl``: a layer-importance heuristic in the manner of OWL.

Layers with a larger share of outlier units (importance above ``M`` times the layer mean) are
pruned less, around a mean ratio set to meet the budget; one configuration per strength
``lambda``.
"""

from __future__ import annotations

import numpy as np

from evoprune.engine.context import SearchContext
from evoprune.engine.registry import Strategy, register_strategy


@register_strategy
class OWLBaseline(Strategy):
    name = "owl"
    lambdas = (0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3)
    outlier_factor = 3.0

    def layer_outlier_share(self, ctx: SearchContext) -> np.ndarray:
        imp = ctx.backend.score()
        shares = []
        for attn, mlp in zip(imp.attn, imp.mlp, strict=True):
            units = np.concatenate([attn / attn.mean(), mlp / mlp.mean()])
            shares.append(float(np.mean(units > self.outlier_factor)))
        return np.array(shares)

    def config(self, ctx: SearchContext, mean_ratio: float, lam: float, share: np.ndarray) -> np.ndarray:
        span = share.max() - share.min()
        centred = (share - share.mean()) / span if span > 0 else np.zeros_like(share)
        ratio = np.clip(mean_ratio - lam * centred * 2, 0, 1)  # more outliers -> less pruning
        attn = np.round(ratio * ctx.space.attn_levels)
        mlp = np.round(ratio * ctx.space.mlp_levels)
        return np.minimum(np.concatenate([attn, mlp]), ctx.space.upper).astype(int)

    def run(self, ctx: SearchContext) -> None:
        share = self.layer_outlier_share(ctx)
        proposals = []
        for lam in self.lambdas:
            # The smallest mean ratio whose configuration meets the budget (and min-params).
            for mean_ratio in np.linspace(0.02, 0.9, 89):
                x = self.config(ctx, mean_ratio, lam, share)
                if any(x) and ctx.feasible(x[None])[0]:
                    if ctx.constraint_names:
                        proposals.append(x)
                        break
                    proposals.append(x)  # without a budget: a spread of ratios
                    if len(proposals) % 3 == 0:
                        break
        ctx.evaluate_now(np.array(proposals).reshape(-1, ctx.space.n_var), "baseline", 0)
