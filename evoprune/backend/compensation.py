"""Compensation of what pruned heads and channels contributed, folded into a bias.

``bias`` is FLAP's bias compensation (An et al. 2024, "Fluctuation-based Adaptive Structured
Pruning for Large Language Models", github.com/CASIA-IVA-Lab/FLAP ``lib/prune.py:compress``): the
removed input features ``R`` of a ``down`` (or ``o``) projection contributed
``W[:, R] @ x[R]`` to its output; replacing ``x[R]`` by its mean over the calibration tokens turns
that into a constant, added to the projection's bias (one is created where the model has none).

A wholly removed sub-layer gets the same rule with every feature removed: its output becomes the
constant ``W @ mean(x) + b``, carried by the stand-in module. It is the constant closest (in mean
squared error over the calibration tokens) to what the sub-layer produced, and the same rule
applied to 100% of the units, so removing the last unit is not a cliff in the search space; it
costs ``hidden_size`` parameters per sub-layer, as a bias does.

The biases are computed here once per plan and handed, as the same tensors, to masked evaluation
(``masking.IndexedLinear``), slicing and export, so all three run the same ``F.linear`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evoprune.backend.adapters import LayerParts
from evoprune.backend.importance import Importance
from evoprune.backend.plan import LayerPlan
from evoprune.errors import EvopruneError

COMPENSATIONS = ("none", "bias")


@dataclass(frozen=True)
class LayerBias:
    """New biases of one layer's ``o`` and ``down`` projections, ``(hidden_size,)`` in the weight's
    dtype and device (for a removed sub-layer: its constant output); ``None`` where nothing changes."""

    o: torch.Tensor | None = None
    down: torch.Tensor | None = None


def _folded(linear, kept: torch.Tensor, mean) -> torch.Tensor | None:
    """``linear``'s bias plus ``W[:, removed] @ mean[removed]``, or None when nothing is removed."""
    removed = torch.ones(linear.in_features, dtype=torch.bool)
    removed[kept] = False
    if not bool(removed.any()):
        return None
    w = linear.weight.detach().double().cpu()[:, removed]
    contribution = w * torch.as_tensor(mean, dtype=torch.float64)[removed]
    # A removed unit whose weights or mean are not finite (a broken channel) must not break the
    # pruned model through its compensation: removing it is what heals the model.
    bias = torch.where(torch.isfinite(contribution), contribution, 0.0).sum(dim=1)
    if linear.bias is not None:
        bias = bias + linear.bias.detach().double().cpu()
    return bias.to(dtype=linear.weight.dtype, device=linear.weight.device)


def bias_compensation(
    layers: list[LayerParts], plans: list[LayerPlan], importance: Importance, head_dim: int
) -> list[LayerBias]:
    """FLAP bias compensation for every layer of a plan (see the module docstring).

    Raises EvopruneError when ``importance`` carries no calibration means (score with ``with_means``).
    """
    if importance.o_mean is None or importance.down_mean is None:
        raise EvopruneError("bias compensation needs the calibration means: score importance with with_means=True")
    out = []
    for parts, plan in zip(layers, plans, strict=True):
        q_feat = torch.tensor([h * head_dim + j for h in plan.q_heads for j in range(head_dim)], dtype=torch.long)
        channels = torch.tensor(plan.mlp_channels, dtype=torch.long)
        out.append(
            LayerBias(
                o=_folded(parts.o, q_feat, importance.o_mean[parts.index]),
                down=_folded(parts.down, channels, importance.down_mean[parts.index]),
            )
        )
    return out


def compensate(
    method: str, layers: list[LayerParts], plans: list[LayerPlan], importance: Importance, head_dim: int
) -> list[LayerBias] | None:
    """The biases ``method`` gives a plan: None for ``none``. Raises EvopruneError for an unknown method."""
    if method == "none":
        return None
    if method == "bias":
        return bias_compensation(layers, plans, importance, head_dim)
    raise EvopruneError(f"--compensation {method!r} is unknown: use one of {', '.join(COMPENSATIONS)}")
