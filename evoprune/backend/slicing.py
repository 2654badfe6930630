"""Physical structured pruning: copy the kept heads and channels into resized projections."""

from __future__ import annotations

import torch
from torch import nn

from evoprune.backend.adapters import Adapter, LayerParts
from evoprune.backend.compensation import LayerCompensation
from evoprune.backend.plan import LayerPlan
from evoprune.backend.pruned_modeling import empty_attention, empty_mlp


def _copy_into(new: nn.Linear, old: nn.Linear, rows=None, cols=None, bias=None, weight=None) -> nn.Linear:
    w = old.weight.data
    rows = rows.to(w.device) if rows is not None else None
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols.to(w.device)]
    if weight is not None:  # re-fit compensation: the tensor masked evaluation uses
        w = weight
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:  # bias compensation: the tensor masked evaluation uses
            new.bias.copy_(bias)
        elif new.bias is not None:
            new.bias.copy_(old.bias.data[rows] if rows is not None else old.bias.data)
    return new


def _feature_index(units, unit_size: int) -> torch.Tensor:
    return torch.tensor([u * unit_size + j for u in units for j in range(unit_size)], dtype=torch.long)


def slice_layer(
    adapter: Adapter, parts: LayerParts, plan: LayerPlan, head_dim: int, comp: LayerCompensation | None = None
) -> None:
    """Prune one decoder layer in place according to ``plan`` (and its ``comp``ensation)."""
    family = adapter.family
    comp = comp or LayerCompensation()
    if plan.attn_removed:
        family.remove_attention(parts.layer, parts.index, comp.o)
    else:
        old = {"q": parts.q, "k": parts.k, "v": parts.v, "o": parts.o}
        new = empty_attention(old, head_dim, len(plan.q_heads), len(plan.kv_heads), o_bias=comp.o is not None)
        q_idx, kv_idx = _feature_index(plan.q_heads, head_dim), _feature_index(plan.kv_heads, head_dim)
        _copy_into(new["q"], parts.q, rows=q_idx)
        _copy_into(new["k"], parts.k, rows=kv_idx)
        _copy_into(new["v"], parts.v, rows=kv_idx)
        _copy_into(new["o"], parts.o, cols=q_idx, bias=comp.o, weight=comp.o_weight)
        family.set_attention(parts.layer, new, len(plan.q_heads), len(plan.kv_heads))
    if plan.mlp_removed:
        family.remove_mlp(parts.layer, comp.down)
    else:
        old = {"gate": parts.gate, "up": parts.up, "down": parts.down}
        new = empty_mlp(old, len(plan.mlp_channels), down_bias=comp.down is not None)
        ch = torch.tensor(plan.mlp_channels, dtype=torch.long)
        if parts.gate is not None:
            _copy_into(new["gate"], parts.gate, rows=ch)
        _copy_into(new["up"], parts.up, rows=ch)
        _copy_into(new["down"], parts.down, cols=ch, bias=comp.down, weight=comp.down_weight)
        family.set_mlp(parts.layer, new, len(plan.mlp_channels))


def slice_model(
    model, adapter: Adapter, plans: list[LayerPlan], head_dim: int, compensation: list[LayerCompensation] | None = None
):
    """Prune ``model`` in place (make a copy first to keep the dense one) and return it."""
    for i, (parts, plan) in enumerate(zip(adapter.layers(model), plans, strict=True)):
        slice_layer(adapter, parts, plan, head_dim, compensation[i] if compensation is not None else None)
    return model


def layer_sizes(plans: list[LayerPlan], biases: list[LayerCompensation] | None = None) -> list[dict]:
    """The per-layer widths an exported config carries, and where compensation added a bias."""
    sizes = [{"q_heads": len(p.q_heads), "kv_heads": len(p.kv_heads), "mlp": len(p.mlp_channels)} for p in plans]
    for spec, bias in zip(sizes, biases or [], strict=False):
        spec["o_bias"], spec["down_bias"] = bias.o is not None, bias.down is not None
    return sizes
