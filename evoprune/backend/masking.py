"""Evaluate a configuration on the dense model in place: masks on the inputs of ``o`` and ``down``.

Zeroing a head's slice of the ``o`` projection input is exactly removing that head (heads are
independent until ``o``), and zeroing a channel at the input of ``down`` is exactly removing the
channel. A removed sub-layer also drops its output bias. No weights are copied or changed.
"""

from __future__ import annotations

import torch

from evoprune.backend.adapters import LayerParts
from evoprune.backend.plan import LayerPlan


class MaskedModel:
    """Installs masking hooks on a model; ``apply(plans)`` switches configurations cheaply."""

    def __init__(self, model, layers: list[LayerParts], num_heads: int, head_dim: int):
        self.model = model
        self.layers = layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        dtype = next(model.parameters()).dtype
        self._head_masks = [torch.ones(num_heads * head_dim, dtype=dtype) for _ in layers]
        self._channel_masks = [torch.ones(p.down.in_features, dtype=dtype) for p in layers]
        self._attn_active = [True] * len(layers)
        self._mlp_active = [True] * len(layers)
        self._attn_masked = [False] * len(layers)
        self._mlp_masked = [False] * len(layers)
        self._handles = []
        for i, p in enumerate(layers):
            self._handles += [
                p.o.register_forward_pre_hook(self._pre_hook(self._head_masks, self._attn_masked, i)),
                p.down.register_forward_pre_hook(self._pre_hook(self._channel_masks, self._mlp_masked, i)),
                p.o.register_forward_hook(self._post_hook(self._attn_active, i)),
                p.down.register_forward_hook(self._post_hook(self._mlp_active, i)),
            ]

    @staticmethod
    def _pre_hook(masks, masked, i):
        def fn(_module, args):
            if masked[i]:
                return (args[0] * masks[i],)
            return None

        return fn

    @staticmethod
    def _post_hook(active, i):
        def fn(_module, _args, output):
            if not active[i]:
                return torch.zeros_like(output)
            return None

        return fn

    def apply(self, plans: list[LayerPlan]) -> None:
        for i, plan in enumerate(plans):
            head_mask = torch.zeros(self.num_heads, dtype=self._head_masks[i].dtype)
            head_mask[list(plan.q_heads)] = 1
            self._head_masks[i].copy_(head_mask.repeat_interleave(self.head_dim))
            self._attn_masked[i] = len(plan.q_heads) < self.num_heads
            self._attn_active[i] = not plan.attn_removed
            channel_mask = self._channel_masks[i]
            channel_mask.zero_()
            channel_mask[list(plan.mlp_channels)] = 1
            self._mlp_masked[i] = len(plan.mlp_channels) < channel_mask.numel()
            self._mlp_active[i] = not plan.mlp_removed

    def reset(self) -> None:
        for i in range(len(self.layers)):
            self._head_masks[i].fill_(1)
            self._channel_masks[i].fill_(1)
            self._attn_masked[i] = self._mlp_masked[i] = False
            self._attn_active[i] = self._mlp_active[i] = True

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
