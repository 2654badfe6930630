"""One adapter per model family: where the prunable parts live and how big they are."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from evoprune.errors import EvopruneError
from evoprune.space import ArchSpec


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer that pruning touches."""

    layer: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    up: nn.Linear
    gate: nn.Linear | None
    down: nn.Linear
    attn_norm: nn.Module
    mlp_norm: nn.Module
    attn: nn.Module
    mlp: nn.Module


class LlamaFamilyAdapter:
    """Llama, Mistral, Qwen2, Qwen3 and SmolLM: pre-norm blocks, gated MLP, grouped-query attention."""

    model_types = ("llama", "mistral", "qwen2", "qwen3")

    def arch_spec(self, config) -> ArchSpec:
        hidden = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        qkv_bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        o_bias = bool(getattr(config, "attention_bias", False)) and config.model_type != "qwen2"
        return ArchSpec(
            model_type=config.model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            gated_mlp=True,
            norm_params=hidden,
            qk_norm_params=2 * head_dim if config.model_type == "qwen3" else 0,
        )

    def layers(self, model) -> list[LayerParts]:
        out = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            out.append(
                LayerParts(
                    layer=layer,
                    q=a.q_proj,
                    k=a.k_proj,
                    v=a.v_proj,
                    o=a.o_proj,
                    up=m.up_proj,
                    gate=m.gate_proj,
                    down=m.down_proj,
                    attn_norm=layer.input_layernorm,
                    mlp_norm=layer.post_attention_layernorm,
                    attn=a,
                    mlp=m,
                )
            )
        return out


_ADAPTERS = [LlamaFamilyAdapter()]


def supported_model_types() -> list[str]:
    return sorted(t for a in _ADAPTERS for t in a.model_types)


def adapter_for(config) -> LlamaFamilyAdapter:
    """The adapter for a transformers config, or a clear error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in _ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise EvopruneError(
        f"model type {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
    )
