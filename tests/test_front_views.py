"""What a newcomer found in how fronts and picks are shown (2026-12-02), each fixed and kept fixed:
`pareto --plot` and `report` drew a warm-started run's front from its own evaluations while the
`pareto` table chose among the pairs it shares; a `kl,params` run was shown as if by perplexity
(table column, plot axis and knee, plan's text); `compare` sorted by the noisy first rung while
saying the top rung decides; `plan --json` named an evaluation of another run without saying
which; and `pareto --json`'s help left out each point's `run`."""

from __future__ import annotations

import inspect
import json
import math
import re
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evoprune.choice.compare import CompareRow, choice_order
from evoprune.choice.plan import plan
from evoprune.engine.run import search
from evoprune.objectives.budget import pick_evaluation
from evoprune.objectives.pareto import (
    front_of,
    knee_index,
    knee_of,
    objectives,
    pareto_front,
    rung_offsets,
    selection_value,
)
from evoprune.objectives.spec import Budget, quality_from_value
from evoprune.reporting.plots import front_figure
from evoprune.store import Store
from tests.test_user_reports import BACKEND, _settings, evoprune_in_process


@pytest.fixture(scope="module")
def warm_store(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    """A search under 0.8 of the parameters, then `plan --spend 2` under 0.7: run 2 shares run 1's pairs."""
    path = tmp_path_factory.mktemp("warm") / "w.db"
    # Which run's pairs make the front is chance on the tiny random model; nested rungs keep the
    # measurements this scenario was built on (run 1's pairs on run 2's front).
    nested = replace(BACKEND, ladder_windows="nested")
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=6, max_params=0.8, backend=nested))
    assert plan(str(path), Budget(max_params=0.7), spend=2).spent == 2
    return path


@pytest.fixture(scope="module")
def kl_store(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    """One finished search with objectives kl,params."""
    path = tmp_path_factory.mktemp("kl") / "kl.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=6, objectives="kl,params"))
    return path


def _drawn_front(fig) -> tuple[list[float], list[float], int]:
    """(x, y) of the front line of a ``front_figure`` and the id its knee is labelled with."""
    ax = fig.axes[0]
    line = next(x for x in ax.get_lines() if x.get_label().startswith("Pareto front"))
    knee = next(t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("knee"))
    return list(line.get_xdata()), list(line.get_ydata()), int(re.search(r"#(\d+)", knee).group(1))


def test_the_plot_of_a_warm_started_run_draws_the_front_pareto_lists(warm_store):
    with Store.open_existing(warm_store, readonly=True) as st:
        run = st.get_run()
        points = pareto_front(st, run)
        shared = st.shared_evaluations(run)
        x, y, knee = _drawn_front(front_figure(st, run))
        ids = [p.id for p in points]
        front = [next(e for e in shared if e.id == i) for i in ids]
    assert run.id == 2 and {p.run for p in points} >= {1}  # the table's front holds run 1's pairs
    assert x == [p.params_fraction for p in points]
    offsets = rung_offsets(shared, "ppl")
    assert y == pytest.approx([quality_from_value("ppl", selection_value(e, "ppl", offsets)) for e in front])
    # The knee drawn is the one `export` picks by default: under run 2's budget (plan --spend 0.7),
    # not the knee of the whole front (newcomer report: the plot's knee was not the export's).
    with Store.open_existing(warm_store, readonly=True) as st:
        assert knee == pick_evaluation(st, run, "knee").id
    under = [e for e in front if e.params_fraction <= 0.7]
    assert knee == under[knee_index(objectives(under, ("ppl", "params")))].id
    # the report's front figure is the same one
    from evoprune.reporting.report import report_figures

    with Store.open_existing(warm_store, readonly=True) as st:
        assert _drawn_front(report_figures(st, run, None)["front"])[0] == x


def test_a_kl_run_is_shown_by_kl_in_the_table_the_plot_its_knee_and_plan(kl_store):
    with Store.open_existing(kl_store, readonly=True) as st:
        run = st.get_run()
        points = pareto_front(st, run)
        shared = st.shared_evaluations(run)
        fig = front_figure(st, run)
        x, y, knee = _drawn_front(fig)
        front = [next(e for e in shared if e.id == p.id) for p in points]
    assert fig.axes[0].get_ylabel().startswith("KL to the dense model")
    # the dense model's KL of ~0 (1e-8) does not stretch a log axis over eight decades
    assert fig.axes[0].get_yscale() == "symlog" and fig.axes[0].get_ylim()[0] < 1e-6
    assert x == [p.params_fraction for p in points]
    offsets = rung_offsets(shared, "kl")
    assert y == pytest.approx([quality_from_value("kl", selection_value(e, "kl", offsets)) for e in front])
    assert knee == points[knee_of(front, "kl")].id
    # the table: a kl column (and valid kl), no ppl column
    result = evoprune_in_process("pareto", "--store", str(kl_store))
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if " id " in line and "tokens" in line)
    assert re.search(r"\bkl\b", header) and "valid kl" in header and "ppl" not in header, header
    row = next(line for line in result.stdout.splitlines() if re.match(rf"\W*{points[0].id}\s", line))
    assert f"{max(points[0].fidelity['metrics']['kl'], 0.0):.4f}" in row, row
    assert "-0.0000" not in result.stdout  # the dense model's KL is 0 up to rounding noise, never negative
    # plan says what it chose by
    budget = str(max(p.params_fraction for p in points))
    result = evoprune_in_process("plan", "--store", str(kl_store), "--max-params", budget)
    assert result.returncode == 0, result.stderr
    assert "measured kl " in result.stdout and "measured ppl" not in result.stdout
    # the report's front table too: KL columns with the front's KL figures
    from evoprune.reporting.report import write_report

    with Store.open_existing(kl_store, readonly=True) as st:
        page = write_report(st, kl_store.parent / "report").read_text()
    front_table = page.split("<h2>Pareto front</h2>")[1].split("</table>")[0]
    assert "<th>KL</th>" in front_table and "<th>ppl</th>" not in front_table, front_table[:400]
    assert f"<td>{points[0].fidelity['metrics']['kl']:.4f}" in front_table


def _compare_row(method, first, top=None, valid=None):
    fidelity = {"tokens": 1024, "metrics": {"ppl": top}} if top is not None else None
    validation = {"tokens": 512, "metrics": {"ppl": valid}} if valid is not None else None
    return CompareRow(method, 1, 6, 0, 3, first, 0.7, 1.0, 1.0, best_fidelity=fidelity, best_validation=validation)


def test_compare_lists_methods_best_first_on_the_validation_split_in_the_table_and_json(monkeypatch, tmp_path):
    rows = [_compare_row("noisy", 10.0, 14.0, 13.0), _compare_row("steady", 12.0, 11.0, 11.5),
            _compare_row("first-only", 11.5, None, 12.0),
            CompareRow("owl", None, 0, 0, None, None, None, 0.0, None, skipped="no answer")]  # fmt: skip
    monkeypatch.setattr("evoprune.choice.compare.compare", lambda *a, **k: rows)
    args = ["compare", "--model", "m", "--store", str(tmp_path / "c.db"), "--evals", "6"]
    result = evoprune_in_process(*args, "--json")
    assert result.returncode == 0, result.stderr
    assert [r["method"] for r in json.loads(result.stdout)] == ["steady", "first-only", "noisy", "owl"]
    result = evoprune_in_process(*args)
    assert result.returncode == 0, result.stderr
    order = [m for line in result.stdout.splitlines() for m in re.findall(r"^\W*(steady|first-only|noisy)\b", line)]
    assert order == ["steady", "first-only", "noisy"], result.stdout


def test_compare_order_never_sets_figures_of_different_rungs_against_each_other():
    # without validation: the top rung when every pick reached the same one, else the first rung
    same_rung = [_compare_row("a", 10.0, 14.0), _compare_row("b", 12.0, 11.0)]
    assert [r.method for r in choice_order(same_rung)] == ["b", "a"]
    mixed = [_compare_row("a", 10.0, 14.0), _compare_row("b", 12.0, 11.0), _compare_row("c", 11.5)]
    assert [r.method for r in choice_order(mixed)] == ["a", "c", "b"]
    partly_validated = [_compare_row("a", 10.0, 14.0, 20.0), _compare_row("b", 12.0, 11.0)]
    assert [r.method for r in choice_order(partly_validated)] == ["b", "a"]
    # a collapsed pick's validation figure sends every row to the next common figure, and it sorts last there
    collapsed = [_compare_row("a", 10.0, 14.0, 12.0), _compare_row("b", 12.0, 11.0, 13.0),
                 _compare_row("c", math.inf, math.inf, math.inf)]  # fmt: skip
    assert [r.method for r in choice_order(collapsed)] == ["a", "b", "c"]


def test_plan_json_names_the_run_of_the_evaluation_it_chose(warm_store):
    with Store.open_existing(warm_store, readonly=True) as st:
        firsts = sorted({e.params_fraction for e in st.evaluations(1, "ok")})
    # a budget whose answer run 1 measured, planned from run 2 (the latest)
    budget = next(f for f in firsts if plan(str(warm_store), Budget(max_params=f)).evaluation.run_id == 1)
    result = evoprune_in_process("plan", "--store", str(warm_store), "--max-params", str(budget), "--json")
    assert result.returncode == 0, result.stderr
    chosen = json.loads(result.stdout)
    assert chosen["run"] == 2 and chosen["evaluation_run"] == 1
    with Store.open_existing(warm_store, readonly=True) as st:
        assert chosen["evaluation"] in {e.id for e in st.evaluations(1)}
    result = evoprune_in_process("plan", "--store", str(warm_store), "--max-params", str(budget))
    assert f"--run 1 --pick {chosen['evaluation']} " in result.stdout


def test_the_json_help_of_pareto_and_plan_names_each_points_run():
    from evoprune.cli.choice import pareto_command, plan_command

    pareto_help = inspect.signature(pareto_command).parameters["as_json"].default.help
    assert "points: [{id, run, params" in pareto_help
    assert "evaluation_run" in inspect.signature(plan_command).parameters["as_json"].default.help


def test_the_knee_of_a_kl_front_is_not_pulled_to_the_dense_model():
    from evoprune.store import Evaluation

    # The dense model's KL of ~0 (floored to 1e-8) on a log axis made the knee 95% kept.
    kept = [1, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    kl = [0, 0.02, 0.05, 0.15, 0.4, 1, 2.5]
    front = [
        Evaluation(i, 1, str(i), [], "ok", "design", 0, 0, kept[i], {"kl": kl[i]}, {}, None, None, "", None, None)
        for i in range(len(kept))
    ]
    assert knee_index(objectives(front, ("kl", "params"))) == 1  # what it was
    assert front[knee_of(front, "kl")].params_fraction in (0.8, 0.7)


def test_the_front_plot_marks_the_runs_own_budget_unless_told_another(warm_store):
    from evoprune.reporting.plots import budget_lines_of
    from evoprune.reporting.report import report_figures

    with Store.open_existing(warm_store, readonly=True) as st:
        run = st.get_run()  # plan --spend's search under 0.7
        assert budget_lines_of(run) == [0.7]
        assert budget_lines_of(run, 0.6) == [0.6]
        assert budget_lines_of(run, 0.5 * run.dense_params) == [0.5]  # a count, as --max-params takes it
        figure = report_figures(st, run, None)["front"]
    drawn = [x for x in figure.axes[0].get_lines() if x.get_label().startswith("budget")]
    assert [line.get_xdata()[0] for line in drawn] == [0.7]


def test_the_surrogate_report_of_a_kl_run_scores_predictions_of_log_kl(kl_store):
    # it read perplexity whatever the run's objective, so it scored a kl run's surrogate against ppl
    from evoprune.reporting.surrogate_report import run_pairs, surrogate_report

    with Store.open_existing(kl_store, readonly=True) as st:
        run = st.get_run()
        pairs = run_pairs(st, run)
        report = surrogate_report(st, run, ["forest"], folds=2)
    ok = [e for e in st_evaluations(kl_store) if e.status == "ok"]
    assert pairs.objective == "kl" and len(pairs.target) == len(ok) >= 6
    assert pairs.target == pytest.approx([np.log(max(e.metrics["kl"], 1e-8)) for e in pairs.evaluations])
    assert report.target == "log KL divergence" and report.scores[0].error is None
    result = evoprune_in_process("surrogate", "report", "--store", str(kl_store), "--surrogates", "forest")
    assert result.returncode == 0, result.stderr
    assert "target: log KL divergence" in " ".join(result.stdout.split())


def st_evaluations(path: Path) -> list:
    with Store.open_existing(path, readonly=True) as st:
        return st.evaluations(st.get_run().id)


def test_the_plot_marks_the_knee_export_picks_under_the_runs_budget(warm_store, tmp_path):
    # Newcomer report: after `plan --spend` under 0.7 the plot marked the knee of the whole front,
    # above the budget line, where `export` (default --pick knee) exported another configuration.
    path = tmp_path / "w.db"
    shutil.copy2(warm_store, path)
    with Store.open_existing(path, readonly=True) as st:
        run = st.get_run()
        front = front_of(st.shared_evaluations(run), ("ppl", "params"))
        whole = front[knee_of(front, "ppl")]
    assert 0 < front.index(whole) < len(front) - 1  # an inner knee: members keep less than it
    # The run's budget, moved to just under that knee.
    settings = {**run.settings, "max_params": whole.params_fraction - 1e-6}
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET settings = ? WHERE id = ?", (json.dumps(settings), run.id))
    with Store.open_existing(path, readonly=True) as st:
        run = st.get_run()
        exported = pick_evaluation(st, run, "knee")
        fig = front_figure(st, run)
    label = next(t.get_text() for t in fig.axes[0].get_legend().get_texts() if t.get_text().startswith("knee"))
    assert exported.id != whole.id and exported.params_fraction < whole.params_fraction
    assert label == f"knee under the budget (#{exported.id})"
