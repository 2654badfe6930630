"""`evoprune cache list` / `clear` on a real cache: what a tiny model's scoring writes there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from evoprune.backend.data import TextSource
from evoprune.backend.loading import LoadedModel, ModelSource, model_fingerprint
from evoprune.backend.pruner import PruningBackend
from evoprune.backend.settings import BackendSettings
from evoprune.cache import cache_dir, cache_entries, clear_cache
from tests.conftest import build_tiny_model

DAY = 86400


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evoprune", "cache", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _age(path: Path, days: float) -> None:
    """Make ``path`` (and what a folder holds) look last used ``days`` ago."""
    when = time.time() - days * DAY
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when))


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_tokenizer, text_file) -> Path:
    """A cache of its own, filled as a search fills it: a converted model and scored importance."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EVOPRUNE_CACHE_DIR", str(root))
    model = build_tiny_model("llama", seed=3)
    model.save_pretrained(cache_dir("models") / "tiny-llama")
    loaded = LoadedModel(ModelSource("tiny-llama", "dir", "tiny"), model, tiny_tokenizer, model_fingerprint(model))
    settings = BackendSettings(
        criterion="wanda-sp", compensation="refit", eval_tokens=128, calib_tokens=256, seq_len=64
    )
    PruningBackend(loaded, TextSource(str(text_file), text_file.read_text()), settings).score()
    return root


def test_list_says_what_each_entry_holds_and_looking_does_not_count_as_use(cache, text_file):
    listed = json.loads(_cli("list", "--json").stdout)
    assert listed["root"] == str(cache)
    by_kind = {}
    for e in listed["entries"]:
        by_kind.setdefault(e["kind"], []).append(e)
    assert [e["name"] for e in by_kind["models"]] == ["tiny-llama"]
    abouts = sorted(e["about"] for e in by_kind["importance"])
    text = f"{text_file.parent.name}/calib.txt"  # its folder too: two texts named valid.txt differ
    assert abouts == [
        f"calibration covariances of tiny-llama, 256 tokens of {text}",
        f"wanda-sp scores of tiny-llama, 256 tokens of {text}",
    ]
    assert listed["total_bytes"] == sum(e["size"] for e in listed["entries"])
    assert by_kind["models"][0]["size"] == sum(f.stat().st_size for f in (cache / "models").rglob("*") if f.is_file())

    old = next(e for e in cache_entries(["importance"]) if "scores" in e.about)
    _age(old.path, 3)
    _cli("list")  # reads every entry's header
    (again,) = [e for e in cache_entries(["importance"]) if e.path == old.path]
    assert time.time() - again.last_used > 2.9 * DAY

    table = _cli("list")
    assert table.returncode == 0
    assert "wanda-sp scores of tiny-llama" in table.stdout and "3 days ago" in table.stdout


def test_clear_by_age_and_kind_and_dry_run(cache):
    scores = next(e for e in cache_entries(["importance"]) if "scores" in e.about)
    _age(scores.path, 10)
    _age(cache / "models" / "tiny-llama", 4)
    stale = cache / "models" / "other.partial"  # a conversion stopped half-way, a day ago
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    _age(stale, 1)
    fresh = cache / "models" / "busy.partial"  # one being written now
    fresh.mkdir()
    everything = {e.path for e in cache_entries()}

    dry = json.loads(_cli("clear", "--older-than", "7", "--dry-run", "--json").stdout)
    assert {e["path"] for e in dry["removed"]} == {str(scores.path), str(stale)}
    assert {e.path for e in cache_entries()} == everything

    done = _cli("clear", "--older-than", "7")
    assert done.returncode == 0 and "removed 2 entries" in done.stdout
    assert not scores.path.exists() and not stale.exists()
    assert fresh.exists() and (cache / "models" / "tiny-llama").exists()

    removed, in_use = clear_cache(["models"], older_than_days=3)
    assert [e.name for e in removed] == ["tiny-llama"] and in_use == []
    assert fresh.exists()  # under an hour old: may still be written
    assert [e.kind for e in cache_entries()] == ["models", "importance"]


def test_clear_leaves_an_entry_another_process_is_writing(cache):
    cov = next(e for e in cache_entries(["importance"]) if "covariances" in e.about)
    with FileLock(str(cov.path.with_name(f"{cov.path.name}.lock"))):
        result = _cli("clear", "--kind", "importance", "--json")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert [e["path"] for e in out["in_use"]] == [str(cov.path)]
        assert len(out["removed"]) == 1
    assert cov.path.exists()
    assert [e.path for e in cache_entries(["importance"])] == [cov.path]
    note = _cli("clear", "--kind", "importance")
    assert "removed 1 entry" in note.stdout and cache_entries(["importance"]) == []


def test_clear_leaves_the_file_a_covariance_entry_is_being_written_into(cache):
    # The covariances are written in place, into NAME.PID.tmp, for as long as the scoring takes,
    # under NAME's lock: an hour-old leftover is not one while that lock is held.
    target = cache / "importance" / "abc-covariance.safetensors"
    writing = target.with_name(f"{target.name}.4242.tmp")
    writing.write_bytes(b"x" * 100)
    _age(writing, 1)
    with FileLock(str(target.with_name(f"{target.name}.lock"))):
        removed, in_use = clear_cache(["importance"])
        assert [e.path for e in in_use] == [writing] and writing not in [e.path for e in removed]
        assert writing.exists()
    removed, in_use = clear_cache(["importance"])  # its writer is gone: a leftover like any other
    assert writing in [e.path for e in removed] and in_use == [] and not writing.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["list", "--kind", "weights"], "cache kind 'weights' is unknown: use one of models, importance, latency"),
        (["clear", "--older-than", "-1"], "--older-than -1.0 is not an age"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cache, args, needle):
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert (cache / "models" / "tiny-llama").exists()


def test_scores_reused_by_a_search_count_as_used_even_where_access_times_lag(
    cache, tiny_tokenizer, text_file, tmp_path
):
    # relatime mounts refresh access times about once a day: scores a search had just reused were
    # listed as last used when first read (up to a day earlier, which `clear --older-than 1` goes by)
    for entry in cache_entries(["importance"]):
        entry.path.read_bytes()  # read once after it was written: relatime refreshes no more until a day passes
    time.sleep(1.1)
    reused_at = time.time() - 0.05
    model = build_tiny_model("llama", seed=3)
    model.save_pretrained(tmp_path / "again")  # as the fixture did (saving changes what the fingerprint reads)
    loaded = LoadedModel(ModelSource("tiny-llama", "dir", "tiny"), model, tiny_tokenizer, model_fingerprint(model))
    settings = BackendSettings(
        criterion="wanda-sp", compensation="refit", eval_tokens=128, calib_tokens=256, seq_len=64
    )
    backend = PruningBackend(loaded, TextSource(str(text_file), text_file.read_text()), settings)
    backend.score()
    assert backend.importance_cached  # read back, not computed again
    assert all(e.last_used >= reused_at for e in cache_entries(["importance"]))


def test_processes_converting_one_model_at_once_each_get_the_whole_directory(tmp_path):
    # Two benchmark parts that converted the zoo model at once failed: each wrote and deleted the
    # same ``*.partial`` directory. Each writer now has its own; the first rename wins.
    import threading

    from evoprune.backend.loading import publish_dir

    target = tmp_path / "models" / "m"
    started = threading.Barrier(2)
    results, errors = [], []

    def write(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"x" * 1000)
        started.wait(timeout=10)  # both are writing before either renames
        (tmp / "config.json").write_text("{}")

    def convert() -> None:
        try:
            results.append(publish_dir(write, target))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure of either writer
            errors.append(exc)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [target, target]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no partial directory left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not mkdtemp's private 0700
