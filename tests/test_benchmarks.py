"""Tiny versions of the benchmark commands, so they cannot rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compare_benchmark_runs_on_a_tiny_model(tmp_path, tiny_model_dir, text_file):
    script = str(ROOT / "benchmarks" / "smollm2_compare.py")
    common = ["--tiny", "--model", str(tiny_model_dir), "--data", str(text_file), "--budgets", "0.8", "--no-write"]
    # Two parts, as parallel processes would run them: seeds 0 and 1 in their own stores, seed 1 on
    # another draw of the search text.
    for seed in ("0", "1"):
        store = tmp_path / f"bench{seed}.db"
        extra = ["--tau-fresh", "256"] if seed == "0" else ["--text-start", "0.5"]
        result = subprocess.run(
            [sys.executable, script, *common, "--store", str(store), "--seeds", seed, "--tau", "4", *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    part0 = json.loads((tmp_path / "bench0.json").read_text())
    assert {r["method"] for r in part0["rows"]} == {"evoprune", "uniform", "mlp-only", "flap"}
    for r in part0["rows"]:
        assert r["params_fraction"] <= 0.8 and r["heldout"]["ppl:wikitext2_test"] > 1
        assert r["heldout"]["ppl_se:wikitext2_test"] > 0 and r["tokens"]["first_rung"] > 0
        nll = r["heldout"]["nll:wikitext2_test"]  # per window, for paired differences between methods
        assert len(nll) == 8 and abs(math.exp(sum(nll) / 8) / r["heldout"]["ppl:wikitext2_test"] - 1) < 1e-5
        if r["method"] != "evoprune":  # one-shot recipes land within 1% under the budget
            assert r["params_fraction"] >= 0.79
    ours = next(r for r in part0["rows"] if r["method"] == "evoprune")
    assert ours["tau"]["n"] >= 3 and -1 <= ours["tau"]["tau_chosen_by"] <= 1
    assert -1 <= ours["tau"]["tau_split_half"] <= 1  # held-out text against itself
    # a new measurement on text the search never read: 4 windows of 64 tokens, the whole of them last
    assert list(ours["tau"]["tau_fresh"]) == ["256"] and -1 <= ours["tau"]["tau_fresh"]["256"] <= 1
    assert ours["tau"]["fresh_best_heldout"] in {p[3] for p in ours["tau"]["points"]}
    # the per-window held-out figures the taus use are the held-out perplexity the pick is reported with
    held_by_id = {p[0]: p[3] for p in ours["tau"]["points"]}
    assert ours["best_id"] in held_by_id
    assert abs(held_by_id[ours["best_id"]] / ours["heldout"]["ppl:wikitext2_test"] - 1) < 1e-4
    # a part is self-contained: its first seed also runs the one-shot recipes
    part1 = json.loads((tmp_path / "bench1.json").read_text())
    assert {r["method"] for r in part1["rows"]} == {"evoprune", "uniform", "mlp-only", "flap"}
    # another draw of the search text: other calibration, so other one-shot figures
    assert {r["text_start"] for r in part1["rows"]} == {0.5} and part1["settings"]["text_start"] == 0.5
    uniform = [next(r for r in part["rows"] if r["method"] == "uniform") for part in (part0, part1)]
    assert uniform[0]["heldout"]["ppl:wikitext2_test"] != uniform[1]["heldout"]["ppl:wikitext2_test"]
    # the section and the plot are written from the parts' JSON
    rendered = subprocess.run(
        [sys.executable, script, "--render", f"{tmp_path / 'bench0.json'},{tmp_path / 'bench1.json'}",
         "--markdown", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert "### Targets" in section and "| 80% | evoprune | 2 |" in section and "Kendall" in section
    assert "| 80% | uniform | 2 |" in section  # once per draw of the search text
    # the pick against each baseline, paired on each draw's held-out windows
    assert "### The pick against each baseline on the same text" in section
    assert "| 80% | 0 | 0 |" in section and "| 80% | 0.5 | 1 |" in section
    assert "- 80% against `uniform`: median ratio" in section and "over 2 draw(s)" in section
    assert "| 256: " in section  # the unread-text tau of seed 0
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


def test_local_moves_benchmark_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "local_moves.py"), "--seeds", "1", "--budgets", "0.7",
         "--shares", "0,0.5", "--evals", "12", "--no-write"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 70% | 0 |" in result.stdout and "| 70% | 0.5 |" in result.stdout
    assert "1 of 1" in result.stdout or "0 of 1" in result.stdout


def test_compare_merge_takes_only_the_tau_figures_a_row_lacks_from_a_rerun_of_its_pick(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.smollm2_compare import merge

    key = {"budget": 0.8, "seed": 0, "method": "evoprune"}
    full = {**key, "wall_s": 10.0, "heldout": {"ppl:wikitext2_test": 40.0, "acc:arc_easy": 0.4}}
    rerun = {**key, "wall_s": None, "heldout": {"ppl:wikitext2_test": 40.0}, "tau": {"n": 20, "tau_chosen_by": 0.7}}
    stale = {**key, "wall_s": 99.0, "heldout": {"ppl:wikitext2_test": 50.0}, "tau": {"n": 20, "tau_chosen_by": 0.1}}
    # a later rerun of the same pick that measured the unread-text tau too
    fresh = {**rerun, "tau": {"n": 20, "tau_chosen_by": 0.9, "tau_fresh": {"16384": 0.75}}}
    paths = []
    for name, row in (("full", full), ("rerun", rerun), ("stale", stale), ("fresh", fresh)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"args": {"tau": 20 if "tau" in row else 0}, "rows": [row]}))
    (row,) = merge([str(p) for p in paths])["rows"]
    assert row["wall_s"] == 10.0 and row["heldout"] == full["heldout"]  # the first part's row stands
    # the first tau measured on it is added; a later one of the same pick adds only what it lacked,
    # and one of another pick (stale: another held-out figure) nothing
    assert row["tau"] == {**rerun["tau"], "tau_fresh": {"16384": 0.75}}


def test_criteria_render_pairs_against_the_default(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.criteria import render
    from evoprune.backend.settings import BackendSettings

    default_tokens, d = BackendSettings.calib_tokens, BackendSettings.criterion

    def row(criterion, compensation, budget, shift, calib=default_tokens):
        nll = [3.0 + 0.1 * (i % 4) + shift for i in range(8)]  # same windows, a constant shift apart
        return {"criterion": criterion, "compensation": compensation, "budget": budget, "text": "wikitext2-test",
                "ppl": 2.718 ** (sum(nll) / 8), "ppl_se": 1.0, "tokens": 4096, "params_fraction": 0.8,
                "mlp_channels": 1017, "calib_tokens": calib, "calib_seq_len": 512, "window_nll": nll}  # fmt: skip

    path = tmp_path / "r.jsonl"
    rows = [row(d, "refit", "80%", 0.0), row("wanda-sp", "none", "80%", -0.05)]
    rows += [row(d, "refit", "80%", 0.3, 512)]
    # Picks are scored with their own search's calibration, whatever the default is now.
    rows += [row(d, "refit", "pick s:1:2", 0.0, 512), row(d, "none", "pick s:1:2", 0.2, 512)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    text = render([path])
    assert f"{default_tokens:,} calibration tokens in 512-token windows" in text
    assert f"| {d} (512 calib tokens) | refit |" in text
    assert "best `wanda-sp` + `none`" in text and "-0.050 ± 0.000 nats" in text
    assert f"| s:1:2 | 0.800 | {d} | none |" in text and "+0.200 ± 0.000" in text


def test_amp_benchmark_times_both_precisions_and_says_what_recover_notes():
    import torch

    from evoprune.recovery.run import amp_note

    args = ["--layers", "1", "--seq-len", "16", "--repeats", "1", "--no-write"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "amp.py"), *args], capture_output=True, text=True, check=True
    )
    rows = [line for line in out.stdout.splitlines() if line.startswith("| one ")]
    assert len(rows) == 2 and all(float(r.split("|")[-2].strip().rstrip("x")) > 0 for r in rows), out.stdout
    note = amp_note(torch.device("cpu"), "bfloat16")
    assert (note in out.stdout) if note else "notes nothing here" in out.stdout
