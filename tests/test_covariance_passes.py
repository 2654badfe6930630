"""The calibration covariances are summed for as many layers at a time as memory holds, and written
into their cache entry in place: the same scores and covariances as in one pass, to the last bit."""

from __future__ import annotations

import collections

import numpy as np
import psutil
import pytest

from evoprune.backend.activation_stats import COPY_BYTES, SUMS_SHARE, ActivationStats
from evoprune.backend.importance import compute_importance
from evoprune.backend.importance_cache import covariance_cache_file, written_entry
from evoprune.errors import EvopruneError
from tests.test_criteria import _backend

memory = collections.namedtuple("memory", "available")


def _memory_for(layers_per_pass: float, per_layer: int, copy: int) -> int:
    """Available bytes with which a pass holds ``layers_per_pass`` layers' float64 sums."""
    return copy + int(layers_per_pass * per_layer / SUMS_SHARE) + 1


def _scored(backend, monkeypatch, available: int | None, **kwargs):
    """``compute_importance`` with ``obs`` scores and the covariances, under ``available`` bytes of
    memory; returns (scores, number of forward calls)."""
    model, layers = backend.loaded.model, backend.adapter.layers(backend.loaded.model)
    calls = []
    forward = model.forward

    def counted(*a, **k):
        calls.append(1)
        return forward(*a, **k)

    with monkeypatch.context() as m:  # not monkeypatch.undo(): that would also undo the test cache folder
        m.setattr(model, "forward", counted)
        m.setattr("evoprune.backend.memory_headroom._cgroup_left", lambda: None)
        if available is not None:
            m.setattr(psutil, "virtual_memory", lambda: memory(available))
        scores, _ = compute_importance(model, layers, backend.calib_windows, 16, "obs", with_covariance=True, **kwargs)
    return scores, len(calls)


def test_covariances_are_summed_as_many_layers_at_a_time_as_memory_holds(
    tiny_tokenizer, text_file, tmp_path, monkeypatch, tiny_model_dir
):
    from tests.test_user_reports import _one_line_error, evoprune_in_process

    backend = _backend("llama", tiny_tokenizer, text_file, "refit", criterion="obs")
    layers = backend.adapter.layers(backend.loaded.model)
    windows = len(backend.calib_windows)
    stats = ActivationStats(layers, covariance=True)
    per_layer = 8 * (layers[0].o.in_features ** 2 + layers[0].down.in_features ** 2)
    copy = COPY_BYTES * stats.covariance_elements()
    assert len(layers) == 4

    whole, forwards = _scored(backend, monkeypatch, None)
    assert forwards == windows  # memory for all of them: one pass
    # One layer a pass, its float32 copy in memory: four passes, the same scores and covariances.
    one, forwards = _scored(backend, monkeypatch, _memory_for(1.5, per_layer, copy))
    assert forwards == 4 * windows
    np.testing.assert_array_equal(one.attn, whole.attn)
    np.testing.assert_array_equal(one.mlp, whole.mlp)
    np.testing.assert_array_equal(one.o_cov, whole.o_cov)
    np.testing.assert_array_equal(one.down_cov, whole.down_cov)
    # Cached: the copy goes straight to the entry's file, so the memory holds more layers a pass.
    key = tmp_path.name
    cached, forwards = _scored(backend, monkeypatch, _memory_for(2.5, per_layer, 0),
                               cache_key=f"{key}-obs", covariance_cache_key=f"{key}-cov")  # fmt: skip
    assert forwards == 2 * windows
    assert isinstance(cached.down_cov, np.memmap) and not cached.down_cov.flags.writeable
    assert cached.down_cov.filename == str(covariance_cache_file(f"{key}-cov").resolve())
    np.testing.assert_array_equal(cached.down_cov, whole.down_cov)
    np.testing.assert_array_equal(cached.attn, whole.attn)
    # Not one layer fits: refused before any pass, naming the way around it.
    with pytest.raises(EvopruneError, match=r"covariances of 4 layers.*of cpu.*--importance flap.*--compensation bias"):
        _scored(backend, monkeypatch, _memory_for(0.9, per_layer, copy))
    # and from the command line: one line, exit 2, nothing else
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(1000))
    store = tmp_path / "s.db"
    result = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store",
                                 str(store), "--evals", "4", "--eval-tokens", "128", "--calib-tokens", "256",
                                 "--seq-len", "64")  # fmt: skip
    _one_line_error(result, "covariances", "--compensation bias")


def test_a_refused_pass_runs_no_forward(tiny_tokenizer, text_file, monkeypatch):
    backend = _backend("llama", tiny_tokenizer, text_file, "refit", criterion="obs")
    model = backend.loaded.model
    calls = []
    with monkeypatch.context() as m:
        m.setattr(psutil, "virtual_memory", lambda: memory(1000))
        m.setattr("evoprune.backend.memory_headroom._cgroup_left", lambda: None)
        m.setattr(model, "forward", lambda *a, **k: calls.append(1))
        with pytest.raises(EvopruneError, match="covariances"):
            compute_importance(model, backend.adapter.layers(model), backend.calib_windows, 16, "obs")
    assert calls == []


def test_an_entry_written_in_place_is_a_safetensors_file_or_nothing(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    path = tmp_path / "e.safetensors"
    with written_entry(path, {"b": (2, 3), "a": (4,)}, about="what it holds") as arrays:
        arrays["a"][:] = np.arange(4)
        arrays["b"][1] = 7.5
        assert not path.exists()  # only once complete
    read = load_file(str(path))
    np.testing.assert_array_equal(read["a"], np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(read["b"], [[0, 0, 0], [7.5, 7.5, 7.5]])
    # An error while filling it leaves nothing behind, under either name.
    with pytest.raises(ValueError), written_entry(tmp_path / "f.safetensors", {"a": (4,)}) as arrays:
        raise ValueError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]
    # A disk too small is one clear error before anything is written.
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _p: usage(100, 90, 10))
    full = r"^the cache entry g.safetensors needs 80 bytes of disk in .* 10 bytes is free.*EVOPRUNE_CACHE_DIR"
    with pytest.raises(EvopruneError, match=full), written_entry(tmp_path / "g.safetensors", {"a": (4,)}):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]
