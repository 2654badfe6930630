"""Evaluate a configuration on the dense model in place, without copying it.

While a configuration is applied, each pruned projection of the model is swapped for an
``IndexedLinear`` that gathers the kept rows or columns of the *original* weight at call time
(one layer's worth of memory at a time) and runs a matmul of exactly the shape the physically
pruned model runs. The result equals the exported model's to the last bit, where zero masks
would differ in float rounding, and pruned configurations evaluate faster than the dense one.
Removed sub-layers are swapped for stand-ins that add nothing. ``reset`` restores every module
and attribute; no weight is ever written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evoprune.backend.adapters import Adapter, LayerParts
from evoprune.backend.compensation import LayerCompensation
from evoprune.backend.plan import LayerPlan

# Attributes that the families' setters change on attention and MLP modules.
_ATTRIBUTES = ("num_heads", "num_key_value_groups", "num_key_value_heads", "intermediate_size")


class IndexedLinear(nn.Module):
    """A view of a linear layer restricted to some output rows and/or input columns.

    ``bias`` (out_features,) replaces the base layer's bias and ``weight`` (out_features,
    in_features) its restricted weight (compensation): each is the very tensor that slicing copies
    into the exported ``nn.Linear``, passed to the same ``F.linear``.
    """

    def __init__(
        self,
        base: nn.Linear,
        rows: torch.Tensor | None = None,
        cols: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ):
        super().__init__()
        self._base = (base,)  # a tuple, so the dense weights are not registered twice
        self.rows = rows.to(base.weight.device) if rows is not None else None
        self.cols = cols.to(base.weight.device) if cols is not None else None
        self.bias_override = bias
        self.weight_override = weight
        self.in_features = base.in_features if cols is None else len(cols)
        self.out_features = base.out_features if rows is None else len(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._base[0]
        weight, bias = base.weight, base.bias
        if self.weight_override is not None:
            return F.linear(x, self.weight_override, self.bias_override if self.bias_override is not None else bias)
        if self.rows is not None:
            weight = weight.index_select(0, self.rows)
            bias = bias.index_select(0, self.rows) if bias is not None else None
        if self.cols is not None:
            weight = weight.index_select(1, self.cols)
        if self.bias_override is not None:
            bias = self.bias_override
        return F.linear(x, weight, bias)


def _features(units, size: int) -> torch.Tensor:
    return torch.tensor([u * size + j for u in units for j in range(size)], dtype=torch.long)


class _Snapshot:
    """The submodules and width attributes of some modules, to put back later."""

    def __init__(self, modules: list[nn.Module]):
        self.saved = [
            (m, dict(m._modules), {a: m.__dict__[a] for a in _ATTRIBUTES if a in m.__dict__}) for m in modules
        ]

    def restore(self) -> None:
        for module, children, attrs in self.saved:
            module._modules.clear()
            module._modules.update(children)
            for name in _ATTRIBUTES:
                module.__dict__.pop(name, None)
            module.__dict__.update(attrs)


class MaskedModel:
    """Applies configurations to a model in place; ``reset`` brings the dense model back."""

    def __init__(self, model, adapter: Adapter, num_heads: int, head_dim: int):
        self.model = model
        self.adapter = adapter
        self.layers: list[LayerParts] = adapter.layers(model)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self._snapshots: list[_Snapshot] = []

    def apply(self, plans: list[LayerPlan], compensation: list[LayerCompensation] | None = None) -> None:
        """Apply ``plans`` (one per layer), with the ``compensation`` of the same plans if any."""
        self.reset()
        family = self.adapter.family
        for i, (parts, plan) in enumerate(zip(self.layers, plans, strict=True)):
            comp = compensation[i] if compensation is not None else LayerCompensation()
            layer = parts.layer
            attn_changed = plan.attn_removed or len(plan.q_heads) < self.num_heads
            mlp_changed = plan.mlp_removed or len(plan.mlp_channels) < parts.down.in_features
            if not (attn_changed or mlp_changed):
                continue
            owners = [layer] + [m for m in (getattr(layer, "self_attn", None), getattr(layer, "mlp", None)) if m]
            self._snapshots.append(_Snapshot(owners))
            if plan.attn_removed:
                family.remove_attention(layer, parts.index, comp.o)
            elif attn_changed:
                q_idx, kv_idx = _features(plan.q_heads, self.head_dim), _features(plan.kv_heads, self.head_dim)
                linears = {
                    "q": IndexedLinear(parts.q, rows=q_idx),
                    "k": IndexedLinear(parts.k, rows=kv_idx),
                    "v": IndexedLinear(parts.v, rows=kv_idx),
                    "o": IndexedLinear(parts.o, cols=q_idx, bias=comp.o, weight=comp.o_weight),
                }
                family.set_attention(layer, linears, len(plan.q_heads), len(plan.kv_heads))
            if plan.mlp_removed:
                family.remove_mlp(layer, comp.down)
            elif mlp_changed:
                ch = torch.tensor(plan.mlp_channels, dtype=torch.long)
                linears = {
                    "gate": IndexedLinear(parts.gate, rows=ch) if parts.gate is not None else None,
                    "up": IndexedLinear(parts.up, rows=ch),
                    "down": IndexedLinear(parts.down, cols=ch, bias=comp.down, weight=comp.down_weight),
                }
                family.set_mlp(layer, linears, len(plan.mlp_channels))

    def reset(self) -> None:
        while self._snapshots:
            self._snapshots.pop().restore()

    def remove(self) -> None:
        self.reset()
