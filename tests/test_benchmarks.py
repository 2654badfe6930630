"""Tiny versions of the benchmark commands, so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from evoprune.compare import DEFAULT_METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_compare_benchmark_runs_on_a_tiny_model(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "bench.db"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "smollm2_compare.py"), "--tiny", "--model", str(tiny_model_dir),
         "--data", str(text_file), "--store", str(store), "--budgets", "0.8", "--no-write"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(store.with_suffix(".json").read_text())
    rows = results["rows"]
    assert {r["method"] for r in rows} == {*DEFAULT_METHODS, "ga x3"}
    for r in rows:
        assert r["params_fraction"] <= 0.8 and r["heldout"]["ppl:wikitext2_test"] > 1
        assert 0 < r["export"]["params"] < 0.81 * results["dense"]["export"]["params"]
    assert next(r for r in rows if r["method"] == "ga x3")["evaluations"] == 18
    # the section and the plot are written from the run's JSON
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "smollm2_compare.py"), "--render", str(store.with_suffix(".json")),
         "--markdown", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert "### Targets" in section and "sample efficiency" in section and "| 80% | 0 | ga x3 | 18 |" in section
    assert (tmp_path / "docs" / "images" / "smollm2_fronts.png").stat().st_size > 1000


def test_synthetic_benchmark_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "synthetic.py"), "--seeds", "1", "--evoprune-evals", "12",
         "--ga-evals", "20", "--surrogates", "additive,additive:link=auto", "--no-write"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| method | median evaluations to reach |" in result.stdout
    assert "| evoprune[additive:link=auto] |" in result.stdout and "| NSGA-II |" in result.stdout
