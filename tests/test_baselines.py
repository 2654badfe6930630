"""The one-shot baselines (uniform, mlp-only, flap): on budget within 1%, on their recipes, end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from evoprune.backend.importance import Importance
from evoprune.backend.settings import BackendSettings
from evoprune.choice.compare import DEFAULT_METHODS, compare
from evoprune.choice.plan import plan
from evoprune.cli import app
from evoprune.engine.baselines.flap import attention_unit_scores, flap_config, flap_order
from evoprune.engine.baselines.one_shot import method_settings
from evoprune.engine.baselines.uniform import mlp_only_config, skipped_layers, uniform_config
from evoprune.engine.run import search
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError
from evoprune.objectives.pareto import best_of
from evoprune.objectives.spec import Budget
from evoprune.reporting.report import write_report
from evoprune.space import ArchSpec, SearchSpace
from evoprune.store import Store
from tests.conftest import build_tiny_model

ONE_SHOT = ("uniform", "mlp-only", "flap")
BACKEND = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64)
# The tiny Llama's sizes, with 8 layers so that LLM-Pruner's skipped layers leave some to prune.
ARCH = ArchSpec("llama", 8, 64, 4, 2, 16, 96, 384, True, norm_params=64)


@pytest.fixture(scope="module")
def tiny8_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama-8")
    build_tiny_model("llama", num_layers=8).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _fraction_at_most(space: SearchSpace, limit: float):
    return lambda X: space.params_matrix(np.atleast_2d(X)) / space.arch.dense_params() <= limit


def _fine(**kw) -> SearchSpace:
    return SearchSpace(ARCH, attn_levels=-1, mlp_levels=0, **kw)


def test_fine_grid_has_one_level_per_unit_and_per_channel_multiple():
    space = _fine()
    assert space.attn_levels == space.attn_units == 2 and space.mlp_levels == 96
    assert [space.kept_mlp_channels(lv) for lv in (0, 1, 95, 96)] == [96, 95, 1, 0]
    coarse = SearchSpace(ARCH, mlp_levels=0, mlp_multiple=8)
    assert coarse.mlp_levels == 12 and coarse.kept_mlp_channels(1) == 88
    # stored resolved, so the run's space reopens as it was searched
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_method_settings_give_the_one_shot_baselines_a_fine_grid_unless_the_user_chose_one():
    base = SearchSettings(evals=1, max_params=0.8, backend=BACKEND)
    for method in ONE_SHOT:
        b = method_settings(replace(base, method=method)).backend
        assert (b.mlp_levels, b.attn_levels) == (0, -1)
    assert method_settings(base) == base  # evoprune's own grid is untouched
    assert method_settings(replace(base, method="owl")) == replace(base, method="owl")
    chosen = replace(base, method="flap", backend=replace(BACKEND, mlp_levels=4))
    assert method_settings(chosen) == chosen
    latency = replace(base, method="uniform", max_latency_ms=5.0)
    assert method_settings(latency) == latency
    # The default grid asked for by name is kept; the fine one can be asked for on any grid.
    given = replace(base, method="uniform", baseline_grid="given")
    assert method_settings(given) == given
    fine = method_settings(replace(chosen, baseline_grid="fine")).backend
    assert (fine.mlp_levels, fine.attn_levels) == (0, -1)
    with pytest.raises(EvopruneError, match="--baseline-grid fine cannot be timed"):
        replace(latency, baseline_grid="fine").validate()
    with pytest.raises(EvopruneError, match="--baseline-grid must be fine or given"):
        replace(base, baseline_grid="coarse").validate()
    # Not itself part of a run's identity: its effect is, in the grid method_settings gives the backend.
    assert given.identity() == replace(given, baseline_grid=None).identity()
    assert method_settings(given).identity() != method_settings(replace(given, baseline_grid=None)).identity()


def test_a_grid_typed_or_in_the_config_file_is_the_grid_the_baselines_run_on(tmp_path):
    from evoprune.engine.config import keep_given_grid, read_config

    assert keep_given_grid({"mlp_levels": 8, "baseline_grid": None}, set())["baseline_grid"] is None
    assert keep_given_grid({"mlp_levels": 8, "baseline_grid": None}, {"mlp_levels"})["baseline_grid"] == "given"
    assert keep_given_grid({"baseline_grid": "fine"}, {"mlp_levels"})["baseline_grid"] == "fine"
    config = tmp_path / "search.toml"
    config.write_text("[backend]\nattn-levels = 0\n")
    assert keep_given_grid({"baseline_grid": None}, set(read_config(config)))["baseline_grid"] == "given"


def test_skipped_layers_scale_llm_pruners_defaults_to_depth():
    assert skipped_layers(32) == (4, 2)
    assert skipped_layers(30) == (4, 2)
    assert skipped_layers(8) == (1, 1)
    assert skipped_layers(30, 0, 3) == (0, 3)


@pytest.mark.parametrize("budget", [0.8, 0.65])
@pytest.mark.parametrize("head_unit", ["query_head", "kv_group"])
def test_every_one_shot_solver_lands_within_one_percent_under_the_budget(budget, head_unit):
    space = _fine(head_unit=head_unit)
    rng = np.random.default_rng(1)
    imp = Importance(rng.random((8, 4)), rng.random((8, 96)) * np.arange(1, 9)[:, None])
    meets = _fraction_at_most(space, budget)
    for x in (uniform_config(space, meets, 1, 1), mlp_only_config(space, meets), flap_config(space, imp, meets)):
        assert 0.99 * budget <= space.params_fraction(x) <= budget, x


def test_uniform_prunes_one_ratio_and_leaves_the_skipped_layers_untouched():
    space = _fine()
    x = uniform_config(space, _fraction_at_most(space, 0.7), 2, 1)
    attn, mlp = np.array(x[:8]), np.array(x[8:])
    assert not attn[:2].any() and not mlp[:2].any() and attn[7] == 0 and mlp[7] == 0
    assert len(set(attn[2:7])) == 1 and attn[2] >= 1  # heads: one count in every pruned layer
    assert mlp[2:7].max() - mlp[2:7].min() <= 1  # channels: one ratio, up to one channel of rounding
    with pytest.raises(EvopruneError, match="--baseline-skip-first"):
        uniform_config(space, _fraction_at_most(space, 0.7), 4, 4)
    assert uniform_config(space, _fraction_at_most(space, 0.2), 2, 1) is None  # the skipped layers alone exceed it


@pytest.mark.parametrize("budget", [0.8, 0.7, 0.5])
def test_uniform_takes_the_head_count_whose_ratio_is_nearest_the_channels(budget):
    """SmolLM2 has 3 attention units per layer: at 50% the head count rounded from the ratio
    removed every head of 24 layers while the MLP lost 72% (newcomer's report); the head ratio
    is now the one nearest the channel ratio it leaves, among all head counts."""
    smollm2 = ArchSpec("llama", 30, 576, 9, 3, 64, 1536, 49152, True, norm_params=576)
    space = SearchSpace(smollm2, attn_levels=-1, mlp_levels=0)
    meets = _fraction_at_most(space, budget)
    x = uniform_config(space, meets, 4, 2)
    pruned = np.arange(4, 28)

    def gap(y):
        return abs(y[4] / space.attn_levels - y[30 + pruned].mean() / space.mlp_levels)

    others = []
    for heads in range(space.attn_levels + 1):
        fixed = space.lower.copy()
        fixed[pruned] = heads
        for mlp in range(space.mlp_levels + 1):  # the least even MLP level that meets it, to within a level
            y = fixed.copy()
            y[30 + pruned] = mlp
            if meets(y)[0]:
                others.append(y)
                break
    assert 0.99 * budget <= space.params_fraction(x) <= budget
    assert gap(x) <= min(gap(y) for y in others) + 1 / space.mlp_levels
    assert x[4] < space.attn_levels  # never all heads while channels stay


def test_mlp_only_leaves_attention_alone_with_one_ratio():
    space = _fine()
    x = mlp_only_config(space, _fraction_at_most(space, 0.75))
    assert not any(x[:8]) and x[8:].max() - x[8:].min() <= 1


def test_flap_ranks_standardised_scores_globally():
    """Layer 0's scores are 1000 times larger: a raw global ranking would never prune it; FLAP's
    per-layer z-scores do, and what it removes scores below what it keeps (module by module)."""
    space = _fine(head_unit="kv_group")
    rng = np.random.default_rng(0)
    mlp = rng.random((8, 96))
    mlp[0] *= 1000.0
    attn = rng.random((8, 4)) + np.arange(8)[:, None]  # later layers have larger raw head scores
    imp = Importance(attn, mlp)
    x = flap_config(space, imp, _fraction_at_most(space, 0.75))
    assert x[8] > 0  # layer 0 loses channels
    z = (mlp - mlp.mean(axis=1, keepdims=True)) / mlp.std(axis=1, ddof=1, keepdims=True)
    removed, kept = [], []
    for layer in range(8):
        order = np.sort(z[layer])
        removed += list(order[: x[8 + layer]])
        kept += list(order[x[8 + layer] :])
    assert max(removed) <= min(kept)
    # heads: the removal order is by z-score per layer, never by raw score
    order = flap_order(space, imp)
    heads = [tuple(r) for r in order if r[0] == 0]
    unit_z = {}
    for layer in range(8):
        s = attention_unit_scores(space, attn[layer])
        unit_z[layer] = np.sort((s - s.mean()) / s.std(ddof=1))
    first = [unit_z[layer][0] for _, layer in heads[:8]]
    assert first == sorted(first) and {layer for _, layer in heads[:8]} == set(range(8))


def test_attention_units_follow_the_plan():
    space = _fine()  # query_head under GQA: unit k removes the k-th weakest query head of each group
    scores = np.array([4.0, 1.0, 2.0, 8.0])  # groups (4, 1) and (2, 8)
    assert attention_unit_scores(space, scores).tolist() == [1.5, 6.0]
    kv = _fine(head_unit="kv_group")
    assert attention_unit_scores(kv, scores).tolist() == [5.0, 10.0]


@pytest.mark.parametrize("budget", [0.8, 0.7])
def test_compare_runs_the_one_shot_baselines_once_each_on_budget(tmp_path, tiny8_dir, text_file, budget):
    store = tmp_path / "c.db"
    settings = SearchSettings(evals=4, max_params=budget, min_params=0.3, backend=BACKEND)
    rows = compare(str(tiny8_dir), str(text_file), str(store), settings, ONE_SHOT)
    assert [r.method for r in rows] == list(ONE_SHOT)
    runner = CliRunner()
    with Store(store) as st:
        for r in rows:
            run = st.get_run(r.run_id)
            evals = st.evaluations(r.run_id)
            assert len(evals) == 1 and evals[0].status == "ok", r.method  # the recipe's one answer
            assert 0.99 * budget <= evals[0].params_fraction <= budget, r.method
            assert r.best_id == evals[0].id
            assert run.space["mlp_levels"] == 96 and run.space["attn_levels"] == 2  # the fine grid, recorded
            if r.method == "uniform":
                levels = np.array(evals[0].levels)
                assert not levels[[0, 7, 8, 15]].any()  # first and last layer untouched (1 and 1 of 8)
    for r in rows:
        out = runner.invoke(app, ["pareto", "--store", str(store), "--run", str(r.run_id), "--json"])
        assert out.exit_code == 0, out.output
        assert [p["id"] for p in json.loads(out.stdout)["points"]] == [r.best_id]
        assert r.to_dict()["run"] == json.loads(out.stdout)["run"] == r.run_id  # one name for a run id in JSON
    flap = rows[-1]
    chosen = plan(str(store), Budget(max_params=budget), run_id=flap.run_id)
    # plan pools the runs of one problem (same model, data and grid): the best of the three answers,
    # each judged on the highest rung of the fidelity ladder it reached
    with Store(store) as st:
        answers = [e for r in rows for e in st.evaluations(r.run_id)]
    assert all(e.ladder for e in answers)
    assert chosen.evaluation.id == best_of(answers, "ppl").id
    assert sum(d["mlp"] for d in chosen.layers) < 8 * 96
    with Store(store) as st:
        assert write_report(st, tmp_path / "report", run_id=flap.run_id).stat().st_size > 1000
    out = runner.invoke(
        app, ["export", "--store", str(store), "--run", str(flap.run_id), "--pick", str(flap.best_id),
              "--out", str(tmp_path / "flap"), "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["params_fraction"] == pytest.approx(flap.best_params_fraction)
    if budget == 0.8:  # the CLI reopens the same runs; its table and --json list the methods in one order
        args = ["compare", "--model", str(tiny8_dir), "--data", str(text_file), "--store", str(store), "--evals", "4",
                "--methods", ",".join(ONE_SHOT), "--max-params", "0.8", "--min-params", "0.3", "--eval-tokens", "256",
                "--calib-tokens", "256", "--seq-len", "64"]  # fmt: skip
        as_json = runner.invoke(app, [*args, "--json"])
        table = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert as_json.exit_code == table.exit_code == 0, as_json.output + table.output
        listed = json.loads(as_json.stdout)
        # best first on the validation split, the same windows for every method's pick, never chosen by
        assert all(r["best_validation"] for r in listed)
        values = [r["best_validation"]["metrics"]["ppl"] for r in listed]
        assert values == sorted(values) and {r["run"] for r in listed} == {r.run_id for r in rows}
        order = [r["method"] for r in listed]
        assert all(f"│ {m} " in table.stdout for m in order), table.stdout
        assert sorted(order, key=lambda m: table.stdout.index(f"│ {m} ")) == order


def test_without_a_budget_a_one_shot_baseline_evaluates_a_spread(tmp_path, tiny8_dir, text_file):
    settings = SearchSettings(evals=3, method="flap", min_params=0.3, backend=BACKEND)
    result = search(str(tiny8_dir), str(text_file), str(tmp_path / "s.db"), settings)
    fractions = [e.params_fraction for e in result.evaluations]
    assert len(fractions) == 3
    for target, got in zip((0.95, 0.9, 0.85), fractions, strict=True):
        assert 0.99 * target <= got <= target


def test_bad_skip_counts_are_refused(tmp_path, tiny8_dir, text_file):
    with pytest.raises(EvopruneError, match="--baseline-skip-first must be 0 or more"):
        SearchSettings(evals=1, method="uniform", baseline_skip_first=-1).validate()
    settings = SearchSettings(
        evals=1, method="uniform", max_params=0.8, baseline_skip_first=5, baseline_skip_last=3, backend=BACKEND
    )
    with pytest.raises(EvopruneError, match="leaving none to prune"):
        search(str(tiny8_dir), str(text_file), str(tmp_path / "s.db"), settings)


def test_unset_skips_leave_the_run_identity_of_earlier_runs_alone():
    assert "baseline_skip_first" not in SearchSettings(evals=1).identity()
    assert SearchSettings(evals=1, baseline_skip_first=2).identity()["baseline_skip_first"] == 2
    assert {"mlp-only", "flap"} <= set(DEFAULT_METHODS)


def test_cli_uniform_with_skips_then_resume_reopens_the_same_run(tmp_path, tiny8_dir, text_file):
    store = str(tmp_path / "u.db")
    runner = CliRunner()
    args = ["search", "--model", str(tiny8_dir), "--data", str(text_file), "--store", store, "--evals", "2",
            "--method", "uniform", "--max-params", "0.75", "--baseline-skip-first", "2", "--baseline-skip-last", "0",
            "--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--json"]  # fmt: skip
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    front = json.loads(out.stdout)
    (point,) = front["points"]
    assert 0.99 * 0.75 <= point["params_fraction"] <= 0.75
    attn, mlp = point["levels"]["attn"], point["levels"]["mlp"]
    assert attn[:2] == mlp[:2] == [0, 0] and mlp[7] > 0  # skipped first two layers, pruned the last
    again = runner.invoke(app, ["resume", "--store", store, "--evals", "3", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["run"] == front["run"]
    with Store(store) as st:
        assert len(st.runs()) == 1 and len(st.evaluations(front["run"])) == 1
        assert st.runs()[0].space["mlp_levels"] == 96  # the fine grid: one channel a level
    # The default grid typed by name is the grid it runs on: a separate run, of 8 MLP levels.
    out = runner.invoke(app, [*args, "--mlp-levels", "8"])
    assert out.exit_code == 0, out.output
    with Store(store) as st:
        coarse = [r for r in st.runs() if r.id != front["run"]]
        assert [(r.space["mlp_levels"], r.settings["baseline_grid"]) for r in coarse] == [(8, "given")]


def test_predictor_rank_ranks_after_its_training_share_and_spends_the_budget(tmp_path, tiny_model_dir, text_file):
    """predictor-rank evaluates round(0.8 * evals) random configurations (those ``random`` evaluates
    first, from the same seed and pool), fits its GBDT on them, and spends the rest of the budget on
    the best-ranked candidates: its answer is not ``random``'s."""
    settings = SearchSettings(evals=6, max_params=0.75, min_params=0.3, backend=BACKEND)
    rows = compare(str(tiny_model_dir), str(text_file), str(tmp_path / "c.db"), settings, ("random", "predictor-rank"))
    with Store(tmp_path / "c.db") as st:
        rand, ranked = (st.evaluations(r.run_id) for r in rows)
    assert len(rand) == len(ranked) == 6
    assert [e.round for e in ranked] == [0] * 5 + [1]  # n_train = round(0.8 * 6) random, then one ranked
    assert [e.levels for e in ranked[:5]] == [e.levels for e in rand[:5]]
    assert ranked[5].levels not in [e.levels for e in rand]
    assert all(e.status == "ok" and e.params_fraction <= 0.75 for e in ranked)


class _Killed(Exception):
    pass


def test_predictor_rank_resumed_after_a_kill_evaluates_what_an_uninterrupted_run_does(
    tmp_path, tiny_model_dir, text_file
):
    settings = SearchSettings(evals=6, method="predictor-rank", max_params=0.75, min_params=0.3, backend=BACKEND)
    whole = search(str(tiny_model_dir), str(text_file), str(tmp_path / "whole.db"), settings)
    done = 0

    def kill_after_two(event: str, **info) -> None:
        nonlocal done
        done += event == "eval_done"
        if done == 2:
            raise _Killed

    store = str(tmp_path / "killed.db")
    with pytest.raises(_Killed):
        search(str(tiny_model_dir), str(text_file), store, settings, kill_after_two)
    with Store(store) as st:
        (run,) = st.runs()
        assert [e.status for e in st.evaluations(run.id)] == ["ok"] * 2 + ["pending"] * 3
    resumed = search(str(tiny_model_dir), str(text_file), store, settings)
    assert resumed.run.id == run.id
    assert [(e.levels, e.round, e.status) for e in resumed.evaluations] == [
        (e.levels, e.round, e.status) for e in whole.evaluations
    ]


def test_compare_skips_a_method_that_cannot_meet_the_budget_and_shows_the_others(tmp_path, tiny_model_dir, text_file):
    """Under a memory budget that the KV cache dominates, `mlp-only` has no answer: compare stopped
    with its error and showed nothing, although `uniform` had been evaluated and stored."""
    from evoprune.errors import BudgetUnmet

    settings = SearchSettings(evals=4, max_memory="1.5MB", min_params=0.1, backend=BACKEND)
    store = str(tmp_path / "c.db")
    rows = {r.method: r for r in compare(str(tiny_model_dir), str(text_file), store, settings, "uniform, mlp-only")}
    assert rows["uniform"].skipped is None and rows["uniform"].best_id is not None
    assert rows["mlp-only"].best_id is None and "cannot meet the budget" in rows["mlp-only"].skipped
    assert rows["mlp-only"].run_id is not None and rows["mlp-only"].run_id != rows["uniform"].run_id
    with pytest.raises(BudgetUnmet, match="mlp-only cannot meet the budget"):
        compare(str(tiny_model_dir), str(text_file), store, settings, ["mlp-only"])
    with pytest.raises(EvopruneError, match="no method to compare"):
        compare(str(tiny_model_dir), str(text_file), store, settings, " , ")
    args = ["compare", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", store, "--evals", "4",
            "--methods", "uniform,mlp-only", "--max-memory", "1.5MB", "--min-params", "0.1", "--eval-tokens", "256",
            "--calib-tokens", "256", "--seq-len", "64", "--json"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    listed = json.loads(out.stdout)
    assert [r["method"] for r in listed] == ["uniform", "mlp-only"] and listed[1]["skipped"]
