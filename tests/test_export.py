"""Exports load in plain transformers and reproduce the masked model exactly."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evoprune.backend.data import TextSource
from evoprune.backend.loading import LoadedModel, ModelSource, model_fingerprint
from evoprune.backend.pruner import PruningBackend
from evoprune.backend.settings import BackendSettings
from evoprune.errors import EvopruneError
from evoprune.pruned.export import export_pruned, load_pruned
from tests.conftest import TINY_CONFIGS, build_tiny_model

STANDALONE = Path(__file__).with_name("standalone_load.py")


def _backend(family: str, tokenizer, text_file, compensation: str = "none") -> PruningBackend:
    model = build_tiny_model(family, seed=7)
    loaded = LoadedModel(ModelSource(f"tiny-{family}", "dir", "tiny"), model, tokenizer, model_fingerprint(model))
    settings = BackendSettings(eval_tokens=128, calib_tokens=128, seq_len=64, mlp_levels=4, compensation=compensation)
    return PruningBackend(loaded, TextSource(str(text_file), text_file.read_text()), settings)


def prune_everywhere(space) -> np.ndarray:
    """Attention and MLP pruned in every layer; layer 0's attention and layer 1's MLP removed."""
    L = space.num_layers
    x = np.concatenate([np.full(L, 1), np.full(L, 1)])
    x[0], x[L + 1] = space.attn_levels, space.mlp_levels
    return space.validate(x)


def masked_logits(backend: PruningBackend, x, tokens) -> torch.Tensor:
    masks = backend._masks()
    plans = backend.plan(x)
    masks.apply(plans, backend.compensation(plans))
    try:
        with torch.inference_mode():
            return backend.loaded.model(input_ids=tokens).logits
    finally:
        masks.reset()


def load_in_fresh_process(export_dir: Path, tokens: torch.Tensor, tmp_path: Path) -> dict:
    return load_in_one_fresh_process([(export_dir, tokens, tmp_path)])[0]


def load_in_one_fresh_process(cases: list[tuple[Path, torch.Tensor, Path]]) -> list[dict]:
    """Load each ``(export_dir, tokens, scratch_dir)`` with plain transformers in one new interpreter,
    where evoprune cannot be imported; each case's logits, parameter count and greedy generation."""
    args = []
    for export_dir, tokens, scratch in cases:
        np.save(scratch / "tokens.npy", tokens.numpy())
        args += [str(export_dir), str(scratch / "tokens.npy"), str(scratch / "standalone.npz")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(STANDALONE), *args],
        capture_output=True,
        text=True,
        cwd=cases[0][2],  # the repository must not be importable from here
        env=env,
        timeout=300 * len(cases),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [dict(np.load(scratch / "standalone.npz")) for _, _, scratch in cases]


EXPORT_CASES = [(f, c) for f in TINY_CONFIGS for c in ("none", "bias")] + [("llama", "refit"), ("opt", "refit")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tokenizer, text_file) -> dict:
    """Every case of ``EXPORT_CASES`` pruned, masked and exported, then loaded in one fresh process
    (an interpreter start per case cost seconds each)."""
    root = tmp_path_factory.mktemp("exports")
    cases = {}
    for family, compensation in EXPORT_CASES:
        backend = _backend(family, tiny_tokenizer, text_file, compensation)
        x = prune_everywhere(backend.space)
        tokens = backend.eval_windows[:2, :48]
        scratch = root / f"{family}-{compensation}"
        scratch.mkdir()
        export_dir = scratch / f"export-{family}-{compensation}"  # distinct names: see standalone_load.py
        want = masked_logits(backend, x, tokens)
        result = export_pruned(backend, x, export_dir)
        cases[family, compensation] = dict(
            backend=backend, x=x, tokens=tokens, want=want, result=result, export_dir=export_dir, scratch=scratch
        )
    loaded = load_in_one_fresh_process([(c["export_dir"], c["tokens"], c["scratch"]) for c in cases.values()])
    for case, got in zip(cases.values(), loaded, strict=True):
        case["got"] = got
    return cases


@pytest.mark.parametrize("family, compensation", EXPORT_CASES)
def test_export_loads_in_plain_transformers_and_matches_the_masked_model(family, compensation, exports):
    case = exports[family, compensation]
    backend, x, tokens, want, result, got = (case[k] for k in ("backend", "x", "tokens", "want", "result", "got"))
    assert (case["export_dir"] / "model.safetensors").exists()
    assert np.abs(got["logits"] - want.numpy()).max() < 1e-4
    assert int(got["params"]) == result.params
    # The cost model counts exactly what the export holds, compensation biases included.
    assert result.params == backend.space.params(x) == sum(p.numel() for p in backend.sliced_copy(x).parameters())
    if compensation != "none":  # every pruned sub-layer got a compensation bias, recorded per layer in the config
        assert all(spec["o_bias"] and spec["down_bias"] for spec in result.layers)
        arch = backend.space.arch
        plain = dataclasses.replace(backend.space, compensation_bias=False).params(x)
        # a new bias where a pruned sub-layer had none, a constant where one was removed (1 of each here)
        new = (1 if arch.o_bias else arch.num_layers) + (1 if arch.mlp_bias else arch.num_layers)
        assert backend.space.params(x) - plain == new * arch.hidden_size
    assert got["generated"].shape == (1, 14)

    model, _ = load_pruned(case["export_dir"])
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=tokens).logits, want, atol=1e-4, rtol=0)
        if compensation != "none":
            assert torch.equal(model(input_ids=tokens).logits, want)


def test_generate_with_cache_equals_greedy_without_cache(tiny_tokenizer, text_file, tmp_path):
    backend = _backend("llama", tiny_tokenizer, text_file)
    export_pruned(backend, prune_everywhere(backend.space), tmp_path / "export")
    model, _ = load_pruned(tmp_path / "export")
    prompt = backend.eval_windows[:1, :10]
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    tokens = prompt
    for _ in range(8):
        with torch.inference_mode():
            tokens = torch.cat([tokens, model(input_ids=tokens).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_export_refuses_a_non_empty_target_unless_forced(tiny_tokenizer, text_file, tmp_path):
    backend = _backend("llama", tiny_tokenizer, text_file)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    x = prune_everywhere(backend.space)
    with pytest.raises(EvopruneError, match="exists and is not empty"):
        export_pruned(backend, x, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    export_pruned(backend, x, target, force=True)
    assert (target / "model.safetensors").exists()


def test_export_rejects_levels_outside_the_space(tiny_tokenizer, text_file, tmp_path):
    backend = _backend("qwen2", tiny_tokenizer, text_file)
    x = backend.space.lower.copy()
    x[3] = backend.space.attn_levels + 2
    with pytest.raises(EvopruneError, match="attention of layer 3 is outside the space"):
        export_pruned(backend, x, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_or_foreign_exports_get_a_clear_error(tiny_tokenizer, text_file, tmp_path):
    backend = _backend("llama", tiny_tokenizer, text_file)
    export_pruned(backend, prune_everywhere(backend.space), tmp_path / "export")
    weights = tmp_path / "export" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EvopruneError, match="corrupt or incomplete"):
        load_pruned(tmp_path / "export")
    with pytest.raises(EvopruneError, match="has no config.json"):
        load_pruned(tmp_path)
