"""What a configuration costs: parameters, FLOPs per token, memory, and latency.

Parameters and FLOPs are exact functions of the widths. Memory is the weights at a dtype plus
the KV cache at a context length. Latency is predicted, as HAT and once-for-all do, from a
table of per-sub-layer timings measured once on the current device (every attention and MLP
width the space allows, plus the fixed embedding / LM-head part) and summed over layers;
``measure_model`` times a real model so prediction and measurement can be compared.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from evoprune.cache import cache_dir, mark_used
from evoprune.space import SearchSpace

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Cost:
    params: int
    params_fraction: float
    flops_per_token: int
    weight_bytes: int
    kv_cache_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes


class CostModel:
    def __init__(self, space: SearchSpace, dtype: str = "float32", context: int = 2048, batch: int = 1):
        self.space = space
        self.dtype_bytes = DTYPE_BYTES[dtype]
        self.context = context
        self.batch = batch

    def flops_per_token(self, x) -> int:
        """Forward FLOPs (2 per multiply-add) of one token attending to ``context`` tokens."""
        arch = self.space.arch
        linear = 0
        attention = 0
        for w in self.space.widths(x):
            if w.q_heads:
                d = arch.head_dim
                linear += arch.hidden_size * d * (2 * w.q_heads + 2 * w.kv_heads)
                attention += 2 * w.q_heads * d * self.context  # scores and weighted values
            n_in = 3 if arch.gated_mlp else 2
            linear += n_in * arch.hidden_size * w.mlp_channels
        lm_head = arch.vocab_size * (arch.embed_dim or arch.hidden_size)
        return 2 * (linear + attention + lm_head)

    def kv_cache_bytes(self, x) -> int:
        kv_heads = sum(w.kv_heads for w in self.space.widths(x))
        return 2 * kv_heads * self.space.arch.head_dim * self.context * self.batch * self.dtype_bytes

    def cost(self, x) -> Cost:
        params = self.space.params(x)
        return Cost(
            params=params,
            params_fraction=params / self.space.arch.dense_params(),
            flops_per_token=self.flops_per_token(x),
            weight_bytes=params * self.dtype_bytes,
            kv_cache_bytes=self.kv_cache_bytes(x),
        )


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@dataclass
class LatencyTable:
    """Milliseconds per sub-layer at every level, and for the fixed part, on one device."""

    attn_ms: list[float]
    mlp_ms: list[float]
    fixed_ms: float
    layer_overhead_ms: float
    seq_len: int
    batch: int
    device: str
    threads: int

    def predict_ms(self, space: SearchSpace, x) -> float:
        attn, mlp = space.split(x)
        overhead = self.layer_overhead_ms * len(attn)
        return self.fixed_ms + overhead + sum(self.attn_ms[a] for a in attn) + sum(self.mlp_ms[m] for m in mlp)

    @classmethod
    def measure(
        cls,
        config,
        space: SearchSpace,
        seq_len: int = 256,
        batch: int = 1,
        repeats: int = 15,
        dtype: str = "float32",
    ) -> LatencyTable:
        """Time real decoder layers of ``config``'s family at every width ``space`` allows (CPU),
        with weights and activations in ``dtype`` (the run's: bfloat16 matmuls run at another speed).

        One decoder layer is built per width (random weights of the real shapes) and timed with
        the family's own forward code, so norms, rotary embeddings and residual adds are counted.
        A layer with both sub-layers removed gives the per-layer overhead, which is subtracted
        from each sub-layer's time and added back once per layer.
        """
        from evoprune.backend.adapters import adapter_for
        from evoprune.backend.pruned_modeling import empty_attention, empty_mlp

        adapter = adapter_for(config)
        family = adapter.family
        model = _one_layer_model(config, dtype)
        base = family.layers(model)[0]
        hidden = torch.randn(batch, seq_len, config.hidden_size, generator=torch.Generator().manual_seed(0))
        hidden = hidden.to(getattr(torch, dtype))
        call = adapter.layer_caller(model, hidden)

        def layer_ms(attn_level: int | None, mlp_level: int | None) -> float:
            layer = copy.deepcopy(base)
            q, kv = space.attn_heads(attn_level) if attn_level is not None else (0, 0)
            channels = space.kept_mlp_channels(mlp_level) if mlp_level is not None else 0
            if q:
                family.set_attention(
                    layer, empty_attention(family.attention_linears(layer), space.arch.head_dim, q, kv), q, kv
                )
            else:
                family.remove_attention(layer, 0)
            if channels:
                family.set_mlp(layer, empty_mlp(family.mlp_linears(layer), channels), channels)
            else:
                family.remove_mlp(layer)
            return _median_ms(lambda: call(layer), repeats)

        empty = layer_ms(None, None)
        attn_ms = [max(layer_ms(a, None) - empty, 0.0) if space.attn_heads(a)[0] else 0.0
                   for a in range(space.attn_levels + 1)]  # fmt: skip
        mlp_ms = [max(layer_ms(None, m) - empty, 0.0) if space.kept_mlp_channels(m) else 0.0
                  for m in range(space.mlp_levels + 1)]  # fmt: skip
        family.remove_attention(base, 0)
        family.remove_mlp(base)
        ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))

        def whole():
            with torch.inference_mode():
                model(input_ids=ids.to(model.device), use_cache=False)

        fixed = max(_median_ms(whole, repeats) - empty, 0.0)
        return cls(attn_ms, mlp_ms, fixed, empty, seq_len, batch, "cpu", torch.get_num_threads())

    @classmethod
    def cached(
        cls, config, space: SearchSpace, seq_len: int = 256, batch: int = 1, dtype: str = "float32"
    ) -> LatencyTable:
        """The table for this space and dtype on this machine, measured on first use and kept in the cache."""
        key = [space.fingerprint(), seq_len, batch, torch.get_num_threads(), torch.__version__, 2]
        if dtype != "float32":  # float32 tables keep the key they always had
            key.append(dtype)
        key_src = json.dumps(key)
        path = cache_dir("latency") / f"{hashlib.sha1(key_src.encode()).hexdigest()[:20]}.json"
        if path.exists():
            mark_used(path)
            return cls(**json.loads(path.read_text()))
        table = cls.measure(config, space, seq_len, batch, dtype=dtype)
        path.write_text(json.dumps(asdict(table)))
        return table


def _one_layer_model(config, dtype: str = "float32"):
    """A dense one-layer model of ``config``'s family with random weights in ``dtype``, for timing."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    for attr in ("evoprune_layers", "auto_map", "quantization_config"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    cfg.num_hidden_layers = 1
    cfg.architectures = None
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype)).eval()


@dataclass(frozen=True)
class Measured:
    latency_ms: float
    latency_ms_iqr: tuple[float, float]
    weight_bytes: int
    params: int
    seq_len: int
    batch: int


def measure_model(model, seq_len: int = 256, batch: int = 1, repeats: int = 15) -> Measured:
    """Median forward latency of a real model on random tokens, and its weight memory."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(model.device)
    model.eval()

    def run():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
        if ids.is_cuda:  # kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize(ids.device)
        elif ids.device.type == "mps":
            torch.mps.synchronize()

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    q1, q3 = np.percentile(times, [25, 75])
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    return Measured(
        latency_ms=float(statistics.median(times)),
        latency_ms_iqr=(float(q1), float(q3)),
        weight_bytes=int(sum(p.numel() * p.element_size() for p in params)),
        params=int(sum(p.numel() for p in params)),
        seq_len=seq_len,
        batch=batch,
    )
