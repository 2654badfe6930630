"""Measure a real model (an export or any supported model) and compare with the cost model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from evoprune.cost import CostModel, LatencyTable, measure_model
from evoprune.export import PLAN_FILE, load_pruned
from evoprune.space import SearchSpace


def _load_any(spec: str):
    path = Path(spec)
    if (path / PLAN_FILE).is_file():
        model, _ = load_pruned(path)
        return model, json.loads((path / PLAN_FILE).read_text())
    from evoprune.backend.loading import load_config, load_model, resolve_model

    source = resolve_model(spec)
    load_config(source)
    return load_model(source).model, None


def measure(spec: str, seq_len: int = 256, batch: int = 1, repeats: int = 15) -> dict:
    """Measured latency and weight memory of ``spec``; for exports also the cost model's prediction."""
    model, plan = _load_any(spec)
    measured = measure_model(model, seq_len=seq_len, batch=batch, repeats=repeats)
    report = asdict(measured)
    if plan is not None:
        space = SearchSpace.from_dict(plan["space"])
        x = np.array(plan["levels"]["attn"] + plan["levels"]["mlp"])
        cost = CostModel(space, context=seq_len, batch=batch).cost(x)
        table = LatencyTable.cached(model.config, space, seq_len=seq_len, batch=batch)
        report["predicted"] = {
            "params": cost.params,
            "weight_bytes": cost.weight_bytes,
            "flops_per_token": cost.flops_per_token,
            "latency_ms": table.predict_ms(space, x),
            "dense_latency_ms": table.predict_ms(space, space.lower),
        }
    return report
