"""The search space: an integer pruning level per decoder layer for attention and for the MLP.

A configuration is a vector ``x`` of ``2 * num_layers`` integers laid out as
``[attn_0, ..., attn_{L-1}, mlp_0, ..., mlp_{L-1}]``. Level 0 leaves a sub-layer untouched;
the top level removes the whole sub-layer (depth pruning). Levels in between remove an
even share of the sub-layer's pruning units. Widths and parameter counts follow from the
architecture alone, so the cost of any configuration is exact without building a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from evoprune.errors import EvopruneError

HEAD_UNITS = ("query_head", "kv_group")


@dataclass(frozen=True)
class ArchSpec:
    """The sizes of a decoder-only transformer that determine what can be pruned and its cost."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    gated_mlp: bool = True
    norm_params: int = 0  # parameters of one normalization layer
    qk_norm_params: int = 0  # per-head q/k norms (Qwen3): independent of the number of heads
    extra_fixed_params: int = 0  # e.g. learned position embeddings
    embed_dim: int = 0  # token embedding width when it differs from hidden_size (OPT); 0 = hidden_size

    @property
    def queries_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def fixed_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, final norm, untied LM head."""
        width = self.embed_dim or self.hidden_size
        embed = self.vocab_size * width
        head = 0 if self.tie_word_embeddings else self.vocab_size * width
        return embed + head + self.norm_params + self.extra_fixed_params

    def attention_params(self, q_heads: int, kv_heads: int) -> int:
        """Parameters of one attention sub-layer with the given head counts; 0 heads = removed."""
        if q_heads == 0:
            return 0
        h, d = self.hidden_size, self.head_dim
        q = h * q_heads * d + (q_heads * d if self.qkv_bias else 0)
        kv = 2 * (h * kv_heads * d + (kv_heads * d if self.qkv_bias else 0))
        o = q_heads * d * h + (h if self.o_bias else 0)
        return q + kv + o + self.norm_params + self.qk_norm_params

    def mlp_params(self, channels: int) -> int:
        """Parameters of one MLP sub-layer with ``channels`` intermediate channels; 0 = removed."""
        if channels == 0:
            return 0
        h = self.hidden_size
        n_in = 2 if self.gated_mlp else 1
        w = n_in * h * channels + channels * h
        b = (n_in * channels + h) if self.mlp_bias else 0
        return w + b + self.norm_params

    def dense_params(self) -> int:
        per_layer = self.attention_params(self.num_heads, self.num_kv_heads) + self.mlp_params(self.intermediate_size)
        return self.fixed_params() + self.num_layers * per_layer


@dataclass(frozen=True)
class LayerWidths:
    """Kept sizes of one decoder layer."""

    q_heads: int
    kv_heads: int
    mlp_channels: int


@dataclass(frozen=True)
class SearchSpace:
    """Integer levels per layer for attention and MLP, and their mapping to kept widths.

    ``head_unit`` says how attention is pruned under grouped-query attention:
    ``"query_head"`` removes the same number of query heads from every KV group (KV heads stay
    until the last query head goes), ``"kv_group"`` removes whole KV groups with their query
    heads (also shrinks the KV cache). For multi-head attention both remove whole heads.
    """

    arch: ArchSpec
    head_unit: str = "query_head"
    attn_levels: int = 0  # 0: one level per attention unit (capped at 8); -1: one per unit, uncapped
    mlp_levels: int = 8  # 0: one level per ``mlp_multiple`` channels (the finest grid)
    mlp_multiple: int = 1
    frozen_layers: tuple[int, ...] = field(default_factory=tuple)
    # Bias compensation (backend.compensation "bias") gives every pruned sub-layer a hidden-size
    # bias where it had none, and a removed one a hidden-size constant: counted as parameters.
    compensation_bias: bool = False

    def __post_init__(self) -> None:
        if self.head_unit not in HEAD_UNITS:
            raise EvopruneError(f"head unit {self.head_unit!r} is unknown: use one of {', '.join(HEAD_UNITS)}")
        if self.attn_levels == 0:
            object.__setattr__(self, "attn_levels", min(self.attn_units, 8))
        elif self.attn_levels == -1:
            # The one-shot baselines need every head count reachable (evoprune.baselines).
            object.__setattr__(self, "attn_levels", self.attn_units)
        if self.mlp_levels == 0 and self.mlp_multiple >= 1:
            n, m = self.arch.intermediate_size, self.mlp_multiple
            object.__setattr__(self, "mlp_levels", -(-n // m))
        if not 1 <= self.attn_levels <= self.attn_units:
            raise EvopruneError(
                f"attention levels must be between 1 and {self.attn_units} (the number of attention "
                f"units), got {self.attn_levels}"
            )
        if not 1 <= self.mlp_levels <= self.arch.intermediate_size:
            raise EvopruneError(
                f"MLP levels must be between 1 and {self.arch.intermediate_size} (or 0: one per --mlp-multiple "
                f"channels), got {self.mlp_levels}"
            )
        if self.mlp_multiple < 1:
            raise EvopruneError(f"MLP width multiple must be at least 1, got {self.mlp_multiple}")
        bad = [i for i in self.frozen_layers if not 0 <= i < self.arch.num_layers]
        if bad:
            raise EvopruneError(f"frozen layers {bad} are outside 0..{self.arch.num_layers - 1}")

    # -- encoding ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    @property
    def n_var(self) -> int:
        return 2 * self.arch.num_layers

    @property
    def attn_units(self) -> int:
        if self.arch.num_kv_heads == self.arch.num_heads or self.head_unit == "kv_group":
            return self.arch.num_kv_heads
        return self.arch.queries_per_group

    @property
    def lower(self) -> np.ndarray:
        return np.zeros(self.n_var, dtype=int)

    @property
    def upper(self) -> np.ndarray:
        up = np.concatenate([np.full(self.num_layers, self.attn_levels), np.full(self.num_layers, self.mlp_levels)])
        for i in self.frozen_layers:
            up[i] = 0
            up[self.num_layers + i] = 0
        return up

    def split(self, x) -> tuple[list[int], list[int]]:
        """Attention and MLP levels of a configuration vector, validated."""
        x = self.validate(x)
        return x[: self.num_layers].tolist(), x[self.num_layers :].tolist()

    def join(self, attn: list[int], mlp: list[int]) -> np.ndarray:
        return self.validate(np.concatenate([np.asarray(attn, dtype=int), np.asarray(mlp, dtype=int)]))

    def validate(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != (self.n_var,):
            raise EvopruneError(
                f"a configuration needs {self.n_var} levels ({self.num_layers} attention + "
                f"{self.num_layers} MLP), got shape {x.shape}"
            )
        if not np.all(np.equal(np.round(x), x)):
            raise EvopruneError("pruning levels must be integers")
        x = x.astype(int)
        bad = np.flatnonzero((x < self.lower) | (x > self.upper))
        if bad.size:
            i = int(bad[0])
            kind, layer = ("attention", i) if i < self.num_layers else ("MLP", i - self.num_layers)
            raise EvopruneError(f"level {x[i]} for the {kind} of layer {layer} is outside the space 0..{self.upper[i]}")
        return x

    def key(self, x) -> str:
        """A short stable identifier of a configuration."""
        return hashlib.sha1(self.validate(x).astype(np.int16).tobytes()).hexdigest()[:16]

    # -- widths -----------------------------------------------------------------------------
    def kept_attn_units(self, level: int) -> int:
        removed = int(round(level * self.attn_units / self.attn_levels))
        return self.attn_units - removed

    def kept_mlp_channels(self, level: int) -> int:
        if level == 0:
            return self.arch.intermediate_size
        if level >= self.mlp_levels:
            return 0
        n = self.arch.intermediate_size
        kept = n * (1 - level / self.mlp_levels)
        m = self.mlp_multiple
        return int(min(n, max(m, m * round(kept / m))))

    def attn_heads(self, level: int) -> tuple[int, int]:
        """(query heads, KV heads) kept at an attention level."""
        units = self.kept_attn_units(level)
        a = self.arch
        if units == 0:
            return 0, 0
        if a.num_kv_heads == a.num_heads or self.head_unit == "kv_group":
            return units * a.queries_per_group, units
        return units * a.num_kv_heads, a.num_kv_heads

    def widths(self, x) -> list[LayerWidths]:
        attn, mlp = self.split(x)
        out = []
        for a, m in zip(attn, mlp, strict=True):
            q, kv = self.attn_heads(a)
            out.append(LayerWidths(q, kv, self.kept_mlp_channels(m)))
        return out

    # -- cost -------------------------------------------------------------------------------
    def attn_level_params(self, level: int) -> int:
        """Parameters of one attention sub-layer at ``level`` (compensation bias included)."""
        params = self.arch.attention_params(*self.attn_heads(level))
        if self.compensation_bias and level > 0 and (params == 0 or not self.arch.o_bias):
            params += self.arch.hidden_size
        return params

    def mlp_level_params(self, level: int) -> int:
        """Parameters of one MLP sub-layer at ``level`` (compensation bias included)."""
        params = self.arch.mlp_params(self.kept_mlp_channels(level))
        if self.compensation_bias and level > 0 and (params == 0 or not self.arch.mlp_bias):
            params += self.arch.hidden_size
        return params

    def params(self, x) -> int:
        """Exact parameter count of the pruned model (the export's, compensation biases included)."""
        attn, mlp = self.split(x)
        return self.arch.fixed_params() + sum(self.attn_level_params(a) for a in attn) + sum(
            self.mlp_level_params(m) for m in mlp
        )

    def params_fraction(self, x) -> float:
        return self.params(x) / self.arch.dense_params()

    def params_matrix(self, X: np.ndarray) -> np.ndarray:
        """Parameter counts of many configurations at once (vectorised through lookup tables)."""
        X = np.asarray(X, dtype=int)
        L = self.num_layers
        attn_table = np.array([self.attn_level_params(lv) for lv in range(self.attn_levels + 1)])
        mlp_table = np.array([self.mlp_level_params(lv) for lv in range(self.mlp_levels + 1)])
        return self.arch.fixed_params() + attn_table[X[:, :L]].sum(axis=1) + mlp_table[X[:, L:]].sum(axis=1)

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["frozen_layers"] = list(self.frozen_layers)
        if not self.compensation_bias:
            del d["compensation_bias"]  # spaces recorded before the field existed read the same
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchSpace:
        d = dict(d)
        arch = ArchSpec(**d.pop("arch"))
        d["frozen_layers"] = tuple(d.get("frozen_layers", ()))
        return cls(arch=arch, **d)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
