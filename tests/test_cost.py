"""The cost model: exact parameter, FLOP and memory counts; a latency table of the right shape."""

from __future__ import annotations

import json
import re

import numpy as np

from evoprune.backend.adapters import adapter_for
from evoprune.objectives.cost import CostModel, LatencyTable, measure_model
from evoprune.space import SearchSpace
from tests.conftest import build_tiny_model


def _space(family="llama"):
    model = build_tiny_model(family)
    return model, SearchSpace(adapter_for(model.config).arch_spec(model.config), mlp_levels=4)


def test_flops_and_memory_of_the_dense_model_by_hand():
    _, space = _space("llama")  # hidden 64, 4 q heads / 2 kv heads of 16, MLP 96, vocab 384, 4 layers
    cm = CostModel(space, dtype="bfloat16", context=100)
    per_layer_linear = 64 * 16 * (2 * 4 + 2 * 2) + 3 * 64 * 96
    per_layer_attention = 2 * 4 * 16 * 100
    expected = 2 * (4 * (per_layer_linear + per_layer_attention) + 384 * 64)
    cost = cm.cost(space.lower)
    assert cost.flops_per_token == expected
    assert cost.weight_bytes == 2 * space.params(space.lower)
    assert cost.kv_cache_bytes == 2 * (4 * 2) * 16 * 100 * 2
    assert cost.params_fraction == 1.0


def test_costs_fall_as_levels_rise():
    _, space = _space("qwen3")
    cm = CostModel(space)
    L = space.num_layers
    costs = [cm.cost(np.minimum(np.full(2 * L, level), space.upper)) for level in range(space.mlp_levels + 1)]
    for a, b in zip(costs, costs[1:], strict=False):
        assert b.params < a.params and b.flops_per_token < a.flops_per_token
        assert b.kv_cache_bytes <= a.kv_cache_bytes
    assert costs[-1].kv_cache_bytes == 0  # every attention removed


def test_latency_table_has_every_level_and_zero_for_removed_sub_layers():
    for family in ("llama", "opt"):
        model, space = _space(family)
        table = LatencyTable.measure(model.config, space, seq_len=32, repeats=3)
        assert len(table.attn_ms) == space.attn_levels + 1 and len(table.mlp_ms) == space.mlp_levels + 1
        assert table.attn_ms[-1] == 0.0 and table.mlp_ms[-1] == 0.0
        assert all(v >= 0 for v in table.attn_ms + table.mlp_ms) and table.fixed_ms > 0
        dense, removed = table.predict_ms(space, space.lower), table.predict_ms(space, space.upper)
        assert dense >= removed > 0


def test_measure_model_weighs_the_real_parameters():
    model, space = _space("llama")
    m = measure_model(model, seq_len=16, repeats=2)
    assert m.params == space.params(space.lower) == sum(p.numel() for p in model.parameters())
    assert m.weight_bytes == 4 * m.params and m.latency_ms > 0


def test_sizes_are_shown_to_three_digits_in_the_unit_that_fits():
    from evoprune.objectives.spec import parse_size, size_text

    # plan printed a 0.88 MB model as "memory 0 MB"
    assert [size_text(b) for b in (877_568, 999_999, 1.2e6, 123e6, 2.5e9, 512)] == [
        "878 kB", "1 MB", "1.2 MB", "123 MB", "2.5 GB", "512 B"
    ]  # fmt: skip
    assert parse_size(size_text(877_568).replace(" ", "")) == 878_000


def test_a_budget_is_written_as_the_options_that_would_state_it():
    from evoprune.objectives.budget import budget_text
    from evoprune.objectives.spec import Budget

    # a parameter count came out as "--max-params 9e+07", which reads as a different number
    assert budget_text(Budget(max_params=90e6, max_memory="400MB")) == "--max-params 90000000 --max-memory 400MB"
    assert budget_text(Budget(max_params=0.7, max_latency_ms=12.5)) == "--max-params 0.7 --max-latency-ms 12.5"
    assert budget_text(Budget(max_latency_ms=float("inf"))) == "--max-latency-ms inf"  # accepted by check()


def test_measure_shows_memory_in_the_units_plan_and_max_memory_use(tiny_model_dir):
    from tests.test_user_reports import evoprune_in_process

    # measure printed MiB to one decimal (a tiny model's "0.3 MiB"), plan and --max-memory MB
    result = evoprune_in_process("measure", "--model", str(tiny_model_dir), "--seq-len", "16", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if "weight memory" in line]
    assert "MiB" not in row and re.search(r"\d kB|\d MB", row), row
    # where it ran is an option, and the JSON says it (a newcomer could not time a GPU)
    result = evoprune_in_process(
        "measure", "--model", str(tiny_model_dir), "--seq-len", "16", "--repeats", "1", "--device", "cpu", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["device"] == "cpu"
