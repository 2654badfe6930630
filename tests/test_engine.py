"""The search engine on a tiny model: budgets, baselines, failures, config files, plans and reports."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evoprune.backend.settings import BackendSettings
from evoprune.choice.compare import DEFAULT_METHODS, compare
from evoprune.cli import app
from evoprune.engine.run import search
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError
from evoprune.objectives.pareto import contenders, rung_offsets, selection_value
from evoprune.objectives.spec import prediction_on_metric_scale
from evoprune.store import Store
from tests.conftest import build_tiny_model

BACKEND = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)


def _settings(**kw) -> SearchSettings:
    base = dict(evals=10, init=4, batch=3, pop_size=24, generations=8, backend=BACKEND)
    base.update(kw)
    return SearchSettings(**base)


def test_a_parameter_budget_is_never_exceeded_by_a_real_evaluation(tmp_path, tiny_model_dir, text_file):
    result = search(str(tiny_model_dir), str(text_file), str(tmp_path / "s.db"), _settings(max_params=0.7))
    assert len(result.evaluations) == 10
    assert all(e.params_fraction <= 0.7 for e in result.evaluations)
    assert all(e.params_fraction >= 0.5 for e in result.evaluations)  # the default floor
    # the design starts at the budget: its structured configurations spend most of it
    assert max(e.params_fraction for e in result.evaluations if e.origin == "design") > 0.6


def test_an_impossible_budget_is_refused_before_any_evaluation(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    with pytest.raises(EvopruneError, match="budget is impossible"):
        search(str(tiny_model_dir), str(text_file), str(store), _settings(max_params=0.01, min_params=0.0))
    assert not store.exists()
    with pytest.raises(EvopruneError, match="budget is impossible"):
        search(str(tiny_model_dir), str(text_file), str(store), _settings(max_memory="1KB", min_params=0.0))
    assert not store.exists()


@pytest.mark.parametrize("acquisition", ["ehvi", "lcb"])
def test_same_seed_same_configurations_from_scratch(tmp_path, tiny_model_dir, text_file, acquisition):
    settings = _settings(acquisition=acquisition, algorithm="nsga3" if acquisition == "lcb" else "nsga2")
    a = search(str(tiny_model_dir), str(text_file), str(tmp_path / "a.db"), settings)
    b = search(str(tiny_model_dir), str(text_file), str(tmp_path / "b.db"), settings)
    assert [e.config_key for e in a.evaluations] == [e.config_key for e in b.evaluations]
    assert [e.metrics for e in a.evaluations] == [e.metrics for e in b.evaluations]
    assert any(e.origin == "acquired" for e in a.evaluations)


def test_every_baseline_runs_at_the_same_budget(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "c.db"
    rows = compare(str(tiny_model_dir), str(text_file), str(store), _settings(evals=8, max_params=0.75))
    assert {r.method for r in rows} == set(DEFAULT_METHODS)  # evoprune and every baseline
    with Store(store) as st:
        for r in rows:
            evals = st.evaluations(r.run_id)
            assert 0 < len(evals) <= 8, r.method
            assert all(e.params_fraction <= 0.75 for e in evals), r.method
            assert r.best_value is not None and r.best_params_fraction <= 0.75
        # no method saw another's evaluations: each run's keys are its own rows
        assert len({st.get_run(r.run_id).run_key for r in rows}) == len(rows)


def test_failed_evaluations_are_stored_and_never_offered(tmp_path, tiny_tokenizer, text_file):
    """One MLP channel of layer 1 is NaN: configurations that keep it fail, the search goes on."""
    model = build_tiny_model("llama", seed=2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 7] = float("nan")
    path = tmp_path / "broken"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    result = search(str(path), str(text_file), str(tmp_path / "s.db"), _settings(evals=10, min_params=0.3))
    failed = [e for e in result.evaluations if e.status == "failed"]
    ok = [e for e in result.evaluations if e.status == "ok"]
    assert failed and ok and len(result.evaluations) == 10
    assert all("non-finite" in e.error for e in failed)
    assert all(e.levels[4 + 1] >= 1 for e in ok)  # only configurations that pruned the broken channel
    assert all(e.levels[4 + 1] == 0 for e in failed)
    runner = CliRunner()
    out = runner.invoke(app, ["pareto", "--store", str(tmp_path / "s.db"), "--json"])
    ids = {p["id"] for p in json.loads(out.stdout)["points"]}
    assert ids and not ids & {e.id for e in failed}


def test_config_file_flags_override_and_resume_needs_only_the_store(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    config = tmp_path / "search.toml"
    config.write_text(
        f'model = "{tiny_model_dir}"\ndata = "{text_file}"\nstore = "{store}"\nevals = 6\ninit = 4\nbatch = 2\n'
        "pop_size = 16\ngenerations = 5\nseed = 3\n[backend]\neval_tokens = 256\ncalib_tokens = 256\n"
        "seq_len = 64\nmlp_levels = 4\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--config", str(config), "--seed", "5"])
    assert result.exit_code == 0, result.output
    with Store(store) as st:
        run = st.get_run()
        assert run.settings["seed"] == 5 and run.settings["init"] == 4 and run.settings["backend"]["seq_len"] == 64
        assert len(st.evaluations(run.id)) == 6
    result = runner.invoke(app, ["resume", "--store", str(store), "--evals", "8"])
    assert result.exit_code == 0, result.output
    with Store(store) as st:
        assert len(st.runs()) == 1 and len(st.evaluations(st.get_run().id)) == 8
    # json = true in the file is --json (a newcomer's file was refused)
    config.write_text(config.read_text().replace("evals = 6", "evals = 8\njson = true"))
    result = runner.invoke(app, ["search", "--config", str(config), "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["points"]) >= 1
    bad = tmp_path / "bad.toml"
    bad.write_text("evalz = 3\n")
    result = runner.invoke(app, ["search", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown option 'evalz'" in result.output
    for line, fragment in (('evals = "ten"', "'evals' must be an integer"),
                           ("evals = 4\n[backend]\nseq_len = 6.5", "'seq_len' must be an integer"),
                           ('evals = 4\nrefine = "yes"', "'refine' must be true/false"),
                           ('evals = 4\njson = "false"', "'json' must be true/false"),
                           ("evals = 4\ncriterion = true", "'criterion' must be a string"),
                           ("evals = 4\nimportance = [1]", "'importance' must be a string"),
                           ("evals = 4\n[backend]\neval-tokenz = 3", "unknown option 'eval-tokenz'")):  # fmt: skip
        bad.write_text(line + "\n")
        result = runner.invoke(app, ["search", "--config", str(bad)])
        assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_plan_pareto_plot_report_and_export_from_a_pick(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    search(str(tiny_model_dir), str(text_file), str(store), _settings(evals=10, min_params=0.3))
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "--store", str(store), "--max-params", "0.8", "--json"])
    assert out.exit_code == 0, out.output
    chosen = json.loads(out.stdout)
    assert chosen["cost"]["params_fraction"] <= 0.8 and len(chosen["layers"]) == 4
    # its FLOPs and memory count the cost model's context, and say so (measure counts its --seq-len)
    assert chosen["cost"]["flops_context_tokens"] == chosen["cost"]["memory_context_tokens"] == 2048
    with Store(store) as st:
        measured = [e for e in st.evaluations(st.get_run().id) if e.status == "ok"]
    under = [e for e in measured if e.params_fraction <= 0.8]
    # the best under the budget by the highest fidelity each configuration reached (the ladder's),
    # among the contenders (the finalists, and any clearly better on the first rung)
    offsets = rung_offsets(measured, "ppl")
    best = min(contenders(under, "ppl"), key=lambda e: selection_value(e, "ppl", offsets))
    assert chosen["measured"]["ppl"] == best.metrics["ppl"]
    out = runner.invoke(app, ["plan", "--store", str(store), "--max-params", "0.75", "--spend", "3", "--json"])
    assert out.exit_code == 0, out.output
    spent = json.loads(out.stdout)
    assert spent["evaluations_spent"] == 3
    # A prediction reads as a perplexity, beside the surrogate's log-perplexity (it was the log alone,
    # under "ppl").
    with Store(store) as st:
        recorded = [e.predicted for r in st.runs() for e in st.evaluations(r.id) if e.predicted]
    assert recorded
    shown = prediction_on_metric_scale(recorded[0])
    assert shown["log_ppl"] == recorded[0]["ppl"] and shown["log_ppl_std"] == recorded[0]["std"]
    assert shown["ppl"] == pytest.approx(math.exp(recorded[0]["ppl"]))
    if spent["predicted"]:
        assert spent["predicted"]["ppl"] == pytest.approx(math.exp(spent["predicted"]["log_ppl"]))
    png = tmp_path / "front.png"
    out = runner.invoke(app, ["pareto", "--store", str(store), "--plot", str(png), "--max-params", "0.8"])
    assert out.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    out = runner.invoke(app, ["report", "--store", str(store), "--out", str(tmp_path / "report"), "--run", "1"])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "report" / "index.html").read_text()
    # front, levels, the search's predictions against its measurements, rounds
    assert page.count("data:image/png;base64,") == 4 and "Pareto front" in page
    assert "<h2>Surrogate predictions</h2>" in page and "recorded no predictions" not in page
    out = runner.invoke(app, ["export", "--store", str(store), "--run", "1", "--pick", "knee",
                              "--out", str(tmp_path / "export"), "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert (tmp_path / "export" / "model.safetensors").exists()
    out = runner.invoke(app, ["export", "--store", str(store), "--pick", "best", "--out", str(tmp_path / "export")])
    assert out.exit_code == 2 and "not empty" in out.output


def test_plan_spend_starts_from_the_stored_pairs_and_pareto_shows_them(tmp_path, tiny_model_dir, text_file):
    from evoprune.choice.plan import plan
    from evoprune.objectives.spec import Budget

    store = tmp_path / "s.db"
    # Which run's pairs make the front is chance on the tiny random model; nested rungs keep the
    # measurements this scenario was built on (both runs' pairs on the front).
    nested = replace(BACKEND, ladder_windows="nested")
    first = search(
        str(tiny_model_dir), str(text_file), str(store), _settings(evals=10, init=8, max_params=0.8, backend=nested)
    )
    result = plan(str(store), Budget(max_params=0.7), spend=6)
    assert result.spent == 6
    with Store(store) as st:
        focused = st.get_run()
        assert focused.id != first.run.id and focused.settings["max_params"] == 0.7
        own = st.evaluations(focused.id)
    # 10 stored pairs cover the space: the design is only the families at the new budget (no
    # hypercube), and the rest of the spend goes to rounds that predict before they measure.
    design = [e for e in own if e.origin == "design"]
    assert len(own) == 6 and len(design) <= 4
    assert all(e.predicted for e in own if e.origin == "acquired")
    assert any(e.origin != "design" for e in own)
    # the surrogate report of the focused run judges the surrogates on the pairs its search learned from
    from evoprune.reporting.surrogate_report import surrogate_report

    with Store(store) as st:
        report = surrogate_report(st, focused.id, ["additive"], folds=3)
        learned_from = [e for e in st.shared_evaluations(focused) if e.status == "ok"]
    assert report.n_pairs == len(learned_from) > len(own)
    assert report.recorded is None or report.recorded["n"] <= len(own)
    runner = CliRunner()
    out = runner.invoke(app, ["pareto", "--store", str(store), "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["run"] == focused.id
    assert {p["run"] for p in shown["points"]} == {first.run.id, focused.id}
    out = runner.invoke(app, ["pareto", "--store", str(store)], env={"COLUMNS": "200"})
    # each point the first run measured names it, whichever of its batches found it
    rows = {cells[1].strip(): line for line in out.output.splitlines() if len(cells := line.split("│")) > 2}
    for p in shown["points"]:
        if p["run"] == first.run.id:
            assert f"run {first.run.id}: " in rows[str(p["id"])], rows[str(p["id"])]
    # a pick the default (focused) run shares with the first run exports by its id
    theirs = next(p for p in shown["points"] if p["run"] == first.run.id)
    out = runner.invoke(app, ["export", "--store", str(store), "--pick", str(theirs["id"]),
                              "--out", str(tmp_path / "export"), "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["evaluation"] == theirs["id"]
    # --spend counts this call's evaluations only: at the first run's own budget (the focused
    # search inherits its --min-params) and again on the focused budget (which continues it)
    again = plan(str(store), Budget(max_params=0.8), spend=3)
    assert again.spent == 3
    more = plan(str(store), Budget(max_params=0.7), spend=2)
    with Store(store) as st:
        assert more.spent == 2 and len(st.evaluations(focused.id)) == 8
    # the spend run climbs and validates among the pairs it shares, so what plan answers with was
    # measured on the validation split, whichever run found it (it validated its own best before)
    with Store(store) as st:
        fractions = sorted({e.params_fraction for r in st.runs() for e in st.evaluations(r.id, "ok")})
    unvalidated = next(f for f in fractions if plan(str(store), Budget(max_params=f)).evaluation.validation is None)
    slight = plan(str(store), Budget(max_params=unvalidated), spend=1)
    for answer in (result, again, more, slight):
        assert answer.evaluation.validation is not None, answer.evaluation.id
    # a latency budget prices every stored configuration by the latency table, not only those a
    # latency-budgeted run recorded (none here)
    with Store(store) as st:
        ok = [e for e in st.shared_evaluations(st.get_run(first.run.id)) if e.status == "ok"]
    fastest = plan(str(store), Budget(max_latency_ms=1e6), run_id=first.run.id)
    assert fastest.candidates == len(ok) and fastest.cost["latency_ms"] > 0
    for bad, fragment in ((Budget(max_latency_ms=0), "--max-latency-ms must be a positive number"),
                          (Budget(max_latency_ms=float("inf")), "--max-latency-ms must be a positive number"),
                          (Budget(max_params=float("inf")), "--max-params must be finite"),
                          (Budget(max_memory="400"), "has no unit"),
                          (Budget(max_memory="0MB"), "must be positive"),
                          (Budget(max_memory="0"), "must be positive")):  # fmt: skip
        with pytest.raises(EvopruneError, match=fragment):
            plan(str(store), bad)
    # warm start off: a run sees only its own pairs
    alone = search(str(tiny_model_dir), str(text_file), str(store),
                   _settings(evals=4, init=4, max_params=0.75, warm_start=False))  # fmt: skip
    with Store(store) as st:
        assert {e.run_id for e in st.shared_evaluations(alone.run)} == {alone.run.id}


def test_synthetic_problem_front_bounds_every_search():
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    from evoprune.backend.synthetic import SyntheticPruning
    from evoprune.objectives.pareto import hypervolume_of

    problem = SyntheticPruning(n_var=10, levels=4, seed=1)
    front = problem.true_front()
    ref = np.array([front[:, 0].max() + 0.1, 1.01])
    repair = RoundingRepair()
    algo = NSGA2(40, sampling=IntegerRandomSampling(), crossover=SBX(vtype=float, repair=repair),
                 mutation=PM(vtype=float, repair=repair))  # fmt: skip
    res = minimize(problem, algo, ("n_gen", 40), seed=0)
    found, best = hypervolume_of(res.F, ref), hypervolume_of(front, ref)
    assert found <= best * 1.001
    assert found > 0.8 * best
    X = np.zeros((1, 10), dtype=int)
    assert problem.evaluate_exact(X)[0].tolist() == [0.0, 1.0]


def test_a_search_can_optimise_task_accuracy(tmp_path, tiny_model_dir, text_file):
    from tests.conftest import SHARED_DATA

    assert (SHARED_DATA / "arc_easy" / "ARC-Easy-Dev.jsonl").exists(), "../shared/data must be beside the project"
    settings = _settings(evals=7, init=4, batch=3, objectives="acc:arc_easy,params", task_limit=12)
    result = search(str(tiny_model_dir), str(text_file), str(tmp_path / "s.db"), settings)
    ok = [e for e in result.evaluations if e.status == "ok"]
    assert len(ok) == 7 and all(0 <= e.metrics["acc:arc_easy"] <= 1 for e in ok)
    assert any(e.origin == "acquired" for e in ok)
    # accuracies come in steps of 1/12: the same 12 questions judge every configuration
    assert all(abs(e.metrics["acc:arc_easy"] * 12 - round(e.metrics["acc:arc_easy"] * 12)) < 1e-9 for e in ok)
    # the front shows the accuracy it was chosen by, beside the perplexity
    shown = CliRunner().invoke(app, ["pareto", "--store", str(tmp_path / "s.db"), "--json"])
    best = max(json.loads(shown.stdout)["points"], key=lambda p: p["metrics"]["acc:arc_easy"])
    table = CliRunner().invoke(app, ["pareto", "--store", str(tmp_path / "s.db")], env={"COLUMNS": "100"})
    assert "acc arc_easy" in table.stdout and f"{best['metrics']['acc:arc_easy']:.3f}" in table.stdout


@pytest.fixture
def worker_executor():
    """An executor that evaluates, as a Ray worker does, on a backend of its own built from the
    pickled recipe; ``strip_tasks`` builds it as a recipe without task metrics did before."""
    import dataclasses
    import pickle

    from evoprune.execution.executors import EXECUTORS, LocalExecutor, register_executor

    @register_executor("worker-like")
    def _worker_like(backend, recipe=None, strip_tasks=False):
        recipe = pickle.loads(pickle.dumps(recipe))  # what crosses to a worker
        return LocalExecutor(dataclasses.replace(recipe, tasks=()).load() if strip_tasks else recipe.load())

    yield "worker-like"
    EXECUTORS.pop("worker-like", None)


def test_a_worker_built_from_the_recipe_reports_the_task_accuracies(
    tmp_path, tiny_model_dir, text_file, worker_executor
):
    """Workers build their backends from the recipe: its task metrics (acc:TASK objectives) must
    travel with it (a Ray search stored ppl and KL only, and stopped with nothing to learn from),
    and a row that still lacks one is failed, to be measured again, not a dead ok row."""
    settings = _settings(evals=4, init=4, objectives="acc:arc_easy,params", task_limit=6)
    here = search(str(tiny_model_dir), str(text_file), str(tmp_path / "here.db"), settings)
    there = search(str(tiny_model_dir), str(text_file), str(tmp_path / "there.db"), settings, executor=worker_executor)
    assert all("acc:arc_easy" in e.metrics for e in here.evaluations)
    assert [(e.config_key, e.metrics) for e in there.evaluations] == [
        (e.config_key, e.metrics) for e in here.evaluations
    ]

    store = str(tmp_path / "stripped.db")
    with pytest.raises(EvopruneError, match="reported no acc:arc_easy, an objective of this run.*--retry-failed"):
        search(str(tiny_model_dir), str(text_file), store, settings, executor=worker_executor,
               executor_options={"strip_tasks": True})  # fmt: skip
    with Store(store) as st:
        assert {e.status for e in st.evaluations(1)} == {"failed"}  # stored, to be measured again
    retried = search(str(tiny_model_dir), str(text_file), store, settings, retry_failed=True)
    assert [e.metrics for e in retried.evaluations] == [e.metrics for e in here.evaluations]


def test_retry_failed_measures_again_the_rows_that_lack_an_objective(tmp_path, tiny_model_dir, text_file):
    """A store where Ray workers stored acc:TASK runs' rows as ok with ppl and KL only (before
    2026-12-02): those rows are named, and ``retry_failed`` measures them again."""
    import sqlite3

    settings = _settings(evals=4, init=4, objectives="acc:arc_easy,params", task_limit=6)
    store = tmp_path / "s.db"
    here = search(str(tiny_model_dir), str(text_file), str(store), settings)
    with sqlite3.connect(store) as conn:  # as those workers stored them
        for e in here.evaluations[:2]:
            metrics = {k: v for k, v in e.metrics.items() if not k.startswith("acc")}
            conn.execute("UPDATE evaluations SET metrics=? WHERE id=?", (json.dumps(metrics), e.id))
    conn.close()
    events = []
    search(str(tiny_model_dir), str(text_file), str(store), settings, lambda event, **info: events.append(info))
    assert {"name": "2 rows lack an objective of the run: --retry-failed measures them again"} in events
    retried = search(str(tiny_model_dir), str(text_file), str(store), settings, retry_failed=True)
    assert retried.new_evaluations == 2
    assert [e.metrics for e in retried.evaluations] == [e.metrics for e in here.evaluations]


def test_plan_answers_by_the_runs_objective_as_export_does(tmp_path, tiny_model_dir, text_file):
    """plan chose by perplexity whatever the run optimised, while export --pick best chose by the
    run's first quality objective: for an acc:TASK run the two answered differently."""
    from evoprune.choice.plan import plan
    from evoprune.objectives.budget import pick_evaluation
    from evoprune.objectives.spec import Budget

    store = tmp_path / "s.db"
    search(str(tiny_model_dir), str(text_file), str(store),
           _settings(evals=6, init=6, objectives="acc:arc_easy,params", task_limit=12))  # fmt: skip
    budget = Budget(max_params=0.99)
    answer = plan(str(store), budget).evaluation
    with Store.open_existing(store, readonly=True) as st:
        run = st.get_run()
        picked = pick_evaluation(st, run, "best", budget)
        under = [e for e in st.evaluations(run.id) if e.status == "ok" and e.params_fraction <= 0.99]
    assert answer.id == picked.id
    assert answer.metrics["acc:arc_easy"] == max(e.metrics["acc:arc_easy"] for e in under)


def first_logit(backend) -> dict[str, float]:
    """An extra metric of the user's own (module level, so that plain pickle ships it): a logit
    of the model as pruned."""
    with torch.no_grad():
        return {"first_logit": float(backend.loaded.model(torch.tensor([[1, 2, 3]])).logits[0, -1, 0])}


def test_a_worker_built_from_the_recipe_reports_the_users_own_metrics(
    tmp_path, tiny_model_dir, text_file, worker_executor
):
    """Not only task accuracies: any callable in ``backend.extra_metrics`` reaches the workers
    (Ray's stored rows lacked it, without a word)."""
    from evoprune.engine.run import prepare_backend

    settings = _settings(evals=4, init=4)
    runs = {}
    for name, executor in (("here", "local"), ("there", worker_executor)):
        backend = prepare_backend(str(tiny_model_dir), str(text_file), settings)
        backend.extra_metrics.append(first_logit)
        runs[name] = search(str(tiny_model_dir), str(text_file), str(tmp_path / f"{name}.db"), settings,
                            backend=backend, executor=executor)  # fmt: skip
    assert all("first_logit" in e.metrics for e in runs["there"].evaluations)
    assert len({e.metrics["first_logit"] for e in runs["there"].evaluations}) > 1
    assert [e.metrics for e in runs["there"].evaluations] == [e.metrics for e in runs["here"].evaluations]


@pytest.mark.parametrize("criterion", ["flap", "obs"])
def test_a_budget_focuses_acquisition_just_under_it(tmp_path, tiny_model_dir, text_file, criterion):
    # under obs the fills of the band converged on evaluated configurations and acquisition left the band
    backend = replace(BACKEND, criterion=criterion)
    focused = search(
        str(tiny_model_dir),
        str(text_file),
        str(tmp_path / "f.db"),
        _settings(evals=14, max_params=0.7, min_params=0.0, backend=backend),
    )
    spread = search(
        str(tiny_model_dir),
        str(text_file),
        str(tmp_path / "s.db"),
        _settings(evals=14, max_params=0.7, min_params=0.0, focus=0.0, backend=backend),
    )
    near = [e.params_fraction for e in focused.evaluations if e.origin == "acquired"]
    wide = [e.params_fraction for e in spread.evaluations if e.origin == "acquired"]
    assert near and wide and max(near) <= 0.7
    assert min(near) > min(wide)
    assert np.median(near) >= 0.7 * 0.9


def test_multi_fidelity_screens_many_and_evaluates_the_best_screened(tmp_path, tiny_model_dir, text_file):
    from evoprune.engine.run import prepare_backend
    from evoprune.engine.run import search as run_search

    settings = _settings(evals=10, screen_tokens=64, screen_factor=3)
    backend = prepare_backend(str(tiny_model_dir), str(text_file), settings)
    result = run_search(str(tiny_model_dir), str(text_file), str(tmp_path / "m.db"), settings, backend=backend)
    with Store(tmp_path / "m.db") as st:
        screenings = st.screenings(result.run.id)
        rounds = st.rounds(result.run.id)
    assert screenings and all(sc.tokens == 64 for sc in screenings)
    acquired = [e for e in result.evaluations if e.origin == "acquired"]
    screened = {sc.config_key: sc for sc in screenings}
    assert acquired and all(e.config_key in screened for e in acquired)
    assert len(screenings) > len(acquired)  # more were screened than evaluated in full
    # each fidelity keeps its own result: one window vs all four
    e = acquired[0]
    assert screened[e.config_key].metrics["ppl"] == backend.evaluate(e.levels, tokens=64).metrics["ppl"]
    assert e.metrics["ppl"] == backend.evaluate(e.levels).metrics["ppl"]
    assert screened[e.config_key].metrics["ppl"] != e.metrics["ppl"]
    assert e.predicted["screen_ppl"] == pytest.approx(np.log(screened[e.config_key].metrics["ppl"]))
    # the surrogate of each round trained on full evaluations only
    for r in rounds:
        before = [x for x in result.evaluations if x.round < r["round"] and x.status == "ok"]
        assert r["n_train"] == len(before)
    # the best screened configuration of a round is evaluated in full, unless the batch already
    # holds a neighbour of it (select_batch keeps picks at least 2 levels apart)
    for round_ in {sc.round for sc in screenings}:
        ok = [sc for sc in screenings if sc.round == round_ and sc.status == "ok"]
        best = min(ok, key=lambda sc: sc.metrics["ppl"])
        full = [x for x in acquired if x.round == round_]
        assert best.config_key in {x.config_key for x in full} or any(
            np.abs(np.array(best.levels) - np.array(x.levels)).sum() < 2 for x in full
        )
    # a rerun measures nothing again, and from scratch the same seed gives the same search
    again = run_search(str(tiny_model_dir), str(text_file), str(tmp_path / "m.db"), settings, backend=backend)
    assert again.new_evaluations == 0
    with Store(tmp_path / "m.db") as st:
        assert len(st.screenings(result.run.id)) == len(screenings)
    fresh = run_search(str(tiny_model_dir), str(text_file), str(tmp_path / "n.db"), settings, backend=backend)
    assert [x.config_key for x in fresh.evaluations] == [x.config_key for x in result.evaluations]
    from evoprune.reporting.report import write_report

    with Store(tmp_path / "m.db") as st:
        page = write_report(st, tmp_path / "report").read_text()
    assert f"{len(screenings)} candidates screened on 64 tokens" in page
    assert f"{len(acquired)} of them went on to a full evaluation" in page


def test_screening_needs_fewer_tokens_than_a_full_evaluation(tmp_path, tiny_model_dir, text_file):
    result = CliRunner().invoke(
        app,
        ["search", "-m", str(tiny_model_dir), "-d", str(text_file), "-s", str(tmp_path / "x.db"), "-n", "4",
         "--eval-tokens", "256", "--seq-len", "64", "--screen-tokens", "256"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--screen-tokens must be 0 (off) or below --eval-tokens 256" in result.output
    assert not (tmp_path / "x.db").exists()


def test_a_store_refuses_a_model_whose_layers_differ_from_its_runs(tmp_path, tiny_model_dir, tiny_tokenizer, text_file):
    store = tmp_path / "s.db"
    search(str(tiny_model_dir), str(text_file), str(store), _settings(evals=3, init=3))
    deeper = tmp_path / "deeper"
    build_tiny_model("llama", num_layers=6).save_pretrained(deeper)
    tiny_tokenizer.save_pretrained(deeper)
    result = CliRunner().invoke(
        app, ["search", "-m", str(deeper), "-d", str(text_file), "-s", str(store), "-n", "3", "--eval-tokens", "256",
              "--calib-tokens", "256", "--seq-len", "64"],
    )  # fmt: skip
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert "holds runs of a different model" in message and "4 layers" in message and "6 layers" in message
    assert "use another --store" in message
    with Store(store) as st:
        assert len(st.runs()) == 1 and len(st.evaluations(st.runs()[0].id)) == 3


def test_without_a_progress_callback_the_library_logs(tmp_path, tiny_model_dir, text_file, caplog):
    caplog.set_level("INFO", logger="evoprune")
    result = search(str(tiny_model_dir), str(text_file), str(tmp_path / "s.db"), _settings(evals=2, init=2))
    messages = [r.getMessage() for r in caplog.records if r.name == "evoprune"]
    assert any(m.startswith("loading") for m in messages), messages
    for e in result.evaluations:
        assert f"evaluation {e.id}: {100 * e.params_fraction:.1f}% params, ppl {e.metrics['ppl']:.2f}" in messages
