"""The command line end to end: a whole search, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evoprune.objectives.pareto import objectives
from evoprune.store import Store

SEARCH_ARGS = ["--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--mlp-levels", "4"]


def small_inner_search(folder: Path) -> list[str]:
    """``--config`` for a small inner search on the surrogate instead of the default 64 x 40.

    Tests of what the command line does with evaluations and stores do not depend on how far the
    inner search explores, and on the tiny model it is most of each round's time; only a config
    file sets it.
    """
    path = folder / "small-inner-search.toml"
    path.write_text("pop_size = 16\ngenerations = 8\n", encoding="utf-8")
    return ["--config", str(path)]


def evoprune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evoprune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def _rows(store: Path) -> list[tuple]:
    con = sqlite3.connect(store)
    try:
        return con.execute(
            "SELECT id, config_key, status, metrics, finished_at FROM evaluations ORDER BY id"
        ).fetchall()
    finally:
        con.close()


def test_search_then_pareto_json(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    args = ["search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store)]
    args += small_inner_search(tmp_path)
    result = evoprune(*args, "--evals", "12", "--init", "6", "--batch", "3", *SEARCH_ARGS)
    assert result.returncode == 0, result.stderr
    assert "Pareto front" in result.stdout
    rows = _rows(store)
    assert len(rows) == 12 and {r[2] for r in rows} == {"ok"}
    assert len({r[1] for r in rows}) == 12

    out = evoprune("pareto", "--store", str(store), "--json")
    assert out.returncode == 0, out.stderr
    front = json.loads(out.stdout)
    assert front["points"], "a search leaves at least one non-dominated point"
    for p in front["points"]:
        assert {"id", "params", "params_fraction", "metrics", "levels"} <= set(p)
        assert len(p["levels"]["attn"]) == len(p["levels"]["mlp"]) == 4
        assert 0 < p["params_fraction"] <= 1 and p["metrics"]["ppl"] > 1
    # No point of the front is dominated by another stored evaluation, on the figures the front is
    # chosen by (the highest rung each reached, on the first rung's scale).
    with Store(store) as st:
        evals = st.evaluations(st.runs()[0].id)
    F = dict(zip([e.id for e in evals], map(tuple, objectives(evals, ("ppl", "params"))), strict=True))
    for p in front["points"]:
        a = np.array(F[p["id"]])
        assert not any(all(b <= a) and any(b < a) for b in map(np.array, F.values()))

    # The same command again has nothing left to do: no evaluation is repeated.
    again = evoprune(*args, "--evals", "12", "--init", "6", "--batch", "3", *SEARCH_ARGS)
    assert again.returncode == 0, again.stderr
    assert _rows(store) == rows
    # A larger budget continues the same run.
    more = evoprune(*args, "--evals", "15", "--init", "6", "--batch", "3", *SEARCH_ARGS)
    assert more.returncode == 0, more.stderr
    assert _rows(store)[:12] == rows and len(_rows(store)) == 15


def test_sigkill_loses_and_repeats_nothing(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "k.db"
    args = [
        sys.executable, "-m", "evoprune", "search", "--model", str(tiny_model_dir), "--data", str(text_file),
        "--store", str(store), "--evals", "14", "--init", "6", "--batch", "4",
        "--eval-tokens", "1024", "--calib-tokens", "256", "--seq-len", "128", "--mlp-levels", "4",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    finished_before = []
    while time.time() < deadline:
        time.sleep(0.2)
        if store.exists():
            try:
                finished_before = [r for r in _rows(store) if r[2] != "pending"]
            except sqlite3.OperationalError:
                continue
            if len(finished_before) >= 8:  # past the design, inside an active-learning round
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(finished_before) >= 8, "the search did not get far enough before the deadline"
    killed_rows = _rows(store)
    finished_at_kill = [r for r in killed_rows if r[2] != "pending"]
    assert len(finished_at_kill) < 14, "the search finished before it could be killed"

    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _rows(store)
    assert len(rows) == 14 and all(r[2] == "ok" for r in rows)
    assert len({r[1] for r in rows}) == 14, "a configuration was evaluated twice"
    by_id = {r[0]: r for r in rows}
    for r in finished_at_kill:  # every evaluation finished before the kill is kept as it was
        assert by_id[r[0]] == r


def test_resumed_search_equals_an_uninterrupted_one(tmp_path, tiny_model_dir, text_file):
    """Same seed and store contents give the same configurations, whether or not the run stopped."""
    base = ["search", "--model", str(tiny_model_dir), "--data", str(text_file), "--init", "4", "--batch", "2"]
    base += small_inner_search(tmp_path)
    whole = tmp_path / "whole.db"
    parts = tmp_path / "parts.db"
    assert evoprune(*base, "--store", str(whole), "--evals", "8", *SEARCH_ARGS).returncode == 0
    assert evoprune(*base, "--store", str(parts), "--evals", "6", *SEARCH_ARGS).returncode == 0
    assert evoprune(*base, "--store", str(parts), "--evals", "8", *SEARCH_ARGS).returncode == 0
    assert [r[1] for r in _rows(whole)] == [r[1] for r in _rows(parts)]


def _assert_clean_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    "case",
    [
        "missing-model",
        "unsupported-arch",
        "missing-data",
        "empty-data",
        "zero-evals",
        "negative-evals",
        "unknown-compensation",
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_store(case, tmp_path, tiny_model_dir, text_file):
    from transformers import GPT2Config

    store = tmp_path / "bad.db"
    model, data, evals = str(tiny_model_dir), str(text_file), "4"
    needles: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    if case == "missing-model":
        model, needles = str(tmp_path / "no-such-model"), ("does not exist", "no-such-model")
    elif case == "unsupported-arch":
        gpt2 = tmp_path / "gpt2"
        GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(gpt2)
        model, needles = str(gpt2), ("'gpt2' is not supported", "llama")
    elif case == "missing-data":
        data, needles = str(tmp_path / "missing.txt"), ("does not exist", "missing.txt")
    elif case == "empty-data":
        empty = tmp_path / "empty.txt"
        empty.write_text("")
        data, needles = str(empty), ("empty",)
    elif case == "zero-evals":
        evals, needles = "0", ("--evals must be at least 1",)
    elif case == "unknown-compensation":
        extra, needles = ("--compensation", "mean"), ("--compensation 'mean' is unknown", "none, bias")
    else:
        evals, needles = "-3", ("--evals must be at least 1",)
    result = evoprune(
        "search", "--model", model, "--data", data, "--store", str(store), "--evals", evals, *SEARCH_ARGS, *extra
    )
    _assert_clean_usage_error(result, *needles)
    assert not store.exists()


def test_bad_input_leaves_an_existing_store_untouched(tmp_path, tiny_model_dir, text_file):
    from evoprune import BackendSettings, SearchSettings, search

    store = tmp_path / "s.db"
    # The existing store is made in this process: only the bad command needs the command line.
    backend = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)
    search(str(tiny_model_dir), str(text_file), str(store), SearchSettings(evals=3, init=3, backend=backend))
    before = store.read_bytes()
    bad = evoprune("search", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope.txt"),
                   "--store", str(store), "--evals", "5", *SEARCH_ARGS)  # fmt: skip
    _assert_clean_usage_error(bad, "does not exist")
    assert store.read_bytes() == before


def test_pareto_on_a_missing_store(tmp_path):
    _assert_clean_usage_error(evoprune("pareto", "--store", str(tmp_path / "x.db")), "does not exist")


def test_search_into_a_missing_folder_fails_before_the_model_loads(tmp_path, text_file):
    # The model does not exist either: the store's folder is checked first, before minutes of setup.
    bad = evoprune("search", "--model", str(tmp_path / "no-model"), "--data", str(text_file),
                   "--store", str(tmp_path / "nodir" / "s.db"), "--evals", "3", *SEARCH_ARGS)  # fmt: skip
    _assert_clean_usage_error(bad, "nodir", "does not exist")
    assert not (tmp_path / "nodir").exists()
