"""Measure a real model (an export or any supported model) and compare with the cost model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from evoprune.errors import EvopruneError
from evoprune.objectives.cost import CostModel, LatencyTable, measure_model
from evoprune.pruned.allocation import PLAN_FILE
from evoprune.pruned.export import load_pruned
from evoprune.space import SearchSpace


def _load_any(spec: str, dtype: str | None):
    path = Path(spec)
    if (path / PLAN_FILE).is_file():
        model, _ = load_pruned(path, dtype)  # None: the export's own dtype
        return model, json.loads((path / PLAN_FILE).read_text())
    from evoprune.backend.loading import load_config, load_model, resolve_model

    source = resolve_model(spec)
    load_config(source)
    return load_model(source, getattr(torch, dtype or "float32"), tokenizer=False).model, None


def measure(
    spec: str, seq_len: int = 256, batch: int = 1, repeats: int = 15, dtype: str | None = None, device: str = "cpu"
) -> dict:
    """Measured latency (ms, median of ``repeats`` forward passes of ``batch`` x ``seq_len``
    tokens) and weight memory (bytes) of ``spec`` on ``device``; for exports also the cost
    model's prediction (its latency only on the CPU, where its latency table is measured).

    ``dtype`` (float32, bfloat16, float16) defaults to the export's own, else float32; the
    prediction counts the bytes of the dtype measured. Raises EvopruneError for an unknown dtype,
    a device this torch cannot use, or a ``seq_len`` beyond the model's context.
    """
    from evoprune.backend.loading import require_context
    from evoprune.backend.settings import DTYPES, check_device

    if dtype is not None and dtype not in DTYPES:
        raise EvopruneError(f"--dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    check_device(device)
    model, plan = _load_any(spec, dtype)
    require_context(model.config, seq_len)
    model.to(device)
    measured = measure_model(model, seq_len=seq_len, batch=batch, repeats=repeats)
    report = asdict(measured) | {"device": device}
    if plan is not None:
        space = SearchSpace.from_dict(plan["space"])
        x = np.array(plan["levels"]["attn"] + plan["levels"]["mlp"])
        measured_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        cost = CostModel(space, dtype=measured_dtype, context=seq_len, batch=batch).cost(x)
        # The latency table times layers on the CPU: elsewhere it would be built for nothing.
        table = None
        if torch.device(device).type == "cpu":
            table = LatencyTable.cached(model.config, space, seq_len=seq_len, batch=batch, dtype=measured_dtype)
        report["predicted"] = {
            "params": cost.params,
            "weight_bytes": cost.weight_bytes,
            "flops_per_token": cost.flops_per_token,
            "flops_context_tokens": seq_len,  # FLOPs of a token attending to the seq_len measured
            "latency_ms": table.predict_ms(space, x) if table else None,
            "dense_latency_ms": table.predict_ms(space, space.lower) if table else None,
        }
    return report
