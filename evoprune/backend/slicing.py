"""Physical structured pruning: slice the kept heads and channels out of the weights."""

from __future__ import annotations

import torch
from torch import nn

from evoprune.backend.adapters import LayerParts
from evoprune.backend.plan import LayerPlan


class RemovedAttention(nn.Module):
    """Stands in for a removed attention sub-layer: adds nothing to the residual stream."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def _slice_linear(linear: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = linear.weight.data
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    bias = linear.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype, device=w.device)
    new.weight.data.copy_(w)
    if bias:
        b = linear.bias.data
        new.bias.data.copy_(b[rows] if rows is not None else b)
    return new


def _feature_index(units, unit_size: int) -> torch.Tensor:
    return torch.tensor([u * unit_size + j for u in units for j in range(unit_size)], dtype=torch.long)


def slice_layer(parts: LayerParts, plan: LayerPlan, head_dim: int) -> None:
    """Prune one decoder layer in place according to ``plan``."""
    layer = parts.layer
    if plan.attn_removed:
        layer.self_attn = RemovedAttention()
        layer.input_layernorm = nn.Identity()
    else:
        q_idx = _feature_index(plan.q_heads, head_dim)
        kv_idx = _feature_index(plan.kv_heads, head_dim)
        attn = parts.attn
        attn.q_proj = _slice_linear(parts.q, rows=q_idx)
        attn.k_proj = _slice_linear(parts.k, rows=kv_idx)
        attn.v_proj = _slice_linear(parts.v, rows=kv_idx)
        attn.o_proj = _slice_linear(parts.o, cols=q_idx)
        attn.num_key_value_groups = len(plan.q_heads) // len(plan.kv_heads)
        attn.num_heads = len(plan.q_heads)
        attn.num_key_value_heads = len(plan.kv_heads)
    if plan.mlp_removed:
        layer.mlp = RemovedMLP()
        layer.post_attention_layernorm = nn.Identity()
    else:
        ch = torch.tensor(plan.mlp_channels, dtype=torch.long)
        mlp = parts.mlp
        mlp.up_proj = _slice_linear(parts.up, rows=ch)
        if parts.gate is not None:
            mlp.gate_proj = _slice_linear(parts.gate, rows=ch)
        mlp.down_proj = _slice_linear(parts.down, cols=ch)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(plan.mlp_channels)


def slice_model(model, layers: list[LayerParts], plans: list[LayerPlan], head_dim: int):
    """Prune ``model`` in place (make a copy first to keep the dense one) and return it."""
    for parts, plan in zip(layers, plans, strict=True):
        slice_layer(parts, plan, head_dim)
    return model
