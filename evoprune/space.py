"""The search space: an integer pruning level per decoder layer for attention and for the MLP.

A configuration is a vector ``x`` of ``2 * num_layers`` integers laid out as
``[attn_0, ..., attn_{L-1}, mlp_0, ..., mlp_{L-1}]``. Level 0 leaves a sub-layer untouched;
the top level removes the whole sub-layer (depth pruning). Levels in between remove an
even share of the sub-layer's pruning units. Widths and parameter counts follow from the
architecture alone, so the cost of any configuration is exact without building a model.

No two levels of a sub-layer keep the same width: where rounding to ``mlp_multiple`` would give
two levels one width, they are merged (the space has fewer MLP levels than asked, and says so in
``notes``). Which heads and channels a width keeps follows from the importance scores alone, so
two configurations are the same model exactly when their levels are equal, and ``key`` (the
store's identity of a configuration) never names one model twice.
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
    # Kept MLP channels per level, level 0 (all) first, the top level (0) last. Derived from
    # ``mlp_levels`` and ``mlp_multiple`` when empty; given (as ``from_dict`` does), it decides
    # ``mlp_levels``.
    mlp_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.head_unit not in HEAD_UNITS:
            raise EvopruneError(f"head unit {self.head_unit!r} is unknown: use one of {', '.join(HEAD_UNITS)}")
        if self.attn_levels == 0:
            object.__setattr__(self, "attn_levels", min(self.attn_units, 8))
        elif self.attn_levels == -1:
            # The one-shot baselines need every head count reachable (evoprune.engine.baselines).
            object.__setattr__(self, "attn_levels", self.attn_units)
        if not 1 <= self.attn_levels <= self.attn_units:
            raise EvopruneError(
                f"attention levels must be between 1 and {self.attn_units} (the number of attention "
                f"units), got {self.attn_levels}"
            )
        if self.mlp_multiple < 1:
            raise EvopruneError(f"MLP width multiple must be at least 1, got {self.mlp_multiple}")
        widths = tuple(int(w) for w in self.mlp_widths) or self._mlp_grid()
        n = self.arch.intermediate_size
        if (
            len(widths) < 2
            or widths[0] != n
            or widths[-1] != 0
            or any(b > a for a, b in zip(widths, widths[1:], strict=False))
        ):
            raise EvopruneError(f"MLP widths {list(widths)} must fall from {n} channels (level 0) to 0 (the top level)")
        object.__setattr__(self, "mlp_widths", widths)
        object.__setattr__(self, "mlp_levels", len(widths) - 1)
        bad = [i for i in self.frozen_layers if not 0 <= i < self.arch.num_layers]
        if bad:
            raise EvopruneError(f"frozen layers {bad} are outside 0..{self.arch.num_layers - 1}")

    def _mlp_grid(self) -> tuple[int, ...]:
        """Kept channels per MLP level from ``mlp_levels`` and ``mlp_multiple``, levels that would
        keep the same width merged (their note in ``notes``).

        Raises EvopruneError when the multiple leaves no width between the whole MLP and none.
        """
        n, m, asked = self.arch.intermediate_size, self.mlp_multiple, self.mlp_levels
        if m >= n and asked != 1:
            raise EvopruneError(
                f"--mlp-multiple {m} is not smaller than the MLP's {n} channels, so no MLP can be pruned in "
                f"width: use an --mlp-multiple below {n} (or --mlp-levels 1 to only remove whole MLPs)"
            )
        if asked == 0:
            # Every multiple of m below n: the finest grid (the one-shot baselines'). Equal to the
            # formula's grid whenever that one has no repeated width, so such runs read the same.
            return (n, *range(m * ((n - 1) // m), 0, -m), 0)
        if not 1 <= asked <= n:
            raise EvopruneError(
                f"MLP levels must be between 1 and {n} (or 0: one per --mlp-multiple channels), got {asked}"
            )
        raw = mlp_formula_widths(n, asked, m)
        merged = tuple(w for i, w in enumerate(raw) if i == 0 or w != raw[i - 1])  # non-increasing: repeats adjoin
        if len(merged) < len(raw):
            shown = ", ".join(map(str, merged))
            object.__setattr__(
                self,
                "_notes",
                (
                    f"--mlp-levels {asked} with --mlp-multiple {m} on {n} MLP channels keeps only {len(merged)} "
                    f"different widths ({shown}): levels that kept the same width were merged, so the MLP has "
                    f"{len(merged) - 1} levels",
                ),
            )
        return merged

    @property
    def notes(self) -> tuple[str, ...]:
        """What the space changed from what it was asked (levels merged), one sentence each."""
        return getattr(self, "_notes", ())

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
        return self.keys(self.validate(x)[None, :])[0]

    def keys(self, X: np.ndarray) -> list[str]:
        """``key`` of every row of ``X`` (n, n_var), validated as a whole: local moves hash tens
        of thousands of neighbours per round. Raises EvopruneError like ``validate``."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_var:
            raise EvopruneError(f"configurations must be an array of shape (n, {self.n_var}), got {X.shape}")
        rows = X.astype(int)
        if not np.array_equal(rows, X) or np.any((rows < self.lower) | (rows > self.upper)):
            for x in X:
                self.validate(x)  # raises, naming the first bad level
        rows = rows.astype(np.int16)
        return [hashlib.sha1(r.tobytes()).hexdigest()[:16] for r in rows]

    # -- widths -----------------------------------------------------------------------------
    def kept_attn_units(self, level: int) -> int:
        removed = int(round(level * self.attn_units / self.attn_levels))
        return self.attn_units - removed

    def kept_mlp_channels(self, level: int) -> int:
        return self.mlp_widths[min(int(level), self.mlp_levels)]

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
        # Compensation goes where units were removed (not where a level is above 0: a store
        # written before levels were merged may hold levels that remove nothing).
        pruned = self.kept_attn_units(level) < self.attn_units
        if self.compensation_bias and pruned and (params == 0 or not self.arch.o_bias):
            params += self.arch.hidden_size
        return params

    def mlp_level_params(self, level: int) -> int:
        """Parameters of one MLP sub-layer at ``level`` (compensation bias included)."""
        params = self.arch.mlp_params(self.kept_mlp_channels(level))
        pruned = self.kept_mlp_channels(level) < self.arch.intermediate_size
        if self.compensation_bias and pruned and (params == 0 or not self.arch.mlp_bias):
            params += self.arch.hidden_size
        return params

    def params(self, x) -> int:
        """Exact parameter count of the pruned model (the export's, compensation biases included)."""
        attn, mlp = self.split(x)
        return (
            self.arch.fixed_params()
            + sum(self.attn_level_params(a) for a in attn)
            + sum(self.mlp_level_params(m) for m in mlp)
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

    def canonical(self, x) -> np.ndarray:
        """``x`` with every level replaced by the lowest level of its sub-layer that keeps the
        same width: the same model, and level 0 wherever a sub-layer is untouched. The identity
        on spaces built now; it matters for spaces recorded before repeated widths were merged."""
        x = self.validate(x)
        L = self.num_layers
        attn = [self.attn_heads(lv) for lv in range(self.attn_levels + 1)]
        mlp = list(self.mlp_widths)
        out = x.copy()
        out[:L] = [attn.index(attn[lv]) for lv in x[:L]]
        out[L:] = [mlp.index(mlp[lv]) for lv in x[L:]]
        return out

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["frozen_layers"] = list(self.frozen_layers)
        if not self.compensation_bias:
            del d["compensation_bias"]  # spaces recorded before the field existed read the same
        # Recorded only where it is not what mlp_levels and mlp_multiple give (levels were
        # merged), so every other space, and its fingerprint, reads as before the field existed.
        if self.mlp_widths == mlp_formula_widths(self.arch.intermediate_size, self.mlp_levels, self.mlp_multiple):
            del d["mlp_widths"]
        else:
            d["mlp_widths"] = list(self.mlp_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchSpace:
        """The space a run or plan recorded, its levels meaning what they meant then.

        A record without ``mlp_widths`` has the widths ``mlp_levels`` and ``mlp_multiple`` give,
        repeated ones included (records written before repeated widths were merged), so its
        stored levels and configuration keys stay valid.
        """
        d = dict(d)
        arch = ArchSpec(**d.pop("arch"))
        d["frozen_layers"] = tuple(d.get("frozen_layers", ()))
        if "mlp_widths" in d:
            d["mlp_widths"] = tuple(d["mlp_widths"])
        elif d.get("mlp_levels", 8) >= 1:
            d["mlp_widths"] = mlp_formula_widths(
                arch.intermediate_size, d.get("mlp_levels", 8), d.get("mlp_multiple", 1)
            )
        return cls(arch=arch, **d)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def mlp_formula_widths(n: int, levels: int, multiple: int) -> tuple[int, ...]:
    """Kept channels of an ``n``-channel MLP at each of ``levels`` levels, as the grid has always
    been defined: an even share removed per level, rounded to ``multiple`` (at least one multiple,
    at most ``n``), none at the top level. Repeated widths are left in (``SearchSpace`` merges them)."""
    out = [n]
    for level in range(1, levels):
        kept = n * (1 - level / levels)
        out.append(int(min(n, max(multiple, multiple * round(kept / multiple)))))
    return (*out, 0)
