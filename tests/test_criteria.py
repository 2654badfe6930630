"""Importance criteria on hand-made cases, and compensation (bias, least-squares re-fit) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evoprune.backend.activation_stats import ActivationStats
from evoprune.backend.adapters import LayerParts, adapter_for
from evoprune.backend.compensation import RefitMemo, bias_compensation, compensate, refit_compensation, refit_linear
from evoprune.backend.data import TextSource
from evoprune.backend.importance import CRITERIA, compute_importance
from evoprune.backend.loading import LoadedModel, ModelSource, model_fingerprint
from evoprune.backend.pruner import PruningBackend
from evoprune.backend.settings import BackendSettings
from evoprune.errors import EvopruneError
from tests.conftest import build_tiny_model


def _linear(weight) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float32)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def _hand_made_layer():
    """One layer with hidden 2, two heads of head_dim 2 (o: 2 x 4) and 3 MLP channels (down: 2 x 3)."""
    o = _linear([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 0.5, -1.0]])
    down = _linear([[1.0, 0.5, -1.0], [-2.0, 0.5, 0.0]])
    q, k, v = _linear(np.ones((4, 2))), _linear(np.ones((2, 2))), _linear(np.ones((2, 2)))
    up, gate = _linear(np.ones((3, 2))), _linear(np.ones((3, 2)))
    parts = LayerParts(0, nn.Module(), q, k, v, o, up, gate, down)
    stats = ActivationStats([parts])
    handles = stats.attach()
    # Four calibration tokens. Input feature columns of down: norms 2, 4, 3; variances 1, 0, 1.6875.
    x_down = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [-1.0, 2.0, 0.0]])
    # Input features of o: [1,1,1,1] (norm 2, var 0), [2,0,0,0] (2, .75), [0,0,0,0], [1,-1,1,-1] (2, 1).
    x_o = torch.tensor([[1.0, 2.0, 0.0, 1.0], [1.0, 0.0, 0.0, -1.0], [1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, -1.0]])
    for module, x in ((down, x_down), (o, x_o), (q, torch.zeros(4, 2)), (up, torch.zeros(4, 2))):
        module(x)
    for h in handles:
        h.remove()
    return parts, stats


def test_wanda_sp_is_input_norm_times_column_l1_norm():
    parts, stats = _hand_made_layer()
    scores = CRITERIA["wanda-sp"](None, [parts], None, 2, stats)
    # down columns' L1 norms 3, 1, 1 times input norms 2, 4, 3.
    np.testing.assert_allclose(scores.mlp[0], [6.0, 4.0, 3.0])
    # o columns' L1 norms 1, 3, 1, 1 times input norms 2, 2, 0, 2; heads sum features (0, 1) and (2, 3).
    np.testing.assert_allclose(scores.attn[0], [1 * 2 + 3 * 2, 0 + 1 * 2])


def test_flap_is_input_variance_times_squared_column_norm():
    parts, stats = _hand_made_layer()
    scores = CRITERIA["flap"](None, [parts], None, 2, stats)
    # down columns' squared L2 norms 5, 0.5, 1 times variances 1, 0, 1.6875.
    np.testing.assert_allclose(scores.mlp[0], [5.0, 0.0, 1.6875])
    # o columns' squared norms 1, 5, 0.5, 1 times variances 0, 0.75, 0, 1.
    np.testing.assert_allclose(scores.attn[0], [5 * 0.75, 1.0])
    np.testing.assert_allclose(stats.mean(0, "down_in").numpy(), [0.0, 2.0, 0.75])


def test_taylor_sums_weight_times_gradient_over_each_coupled_group():
    model = build_tiny_model("llama", seed=5, num_layers=2)
    adapter = adapter_for(model.config)
    layers = adapter.layers(model)
    windows = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    scores, _ = compute_importance(model, layers, windows, 16, "taylor")
    # The definition, by hand: gradient of the mean loss over the windows.
    model.zero_grad()
    for row in windows:
        (model(input_ids=row[None], labels=row[None]).loss / len(windows)).backward()
    p = layers[1]

    def s(m):
        return (m.weight * m.weight.grad).abs().detach().double()

    # Query heads 0 and 1 share KV head 0 (4 heads, 2 KV heads, head_dim 16).
    group = s(p.q)[:32].sum() + s(p.o)[:, :32].sum() + s(p.k)[:16].sum() + s(p.v)[:16].sum()
    assert scores.attn[1, :2].sum() == pytest.approx(float(group), rel=1e-6)
    channel = s(p.gate)[7].sum() + s(p.up)[7].sum() + s(p.down)[:, 7].sum()
    assert scores.mlp[1, 7] == pytest.approx(float(channel), rel=1e-6)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("unit_size", [1, 3])
def test_obs_order_is_greedy_and_each_score_is_the_refit_error_its_removal_adds(unit_size):
    from evoprune.backend.greedy_obs import DAMPING, greedy_obs_scores

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, dtype=torch.float64, generator=g) @ torch.randn(12, 12, dtype=torch.float64, generator=g)
    w = torch.randn(5, 12, dtype=torch.float64, generator=g)
    cov = torch.cov(x.T, correction=0)
    scores = greedy_obs_scores(w, cov, unit_size, block=1)
    hinv = torch.linalg.inv(cov + DAMPING * cov.diagonal().mean() * torch.eye(12, dtype=torch.float64))
    n = 12 // unit_size

    def error(units) -> float:
        """Squared output error after removing ``units`` and re-fitting the rest (least squares, dampened)."""
        if not units:
            return 0.0
        r = torch.tensor([u * unit_size + j for u in units for j in range(unit_size)])
        return float(torch.trace(w[:, r] @ torch.linalg.inv(hinv[r][:, r]) @ w[:, r].T))

    order = list(np.argsort(scores))
    assert len(set(scores)) == n and sorted(order) == list(range(n))
    added = [error(order[:k]) - error(order[: k - 1]) for k in range(1, n + 1)]
    for k in range(1, n):
        # the error its removal adds, raised to the running maximum so the order is the ranking
        assert scores[order[k - 1]] == pytest.approx(max(added[:k]), rel=1e-8)
        # each step removes the unit that raises the error least
        best = min(error(order[: k - 1] + [u]) for u in order[k - 1 :])
        assert error(order[:k]) == pytest.approx(best, rel=1e-8)
    # batched removal (SlimGPT) takes a block per step; the ranking stays a strict order
    assert len(set(greedy_obs_scores(w, cov, unit_size, block=2))) == n
    # a broken unit is removed first and leaves the others' scores finite
    w[:, unit_size : 2 * unit_size] = float("nan")
    broken = greedy_obs_scores(w, cov, unit_size, block=1)
    assert np.isfinite(broken).all() and np.argmin(broken) == 1
    # errors that overflow (inf, then NaN through the updates) still give a finite strict order
    huge = w.nan_to_num(0.0)
    huge[:, :unit_size] = 1e200
    huge[0, -1] = -1e200
    overflowed = greedy_obs_scores(huge, cov, unit_size, block=1)
    assert np.isfinite(overflowed).all() and len(set(overflowed)) == n
    # a covariance too indefinite for the dampened Cholesky still gives an order (more damping)
    assert len(set(greedy_obs_scores(w, cov - 2 * cov.diagonal().mean() * torch.eye(12, dtype=torch.float64),
                                     unit_size))) == n  # fmt: skip


def test_an_unknown_criterion_or_compensation_is_one_clear_line():
    with pytest.raises(EvopruneError, match="wanda-sp"):
        BackendSettings(criterion="wandasp").validate()
    with pytest.raises(EvopruneError, match="--compensation 'mean' is unknown: use one of none, bias, refit"):
        BackendSettings(compensation="mean").validate()
    with pytest.raises(EvopruneError, match="unknown"):
        compensate("lsq2", [], [], None, 16)


def test_compensation_none_keeps_the_run_identity_of_older_stores():
    assert "compensation" not in BackendSettings(compensation="none").identity()
    assert BackendSettings(compensation="bias").identity()["compensation"] == "bias"
    assert BackendSettings().identity()["compensation"] == "refit"  # the default since it won on held-out text


def _backend(family: str, tokenizer, text_file, compensation: str, criterion: str = "wanda") -> PruningBackend:
    model = build_tiny_model(family, seed=11)
    loaded = LoadedModel(ModelSource(f"tiny-{family}", "dir", "tiny"), model, tokenizer, model_fingerprint(model))
    settings = BackendSettings(
        criterion=criterion, compensation=compensation, eval_tokens=128, calib_tokens=256, seq_len=64, mlp_levels=4
    )
    return PruningBackend(loaded, TextSource(str(text_file), text_file.read_text()), settings)


def _layer_output_error(backend: PruningBackend, x, layer: int) -> float:
    """Mean squared error of one decoder layer's output against the dense model, on calibration tokens."""
    parts = backend.adapter.layers(backend.loaded.model)[layer]
    outputs = []
    handle = parts.layer.register_forward_hook(
        lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.inference_mode():
            backend.loaded.model(input_ids=backend.calib_windows)
            dense = outputs.pop()
            masks = backend._masks()
            masks.apply(backend.plan(x), backend.compensation(backend.plan(x)))
            try:
                backend.loaded.model(input_ids=backend.calib_windows)
            finally:
                masks.reset()
    finally:
        handle.remove()
    return float((outputs.pop() - dense).pow(2).mean())


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("what", ["attn", "mlp"])
@pytest.mark.parametrize("level", ["half", "all"])
def test_bias_compensation_lowers_the_calibration_error_of_a_pruned_layer(
    family, what, level, tiny_tokenizer, text_file
):
    errors = {}
    for compensation in ("none", "bias", "refit"):
        backend = _backend(family, tiny_tokenizer, text_file, compensation)
        space = backend.space
        x = space.lower.copy()
        top = space.attn_levels if what == "attn" else space.mlp_levels
        x[(0 if what == "attn" else space.num_layers) + 2] = top if level == "all" else top // 2
        errors[compensation] = _layer_output_error(backend, space.validate(x), layer=2)
    assert 0 < errors["bias"] < errors["none"], errors
    if level == "all":  # nothing left to re-fit: both give the same constant
        assert errors["refit"] == errors["bias"], errors
    else:
        assert errors["refit"] < errors["bias"], errors


def test_refit_is_the_least_squares_solution_and_exact_where_removed_features_are_redundant():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    x = torch.cat([x, (x[:, :1] - 2 * x[:, 1:2] + 0.5)], dim=1)  # feature 4 = x0 - 2 x1 + 0.5
    w, b = torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    mean, cov = x.mean(0), torch.cov(x.T, correction=0)
    kept = torch.tensor([0, 1, 2, 3])
    new_w, new_b = refit_linear(w, b, kept, mean, cov, damping=0.0)
    torch.testing.assert_close(x[:, kept] @ new_w.T + new_b, x @ w.T + b)
    # Removing a feature that is not redundant: the closed form equals numpy's least squares.
    kept = torch.tensor([0, 2, 4])
    new_w, new_b = refit_linear(w, b, kept, mean, cov, damping=0.0)
    design = np.c_[x[:, kept].numpy(), np.ones(len(x))]
    solution = np.linalg.lstsq(design, (x @ w.T + b).numpy(), rcond=None)[0]
    np.testing.assert_allclose(new_w.numpy(), solution[:-1].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new_b.numpy(), solution[-1], rtol=1e-8, atol=1e-10)
    # Singular normal equations (a constant kept feature, no dampening) fall back: None.
    assert refit_linear(w, b, kept, mean, torch.zeros(5, 5, dtype=torch.float64), damping=0.0) is None


def test_refit_memo_solves_each_layer_once_and_stays_within_its_bytes(tiny_tokenizer, text_file):
    backend = _backend("llama", tiny_tokenizer, text_file, "refit")
    layers = backend.adapter.layers(backend.loaded.model)
    space = backend.space
    x = space.lower.copy()
    x[space.num_layers :] = space.mlp_levels // 2
    plans = backend.plan(x)
    memo = RefitMemo()
    first = refit_compensation(layers, plans, backend.score(), space.arch.head_dim, memo)
    again = refit_compensation(layers, plans, backend.score(), space.arch.head_dim, memo)
    assert all(a.down_weight is b.down_weight for a, b in zip(first, again, strict=True))
    small = RefitMemo(max_bytes=1)
    refit_compensation(layers, plans, backend.score(), space.arch.head_dim, small)
    assert len(small._items) == 1  # only the newest entry is kept over budget


def test_refit_needs_the_calibration_covariances(tiny_tokenizer, text_file):
    backend = _backend("llama", tiny_tokenizer, text_file, "bias")
    plans = backend.plan(backend.space.upper)
    with pytest.raises(EvopruneError, match="covariances"):
        refit_compensation(backend.adapter.layers(backend.loaded.model), plans, backend.score(), 16)


def test_a_process_waiting_on_the_cache_lock_reads_what_the_holder_wrote(tiny_tokenizer, text_file, tmp_path):
    """Searches started together compute the scores once: a second caller waits for the first's lock,
    then reads its cache entry instead of scoring again."""
    import threading

    from filelock import FileLock
    from safetensors.numpy import save_file

    from evoprune.backend.importance_cache import importance_cache_file

    backend = _backend("llama", tiny_tokenizer, text_file, "none")
    model, layers, windows = backend.loaded.model, backend.adapter.layers(backend.loaded.model), backend.calib_windows
    key = f"{tmp_path.name}-locked"
    path = importance_cache_file(key)
    fresh, _ = compute_importance(model, layers, windows, 16, "wanda-sp")  # no cache key: no lock, no file
    result = {}
    with FileLock(str(path.with_name(f"{path.name}.lock"))):  # another process is scoring
        waiter = threading.Thread(
            target=lambda: result.update(out=compute_importance(model, layers, windows, 16, "wanda-sp", cache_key=key))
        )
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive(), "the second caller scored without waiting for the lock"
        # What "the other process" writes: marked (+1) so that reading it is told apart from scoring.
        save_file({"attn": fresh.attn + 1, "mlp": fresh.mlp + 1}, str(path))
    waiter.join(timeout=60)
    scores, cached = result["out"]
    assert cached
    np.testing.assert_array_equal(scores.mlp, fresh.mlp + 1)


def test_covariances_are_cached_apart_from_the_scores_and_equal_fresh_ones(
    tiny_tokenizer, text_file, tmp_path, monkeypatch
):
    from evoprune.backend import importance_cache

    backend = _backend("llama", tiny_tokenizer, text_file, "refit")
    model, layers = backend.loaded.model, backend.adapter.layers(backend.loaded.model)
    windows = backend.calib_windows
    key = tmp_path.name  # cache keys of this test alone
    kwargs = dict(cache_key=f"{key}-flap", with_covariance=True, covariance_cache_key=f"{key}-cov")
    fresh, cached = compute_importance(model, layers, windows, 16, "flap", **kwargs)
    again, cached_again = compute_importance(model, layers, windows, 16, "flap", **kwargs)
    assert not cached and cached_again
    np.testing.assert_array_equal(fresh.down_cov, again.down_cov)
    np.testing.assert_array_equal(fresh.down_mean, again.down_mean)
    # Another criterion reuses the covariances: its cache holds scores and means only. They are
    # mapped once while its scores are computed, not also by each look-up that finds no scores.
    reads = []
    read = importance_cache.map_file
    monkeypatch.setattr(importance_cache, "map_file", lambda path: reads.append(path) or read(path))
    other, _ = compute_importance(model, layers, windows, 16, "wanda-sp", **{**kwargs, "cache_key": f"{key}-wsp"})
    assert [p for p in reads if p.endswith("-covariance.safetensors")] == [
        str(importance_cache.covariance_cache_file(f"{key}-cov"))
    ]
    np.testing.assert_array_equal(other.o_cov, fresh.o_cov)
    assert fresh.down_cov.shape == (len(layers), 96, 96) and fresh.down_cov.dtype == np.float32
    # By definition: the population covariance of the down projection's input.
    inputs = []
    handle = layers[1].down.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].reshape(-1, 96)))
    with torch.inference_mode():
        for row in windows:
            model(input_ids=row[None])
    handle.remove()
    x = torch.cat(inputs).double()
    np.testing.assert_allclose(fresh.down_cov[1], torch.cov(x.T, correction=0).numpy(), rtol=1e-4, atol=1e-5)


def test_bias_compensation_needs_the_calibration_means(tiny_tokenizer, text_file):
    backend = _backend("llama", tiny_tokenizer, text_file, "none")
    plans = backend.plan(backend.space.upper)
    layers = backend.adapter.layers(backend.loaded.model)
    scores, _ = compute_importance(backend.loaded.model, layers, backend.calib_windows, 16, "magnitude")
    assert scores.o_mean is None
    with pytest.raises(EvopruneError, match="calibration means"):
        bias_compensation(layers, plans, scores, 16)


def test_cached_covariances_are_mapped_not_read_and_refit_alike(tiny_tokenizer, text_file, tmp_path, monkeypatch):
    import collections
    import dataclasses

    import psutil

    from evoprune.backend.importance_cache import covariance_cache_file

    backend = _backend("llama", tiny_tokenizer, text_file, "refit")
    model, layers = backend.loaded.model, backend.adapter.layers(backend.loaded.model)
    key = tmp_path.name
    kwargs = dict(cache_key=f"{key}-flap", with_covariance=True, covariance_cache_key=f"{key}-cov")
    stats = ActivationStats(layers, covariance=True)
    n = stats.covariance_elements()
    # Summed in memory (float64), written into the entry's file a layer at a time, then mapped read-only.
    fresh, cached = compute_importance(model, layers, backend.calib_windows, 16, "flap", **kwargs)
    assert not cached and isinstance(fresh.down_cov, np.memmap) and isinstance(fresh.o_cov, np.memmap)
    path = covariance_cache_file(f"{key}-cov")
    assert fresh.down_cov.filename == str(path.resolve()) and not fresh.down_cov.flags.writeable
    # A cached entry needs no free memory to be used: the pages are the file's, read when used.
    memory = collections.namedtuple("memory", "available")
    with monkeypatch.context() as m:  # not monkeypatch.undo(): that would also undo the test cache folder
        m.setattr(psutil, "virtual_memory", lambda: memory(0))
        m.setattr("evoprune.backend.memory_headroom._cgroup_left", lambda: None)
        again, cached = compute_importance(model, layers, backend.calib_windows, 16, "flap", **kwargs)
    assert cached and isinstance(again.down_cov, np.memmap)
    # Equal to covariances held in memory, and so is every re-fit made from them.
    in_memory = ActivationStats(layers, covariance=True)
    in_memory.collect(model, backend.calib_windows)
    for i in range(len(layers)):
        np.testing.assert_array_equal(again.down_cov[i], in_memory.covariance_matrix(i, "down_in").float().numpy())
    assert again.down_cov.size + again.o_cov.size == n
    plans = backend.plan(backend.space.upper // 2)
    mapped = refit_compensation(layers, plans, again, 16)
    loaded = dataclasses.replace(again, o_cov=np.array(again.o_cov), down_cov=np.array(again.down_cov))
    assert mapped[0].down_weight is not None  # solved, not only folded into a bias
    for a, b in zip(mapped, refit_compensation(layers, plans, loaded, 16), strict=True):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert (x is None and y is None) or torch.equal(x, y)
    # A damaged (truncated) entry is removed and computed again, not mapped past its end.
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 4)
    third, cached = compute_importance(model, layers, backend.calib_windows, 16, "flap", **kwargs)
    assert not cached and third.down_cov.filename == str(path.resolve())
    np.testing.assert_array_equal(third.down_cov, fresh.down_cov)


def test_available_memory_is_what_is_left_of_a_container_limit(tmp_path):
    from evoprune.backend.memory_headroom import _cgroup_left

    assert _cgroup_left(tmp_path) is None  # no cgroup v2 files: no limit
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert _cgroup_left(tmp_path) is None
    (tmp_path / "memory.max").write_text("4096\n")
    assert _cgroup_left(tmp_path) == 3096
    (tmp_path / "memory.current").write_text("5000\n")
    assert _cgroup_left(tmp_path) == 0
