"""Structure of pruned models: what each family's decoder layer looks like at any width.

This module imports only torch and transformers. ``evoprune export`` copies it verbatim next to
the weights as ``modeling_evoprune.py``, so an exported model loads with
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` where evoprune is not
installed; ``evoprune.load_pruned`` uses this same module without running any file from disk.
Slicing in evoprune goes through the same setters, so the exported shapes cannot drift from
the ones the search measured.

A layer spec is ``{"q_heads": int, "kv_heads": int, "mlp": int}``; 0 heads or 0 channels
means the sub-layer is removed. Optional ``"o_bias": true`` / ``"down_bias": true`` (written when
evoprune's bias compensation changed them) give that projection a bias even where the base family
has none; for a removed sub-layer, the stand-in then adds that constant bias instead of nothing.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def _constant(hidden_states: torch.Tensor, bias: nn.Parameter | None) -> torch.Tensor:
    out = torch.zeros_like(hidden_states)
    return out if bias is None else out + bias


def _optional_bias(bias: torch.Tensor | None) -> nn.Parameter | None:
    return None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)


class RemovedAttention(nn.Module):
    """Stands in for a removed attention sub-layer: adds nothing to the residual stream, or the
    constant ``bias`` (hidden_size,) when bias compensation gave it one.

    During generation it still records the sequence length in the KV cache (one tiny slot per
    token), because models read the number of past tokens from the cache of a layer.
    """

    def __init__(self, layer_idx: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.bias = _optional_bias(bias)

    def forward(self, hidden_states, *args, **kwargs):
        cache = None
        for name in ("cache", "past_key_values", "past_key_value"):
            if kwargs.get(name) is not None:
                cache = kwargs[name]
                break
        if cache is not None and hasattr(cache, "update"):
            bsz, seq = hidden_states.shape[:2]
            slot = hidden_states.new_zeros(bsz, 1, seq, 1)
            cache.update(slot, slot, self.layer_idx)
        return _constant(hidden_states, self.bias), None


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP: adds nothing, or the constant ``bias`` (hidden_size,)."""

    def __init__(self, bias: torch.Tensor | None = None):
        super().__init__()
        self.bias = _optional_bias(bias)

    def forward(self, hidden_states, *args, **kwargs):
        return _constant(hidden_states, self.bias)


def _linear_like(old: nn.Linear, in_features: int, out_features: int, bias: bool | None = None) -> nn.Linear:
    has_bias = old.bias is not None if bias is None else bias
    return nn.Linear(in_features, out_features, bias=has_bias, dtype=old.weight.dtype, device=old.weight.device)


class LlamaFamily:
    """Llama, Mistral, Qwen2, Qwen3: ``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``."""

    @staticmethod
    def layers(model) -> list:
        return list(model.model.layers)

    @staticmethod
    def attention_linears(layer) -> dict:
        a = layer.self_attn
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj}

    @staticmethod
    def mlp_linears(layer) -> dict:
        m = layer.mlp
        return {"gate": m.gate_proj, "up": m.up_proj, "down": m.down_proj}

    @staticmethod
    def norms(layer) -> tuple:
        return layer.input_layernorm, layer.post_attention_layernorm

    @staticmethod
    def set_attention(layer, linears: dict, q_heads: int, kv_heads: int) -> None:
        a = layer.self_attn
        a.q_proj, a.k_proj, a.v_proj, a.o_proj = linears["q"], linears["k"], linears["v"], linears["o"]
        a.num_key_value_groups = q_heads // kv_heads
        a.num_heads = q_heads
        a.num_key_value_heads = kv_heads

    @staticmethod
    def remove_attention(layer, layer_idx: int, bias: torch.Tensor | None = None) -> None:
        layer.self_attn = RemovedAttention(layer_idx, bias)
        layer.input_layernorm = nn.Identity()

    @staticmethod
    def set_mlp(layer, linears: dict, channels: int) -> None:
        m = layer.mlp
        m.gate_proj, m.up_proj, m.down_proj = linears["gate"], linears["up"], linears["down"]
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = channels

    @staticmethod
    def remove_mlp(layer, bias: torch.Tensor | None = None) -> None:
        layer.mlp = RemovedMLP(bias)
        layer.post_attention_layernorm = nn.Identity()


class OPTFamily:
    """OPT: multi-head attention with biases, ``fc1``/``fc2`` MLP inline in the decoder layer."""

    @staticmethod
    def layers(model) -> list:
        return list(model.model.decoder.layers)

    @staticmethod
    def attention_linears(layer) -> dict:
        a = layer.self_attn
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.out_proj}

    @staticmethod
    def mlp_linears(layer) -> dict:
        return {"gate": None, "up": layer.fc1, "down": layer.fc2}

    @staticmethod
    def norms(layer) -> tuple:
        return layer.self_attn_layer_norm, layer.final_layer_norm

    @staticmethod
    def set_attention(layer, linears: dict, q_heads: int, kv_heads: int) -> None:
        a = layer.self_attn
        a.q_proj, a.k_proj, a.v_proj, a.out_proj = linears["q"], linears["k"], linears["v"], linears["o"]
        a.num_heads = q_heads

    @staticmethod
    def remove_attention(layer, layer_idx: int, bias: torch.Tensor | None = None) -> None:
        layer.self_attn = RemovedAttention(layer_idx, bias)
        layer.self_attn_layer_norm = nn.Identity()

    @staticmethod
    def set_mlp(layer, linears: dict, channels: int) -> None:
        layer.fc1, layer.fc2 = linears["up"], linears["down"]

    @staticmethod
    def remove_mlp(layer, bias: torch.Tensor | None = None) -> None:
        # The MLP is inline in OPT's layer: zero-width projections without bias add exactly 0
        # (with a compensation bias, fc2 adds exactly that constant).
        hidden = layer.fc1.in_features
        with warnings.catch_warnings():  # torch warns that initialising an empty tensor does nothing
            warnings.simplefilter("ignore", UserWarning)
            layer.fc1 = _linear_like(layer.fc1, hidden, 0, bias=False)
            layer.fc2 = _linear_like(layer.fc2, 0, hidden, bias=bias is not None)
        if bias is not None:
            with torch.no_grad():
                layer.fc2.bias.copy_(bias)
        layer.final_layer_norm = nn.Identity()


FAMILIES = {"llama": LlamaFamily, "mistral": LlamaFamily, "qwen2": LlamaFamily, "qwen3": LlamaFamily, "opt": OPTFamily}


def family_of(config):
    model_type = getattr(config, BASE_TYPE_KEY, None) or config.model_type  # an export's config says "evoprune"
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"model type {model_type!r} has no pruned layout; known: {sorted(FAMILIES)}") from None


def empty_attention(old: dict, head_dim: int, q_heads: int, kv_heads: int, o_bias: bool | None = None) -> dict:
    """Uninitialised projections of the pruned widths (weights are loaded or copied in later).

    ``o_bias``: True gives ``o`` a bias, None keeps the base model's choice.
    """
    hidden = old["q"].in_features
    return {
        "q": _linear_like(old["q"], hidden, q_heads * head_dim),
        "k": _linear_like(old["k"], hidden, kv_heads * head_dim),
        "v": _linear_like(old["v"], hidden, kv_heads * head_dim),
        "o": _linear_like(old["o"], q_heads * head_dim, hidden, bias=o_bias or None),
    }


def empty_mlp(old: dict, channels: int, down_bias: bool | None = None) -> dict:
    hidden = old["up"].in_features
    return {
        "gate": _linear_like(old["gate"], hidden, channels) if old["gate"] is not None else None,
        "up": _linear_like(old["up"], hidden, channels),
        "down": _linear_like(old["down"], channels, hidden, bias=down_bias or None),
    }


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def apply_layer_sizes(model, sizes: list[dict]) -> None:
    """Give every decoder layer of a freshly built dense model its pruned widths."""
    config = model.config
    family = family_of(config)
    layers = family.layers(model)
    if len(sizes) != len(layers):
        raise ValueError(f"the pruned layout has {len(sizes)} layers but the model has {len(layers)}")
    head_dim = head_dim_of(config)
    hidden = config.hidden_size
    for i, (layer, spec) in enumerate(zip(layers, sizes, strict=True)):
        o_bias, down_bias = bool(spec.get("o_bias", False)), bool(spec.get("down_bias", False))
        # Placeholders of the right shape; from_pretrained loads the real biases over them.
        if spec["q_heads"] == 0:
            family.remove_attention(layer, i, torch.zeros(hidden) if o_bias else None)
        else:
            linears = empty_attention(
                family.attention_linears(layer), head_dim, spec["q_heads"], spec["kv_heads"], o_bias=o_bias
            )
            family.set_attention(layer, linears, spec["q_heads"], spec["kv_heads"])
        if spec["mlp"] == 0:
            family.remove_mlp(layer, torch.zeros(hidden) if down_bias else None)
        else:
            family.set_mlp(layer, empty_mlp(family.mlp_linears(layer), spec["mlp"], down_bias=down_bias), spec["mlp"])


def make_pruned_class(base: type, config_class: type | None = None) -> type:
    """A subclass of a transformers causal-LM class that builds the pruned widths from its config.

    ``config_class`` (from ``make_pruned_config_class``) is the config class the Auto classes
    map this model to; without it the base family's config class stays.
    """

    class EvopruneForCausalLM(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            apply_layer_sizes(self, config.evoprune_layers)

    if config_class is not None:
        EvopruneForCausalLM.config_class = config_class
    EvopruneForCausalLM.__name__ = EvopruneForCausalLM.__qualname__ = "EvopruneForCausalLM"
    return EvopruneForCausalLM


# The model_type an export's config.json declares. transformers knows no such type, so loading an
# export without this file's code fails instead of building the dense base model with random
# weights where sub-layers were removed; the base family's type is kept in BASE_TYPE_KEY.
MODEL_TYPE = "evoprune"
BASE_TYPE_KEY = "evoprune_base_model_type"


def make_pruned_config_class(base: type) -> type:
    """The base family's config class under ``model_type`` ``evoprune``, for ``trust_remote_code``."""

    class EvopruneConfig(base):
        model_type = MODEL_TYPE

    EvopruneConfig.__name__ = EvopruneConfig.__qualname__ = "EvopruneConfig"
    return EvopruneConfig
