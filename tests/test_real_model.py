"""The real SmolLM2-135M (fetched once from PyPI): masks, export and reload agree exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evoprune.pruned.export import export_pruned
from tests.conftest import smollm2_mixed_config
from tests.test_export import load_in_fresh_process, masked_logits

pytestmark = pytest.mark.real_model


def test_smollm2_shape_and_dense_quality(smollm2):
    arch = smollm2.space.arch
    assert (arch.num_layers, arch.hidden_size, arch.num_heads, arch.num_kv_heads) == (30, 576, 9, 3)
    assert arch.dense_params() == 134_515_008 == sum(p.numel() for p in smollm2.loaded.model.parameters())
    dense = smollm2.evaluate(smollm2.space.lower)
    assert 5 < dense.metrics["ppl"] < 60 and dense.metrics["kl"] == pytest.approx(0, abs=1e-4)


def test_smollm2_export_reloads_in_plain_transformers_with_identical_logits(smollm2, tmp_path):
    space = smollm2.space
    x = smollm2_mixed_config(space)
    tokens = smollm2.eval_windows[:1]
    want = masked_logits(smollm2, x, tokens)
    result = export_pruned(smollm2, x, tmp_path / "export")
    got = load_in_fresh_process(tmp_path / "export", tokens, tmp_path)
    assert float(np.abs(got["logits"] - want.numpy()).max()) < 1e-4
    assert int(got["params"]) == result.params == space.params(x)
    assert 0.6 < result.params_fraction < 0.85
    # the pruned model still speaks: the masked perplexity is finite and worse than dense
    m = smollm2.evaluate(x)
    assert m.ok and m.metrics["ppl"] > smollm2.evaluate(space.lower).metrics["ppl"]
    assert torch.isfinite(want).all()
