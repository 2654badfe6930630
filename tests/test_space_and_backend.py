"""Encoding, exact parameter counts, and masked evaluation against physically pruned models."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from evoprune.backend.adapters import adapter_for
from evoprune.backend.compensation import compensate
from evoprune.backend.data import TextSource, token_windows
from evoprune.backend.evaluate import perplexity
from evoprune.backend.importance import compute_importance
from evoprune.backend.loading import LoadedModel, ModelSource, model_fingerprint
from evoprune.backend.masking import MaskedModel
from evoprune.backend.plan import resolve_plan
from evoprune.backend.pruner import PruningBackend
from evoprune.backend.settings import BackendSettings
from evoprune.backend.slicing import slice_model
from evoprune.errors import EvopruneError
from evoprune.space import SearchSpace
from tests.conftest import TINY_CONFIGS, build_tiny_model

FAMILIES = list(TINY_CONFIGS)


def _space(model, head_unit="query_head", mlp_levels=4, **kw) -> SearchSpace:
    arch = adapter_for(model.config).arch_spec(model.config)
    return SearchSpace(arch, head_unit=head_unit, mlp_levels=mlp_levels, **kw)


def _configs(space: SearchSpace, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    L = space.num_layers
    out = [space.lower.copy(), space.upper.copy()]
    # Every layer pruned in attention and MLP, one attention and one MLP removed entirely.
    x = np.concatenate([np.full(L, 1), np.full(L, 1)])
    x[0], x[L + 1] = space.attn_levels, space.mlp_levels
    out.append(np.minimum(x, space.upper))
    out += [rng.integers(space.lower, space.upper + 1) for _ in range(n)]
    return out


def test_dense_params_match_the_real_model():
    for family in FAMILIES:
        model = build_tiny_model(family)
        space = _space(model)
        assert space.params(space.lower) == sum(p.numel() for p in model.parameters()), family


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head_unit", ["query_head", "kv_group"])
def test_param_count_and_logits_match_a_physically_sliced_model(family, head_unit):
    model = build_tiny_model(family, seed=1)
    space = _space(model, head_unit=head_unit)
    adapter = adapter_for(model.config)
    tokens = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    importance, _ = compute_importance(model, adapter.layers(model), tokens, space.arch.head_dim, "magnitude")
    masked = MaskedModel(model, adapter, space.arch.num_heads, space.arch.head_dim)
    for x in _configs(space, 4, seed=2):
        plans = resolve_plan(space, x, importance)
        pruned = copy.deepcopy(model)
        masked.remove()  # hooks must not travel with the copy
        pruned = slice_model(pruned, adapter, plans, space.arch.head_dim)
        masked = MaskedModel(model, adapter, space.arch.num_heads, space.arch.head_dim)
        assert sum(p.numel() for p in pruned.parameters()) == space.params(x)
        masked.apply(plans)
        with torch.inference_mode():
            got = model(input_ids=tokens).logits
            want = pruned(input_ids=tokens).logits
        masked.reset()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # After reset the model is the dense one again.
    with torch.inference_mode():
        torch.testing.assert_close(
            model(input_ids=tokens).logits, build_tiny_model(family, seed=1)(input_ids=tokens).logits
        )


@pytest.mark.parametrize("method", ["bias", "refit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_compensation_masked_equals_sliced_to_the_last_bit(family, method):
    model = build_tiny_model(family, seed=4)
    space = _space(model, head_unit="query_head")
    adapter = adapter_for(model.config)
    tokens = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    importance, _ = compute_importance(
        model, adapter.layers(model), tokens, space.arch.head_dim, "flap", with_covariance=True
    )
    refitted = 0
    for x in _configs(space, 2, seed=5)[1:]:
        plans = resolve_plan(space, x, importance)
        biases = compensate(method, adapter.layers(model), plans, importance, space.arch.head_dim)
        refitted += sum(t is not None for b in biases for t in (b.o_weight, b.down_weight))
        pruned = slice_model(copy.deepcopy(model), adapter, plans, space.arch.head_dim, biases)
        extra = sum(model.config.hidden_size for b in biases for t in (b.o, b.down) if t is not None)
        assert space.params(x) < sum(p.numel() for p in pruned.parameters()) <= space.params(x) + extra
        masked = MaskedModel(model, adapter, space.arch.num_heads, space.arch.head_dim)
        masked.apply(plans, biases)
        with torch.inference_mode():
            got = model(input_ids=tokens).logits
            want = pruned(input_ids=tokens).logits
        masked.reset()
        assert torch.equal(got, want)
    # refit changed the kept weights of the sub-layers pruned but not removed
    assert (refitted > 0) == (method == "refit")


def test_levels_map_to_monotone_widths():
    model = build_tiny_model("llama")
    space = _space(model, mlp_levels=8, mlp_multiple=8)
    widths = [space.kept_mlp_channels(lv) for lv in range(space.mlp_levels + 1)]
    assert widths[0] == 96 and widths[-1] == 0
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    assert all(w % 8 == 0 for w in widths)
    heads = [space.attn_heads(lv) for lv in range(space.attn_levels + 1)]
    assert heads[0] == (4, 2) and heads[-1] == (0, 0)
    # query_head under GQA keeps every KV head until the last query head goes
    assert all(kv == 2 for q, kv in heads[:-1])


def test_params_matrix_equals_per_row_count():
    model = build_tiny_model("qwen2")
    space = _space(model)
    X = np.array(_configs(space, 20, seed=5))
    assert space.params_matrix(X).tolist() == [space.params(x) for x in X]


def test_keys_of_a_matrix_equal_per_row_keys_and_reject_bad_rows():
    space = _space(build_tiny_model("qwen2"))
    X = np.array(_configs(space, 20, seed=6))
    assert space.keys(X) == [space.key(x) for x in X]
    assert space.keys(X.astype(float)) == space.keys(X) and space.keys(X[:0]) == []
    X[3, space.num_layers + 1] = space.mlp_levels + 1
    with pytest.raises(EvopruneError, match="MLP of layer 1 is outside the space"):
        space.keys(X)
    with pytest.raises(EvopruneError, match="shape"):
        space.keys(X[:, :3])


def test_invalid_levels_are_rejected_with_a_clear_message():
    space = _space(build_tiny_model("llama"))
    x = space.lower.copy()
    x[space.num_layers + 2] = space.mlp_levels + 1
    with pytest.raises(EvopruneError, match="MLP of layer 2 is outside the space"):
        space.params(x)
    with pytest.raises(EvopruneError, match="needs 8 levels"):
        space.params([0, 1])


def test_search_space_round_trips_through_a_dict():
    space = _space(build_tiny_model("qwen3"), head_unit="kv_group", frozen_layers=(0,))
    again = SearchSpace.from_dict(space.to_dict())
    assert again == space and again.fingerprint() == space.fingerprint()
    assert space.upper[0] == 0 and space.upper[space.num_layers] == 0


@pytest.mark.parametrize(
    "criterion, compensation",
    [(c, "none") for c in ("magnitude", "wanda", "wanda-sp", "flap", "taylor")]
    + [("wanda", "bias"), ("taylor", "bias"), ("flap", "refit"), ("taylor", "refit"), ("obs", "refit")],
)
def test_backend_masked_perplexity_equals_the_sliced_model(criterion, compensation, tiny_tokenizer, text_file):
    model = build_tiny_model("llama", seed=3)
    loaded = LoadedModel(ModelSource("tiny", "dir", "tiny"), model, tiny_tokenizer, model_fingerprint(model))
    text = TextSource(str(text_file), text_file.read_text())
    settings = BackendSettings(
        criterion=criterion, compensation=compensation, eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4
    )
    backend = PruningBackend(loaded, text, settings)
    x = _configs(backend.space, 0, seed=0)[2]
    masked = backend.evaluate(x)
    assert masked.ok and np.isfinite(masked.metrics["ppl"])
    pruned = backend.sliced_copy(x)
    assert perplexity(pruned, backend.eval_windows) == pytest.approx(masked.metrics["ppl"], rel=1e-5)
    if compensation != "none":  # the biases are there, and masked evaluation used the same tensors
        assert any(m.bias is not None for m in pruned.modules() if hasattr(m, "bias") and not hasattr(m, "weight"))
    dense = backend.evaluate(backend.space.lower)
    assert dense.metrics["ppl"] == pytest.approx(perplexity(model, backend.eval_windows), rel=1e-6)


def test_token_windows_skip_and_shape(tiny_tokenizer, text_file):
    text = text_file.read_text()
    a = token_windows(tiny_tokenizer, text, 256, 64)
    b = token_windows(tiny_tokenizer, text, 256, 64, skip_tokens=256)
    assert a.shape == b.shape == (4, 64)
    assert not torch.equal(a, b)
    with pytest.raises(EvopruneError, match="only"):
        token_windows(tiny_tokenizer, text[:500], 10_000, 64)


def test_kl_is_exact_with_the_full_vocabulary_and_a_lower_bound_with_top_k(tiny_tokenizer, text_file):
    import torch.nn.functional as F

    from evoprune.backend.evaluate import dense_reference, quality

    dense = build_tiny_model("llama", seed=11)
    pruned_model = build_tiny_model("llama", seed=11)
    adapter = adapter_for(pruned_model.config)
    space = _space(pruned_model)
    importance, _ = compute_importance(
        pruned_model, adapter.layers(pruned_model), torch.randint(0, 384, (1, 32)), 16, "magnitude"
    )
    x = _configs(space, 0, seed=0)[2]
    pruned_model = slice_model(pruned_model, adapter, resolve_plan(space, x, importance), 16)
    windows = token_windows(tiny_tokenizer, text_file.read_text(), 128, 64)
    with torch.inference_mode():
        p = F.log_softmax(dense(input_ids=windows).logits[:, :-1].float(), -1)
        q = F.log_softmax(pruned_model(input_ids=windows).logits[:, :-1].float(), -1)
    exact = float((p.exp() * (p - q)).sum(-1).mean())
    full = quality(pruned_model, windows, dense_reference(dense, windows, k=384))
    top = quality(pruned_model, windows, dense_reference(dense, windows, k=8))
    itself = quality(dense, windows, dense_reference(dense, windows, k=8))
    assert full["kl"] == pytest.approx(exact, rel=1e-4)
    assert 0 < top["kl"] <= exact + 1e-6
    assert itself["kl"] == pytest.approx(0, abs=1e-5)
    assert full["ppl"] == pytest.approx(float(torch.exp(-q.gather(-1, windows[:, 1:, None]).mean())), rel=1e-5)


def test_window_nll_is_the_per_window_loss_quality_averages(tiny_tokenizer, text_file):
    import torch.nn.functional as F

    from evoprune.backend.evaluate import quality, window_nll

    model = build_tiny_model("llama", seed=4)
    windows = token_windows(tiny_tokenizer, text_file.read_text(), 320, 64)  # 5 windows: batches of 4 and 1
    per_window = window_nll(model, windows)
    with torch.inference_mode():
        logp = F.log_softmax(model(input_ids=windows).logits[:, :-1].float(), -1)
    expected = -logp.gather(-1, windows[:, 1:, None])[..., 0].double().mean(1)
    assert per_window.shape == (5,) and per_window.dtype == torch.float64
    torch.testing.assert_close(per_window, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(window_nll(model, windows, batch_size=1), per_window, rtol=1e-5, atol=1e-6)
    q = quality(model, windows)
    assert q["nll"] == pytest.approx(float(per_window.mean()), rel=1e-12)
    assert q["nll_se"] == pytest.approx(float(per_window.std() / 5**0.5), rel=1e-9)


def test_importance_is_computed_once_per_model_data_and_criterion(tiny_tokenizer, text_file, monkeypatch):
    from evoprune.backend import importance as importance_module

    calls = []
    original = importance_module.CRITERIA["wanda"]
    monkeypatch.setitem(importance_module.CRITERIA, "wanda", lambda *a: calls.append(1) or original(*a))
    model = build_tiny_model("llama", seed=5)
    text = TextSource(str(text_file), text_file.read_text())
    settings = BackendSettings(criterion="wanda", eval_tokens=128, calib_tokens=128, seq_len=64)

    def backend(m):
        return PruningBackend(
            LoadedModel(ModelSource("t", "dir", "t"), m, tiny_tokenizer, model_fingerprint(m)), text, settings
        )

    first = backend(model)
    first.score()
    second = backend(build_tiny_model("llama", seed=5))  # same weights, new process-like object
    second.score()
    assert calls == [1] and not first.importance_cached and second.importance_cached
    np.testing.assert_array_equal(first.importance.mlp, second.importance.mlp)
    other = backend(build_tiny_model("llama", seed=6))  # other weights: scored again
    other.score()
    assert calls == [1, 1] and not other.importance_cached


def test_a_bfloat16_backend_evaluates_masks_exactly_as_its_sliced_copy(tiny_model_dir, text_file):
    from evoprune.backend.pruner import load_backend

    settings = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)
    full = load_backend(str(tiny_model_dir), str(text_file), settings)
    half = load_backend(str(tiny_model_dir), str(text_file), replace(settings, dtype="bfloat16"))
    assert next(half.loaded.model.parameters()).dtype == torch.bfloat16
    x = _configs(half.space, 0, seed=1)[2]
    masked = half.evaluate(x)
    assert masked.ok and masked.metrics["ppl"] == perplexity(half.sliced_copy(x), half.eval_windows)
    # bfloat16 keeps about 3 significant digits: close to float32, not equal
    assert masked.metrics["ppl"] == pytest.approx(full.evaluate(x).metrics["ppl"], rel=0.05)
    assert settings.identity() != replace(settings, dtype="bfloat16").identity()
    assert settings.identity() == replace(settings, device="cuda:1").identity()  # a run may move to a GPU


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device cuda"),
        (["--device", "tpu"], "is not a device: use cpu, cuda, cuda:N or mps"),
        (["--dtype", "int8"], "--dtype 'int8' is unknown: use one of float32, bfloat16, float16"),
    ],
)
def test_an_unusable_device_or_dtype_is_one_line_before_loading(tmp_path, tiny_model_dir, text_file, option, message):
    from typer.testing import CliRunner

    from evoprune.cli import app

    store = tmp_path / "s.db"
    result = CliRunner().invoke(
        app, ["search", "-m", str(tiny_model_dir), "-d", str(text_file), "-s", str(store), "-n", "2", *option]
    )
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not store.exists()


def test_one_window_gives_standard_errors_from_its_tokens(tiny_tokenizer, text_file):
    from evoprune.backend.evaluate import dense_reference, quality

    dense, pruned = build_tiny_model("llama", seed=4), build_tiny_model("llama", seed=6)
    window = token_windows(tiny_tokenizer, text_file.read_text(), 64, 64)[:1]  # one window
    q = quality(pruned, window, dense_reference(dense, window, k=8))
    # with one window the spread of its token losses is all there is: never a standard error of 0
    assert q["nll_se"] > 0 and q["kl_se"] > 0 and q["kl_se"] < q["kl"]
