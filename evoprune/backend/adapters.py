"""One adapter per model family: what is pruned together, how big it is, where it lives.

The module layout itself (attribute names, how to swap in resized projections) is in
``pruned_modeling.py``, which exported models carry with them; an adapter adds what only
evoprune needs: the sizes that enter the search space and the cost model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evoprune.backend import pruned_modeling
from evoprune.errors import EvopruneError
from evoprune.space import ArchSpec


@dataclass(frozen=True)
class LayerParts:
    """The projections of one decoder layer that pruning reads and rewrites."""

    index: int
    layer: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    up: nn.Linear
    gate: nn.Linear | None
    down: nn.Linear


class Adapter:
    model_types: tuple[str, ...] = ()
    family = pruned_modeling.LlamaFamily

    def arch_spec(self, config) -> ArchSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, config) -> None:
        """Raise EvopruneError for a config of this family that evoprune cannot prune."""

    def layers(self, model) -> list[LayerParts]:
        out = []
        for i, layer in enumerate(self.family.layers(model)):
            a = self.family.attention_linears(layer)
            m = self.family.mlp_linears(layer)
            out.append(LayerParts(i, layer, a["q"], a["k"], a["v"], a["o"], m["up"], m["gate"], m["down"]))
        return out

    def base_class_name(self, config) -> str:
        return type(self).base_classes[config.model_type]

    def layer_caller(self, model, hidden):
        """A function that runs one decoder layer of ``model``'s family on ``hidden`` (for timing)."""

        def call(layer):
            with torch.inference_mode():
                return layer(hidden, attention_mask=None)

        return call


class LlamaFamilyAdapter(Adapter):
    """Llama, Mistral, Qwen2, Qwen3 and SmolLM: pre-norm blocks, gated MLP, grouped-query attention."""

    model_types = ("llama", "mistral", "qwen2", "qwen3")
    family = pruned_modeling.LlamaFamily
    base_classes = {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
    }

    def arch_spec(self, config) -> ArchSpec:
        hidden = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        # Qwen2 has biases on q/k/v only; Llama's attention_bias puts them on all four.
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

    def layer_caller(self, model, hidden):
        positions = torch.arange(hidden.shape[1])[None].expand(hidden.shape[0], -1)
        with torch.inference_mode():
            rotary = model.model.rotary_emb(hidden, positions)

        def call(layer):
            with torch.inference_mode():
                return layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)

        return call


class OPTAdapter(Adapter):
    """OPT: pre-LayerNorm blocks, multi-head attention and a ReLU MLP, all with biases."""

    model_types = ("opt",)
    family = pruned_modeling.OPTFamily
    base_classes = {"opt": "OPTForCausalLM"}

    def check(self, config) -> None:
        if not config.do_layer_norm_before:
            raise EvopruneError(
                "OPT models with post-LayerNorm (do_layer_norm_before=false, e.g. opt-350m) are not supported: "
                "use another OPT size"
            )

    def arch_spec(self, config) -> ArchSpec:
        hidden = config.hidden_size
        embed_dim = getattr(config, "word_embed_proj_dim", hidden) or hidden
        ln = 2 * hidden if getattr(config, "layer_norm_elementwise_affine", True) else 0
        projections = 2 * hidden * embed_dim if embed_dim != hidden else 0
        positions = (config.max_position_embeddings + 2) * hidden  # OPT offsets positions by 2
        final_norm = ln if not getattr(config, "_remove_final_layer_norm", False) else 0
        bias = bool(getattr(config, "enable_bias", True))
        return ArchSpec(
            model_type="opt",
            num_layers=config.num_hidden_layers,
            hidden_size=hidden,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_attention_heads,
            head_dim=hidden // config.num_attention_heads,
            intermediate_size=config.ffn_dim,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            qkv_bias=bias,
            o_bias=bias,
            mlp_bias=bias,
            gated_mlp=False,
            norm_params=ln,
            embed_dim=embed_dim,
            extra_fixed_params=positions + projections + final_norm - ln,
        )


_ADAPTERS: list[Adapter] = [LlamaFamilyAdapter(), OPTAdapter()]


def supported_model_types() -> list[str]:
    return sorted(t for a in _ADAPTERS for t in a.model_types)


def adapter_for(config) -> Adapter:
    """The adapter for a transformers config, or a clear error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in _ADAPTERS:
        if model_type in adapter.model_types:
            adapter.check(config)
            return adapter
    raise EvopruneError(
        f"model type {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
    )
