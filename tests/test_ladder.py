"""The fidelity ladder: promotion to more tokens, validation of the picks, choice by fidelity,
resumption after SIGKILL, and stores written before the ladder existed."""

from __future__ import annotations

import json
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evoprune.backend.settings import BackendSettings
from evoprune.engine.active_learning import ActiveLearning
from evoprune.engine.context import SearchContext
from evoprune.engine.ladder import FidelityLadder
from evoprune.engine.run import prepare_backend, search
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError
from evoprune.objectives.pareto import best_of, rung_offsets, selection_value
from evoprune.objectives.spec import Objectives
from evoprune.store import Evaluation, Store
from tests.test_cli import _assert_clean_usage_error, evoprune, small_inner_search

BACKEND = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4, ladder="1024")
OLD_STORE = Path(__file__).parent / "data" / "store_v1.db"


def _layout(layout: str) -> BackendSettings:
    return replace(BACKEND, ladder_windows=layout)


def _settings(**kw) -> SearchSettings:
    base = dict(evals=12, init=6, batch=3, pop_size=24, generations=8, max_params=0.8, backend=BACKEND)
    base.update(kw)
    return SearchSettings(**base)


def _fidelity_rows(store: Path) -> list[tuple]:
    con = sqlite3.connect(store)
    try:
        return con.execute(
            "SELECT f.id, e.config_key, f.split, f.tokens, f.status, f.metrics, f.finished_at "
            "FROM fidelities f JOIN evaluations e ON e.id = f.eval_id ORDER BY f.id"
        ).fetchall()
    except sqlite3.OperationalError:  # the table is created with the run
        return []
    finally:
        con.close()


def test_a_promoted_configuration_keeps_one_row_per_fidelity(tmp_path, tiny_model_dir, text_file):
    path = tmp_path / "s.db"
    result = search(str(tiny_model_dir), str(text_file), str(path), _settings())
    with Store(path) as st:
        evals = st.evaluations(result.run.id)
        rows = st.fidelities(result.run.id)
    # The same search again has nothing left to do, on the ladder either.
    search(str(tiny_model_dir), str(text_file), str(path), _settings())
    with Store(path) as st:
        assert st.fidelities(result.run.id) == rows
    promoted = [e for e in evals if e.ladder]
    assert promoted, "the contenders under the budget climb to the next rung"
    assert all(set(e.ladder) == {1024} for e in promoted)
    keys = [(f.eval_id, f.split, f.tokens) for f in rows]
    assert len(keys) == len(set(keys)), "one row per configuration and fidelity"
    for e in promoted:
        first, rung = e.metrics, e.ladder[1024]
        assert first["tokens"] == 4 * 63 and rung["tokens"] == 16 * 63  # windows x predicted tokens
        assert first["ppl"] != rung["ppl"] and rung["ppl_se"] > 0
        assert all(e.params_fraction <= 0.8 for e in promoted)
    # The pick is the best under the budget by the highest rung reached, and only it is validated.
    validated = [e for e in evals if e.validation is not None]
    feasible = [e for e in evals if e.status == "ok" and e.params_fraction <= 0.8]
    assert [e.id for e in validated] == [best_of(feasible, "ppl").id]
    assert validated[0].validation["tokens"] == 512 and validated[0].validation["metrics"]["ppl_se"] > 0


@pytest.mark.parametrize("layout", ["disjoint", "nested"])
def test_validation_windows_are_disjoint_from_rungs_and_calibration(tiny_model_dir, text_file, layout):
    backend = prepare_backend(str(tiny_model_dir), str(text_file), _settings(backend=_layout(layout)))
    s = backend.settings
    rung = backend.search_windows[backend.rung_span(1024)]
    assert backend.eval_windows.numel() == 256 and rung.numel() == 1024
    assert backend.search_windows.numel() == (1280 if layout == "disjoint" else 1024)
    assert backend.validation_skip == s.search_tokens + s.calib_tokens
    assert backend.validation_windows().numel() == s.validation_token_count == 512
    assert backend.search_windows[: len(backend.eval_windows)].equal(backend.eval_windows)
    if layout == "disjoint":  # the rung reads none of the windows that promoted a configuration to it
        assert rung.equal(backend.search_windows[4:])
    else:  # the rung extends the first rung: how runs recorded before disjoint rungs measured
        assert rung[:4].equal(backend.eval_windows)
    assert not backend.validation_windows()[0].equal(backend.search_windows[0])


def test_a_disjoint_rung_is_measured_on_its_own_windows_against_their_dense_reference(tiny_model_dir, text_file):
    backend = prepare_backend(str(tiny_model_dir), str(text_file), _settings())
    rung = backend.search_windows[backend.rung_span(1024)]
    x = np.array(backend.space.lower)
    x[len(x) // 2 :] = 2  # MLP channels pruned: a figure that depends on the windows
    m = backend.evaluate(x, 1024)
    assert m.metrics["ppl"] == backend.evaluate_on(x, rung).metrics["ppl"]
    assert m.metrics["ppl"] != backend.evaluate(x).metrics["ppl"]
    # The dense model against a reference of other windows would have a large KL.
    dense = backend.evaluate(np.array(backend.space.lower), 1024)
    assert dense.metrics["kl"] < 1e-5
    with pytest.raises(EvopruneError, match="no rung of this run's ladder"):
        backend.rung_span(512)


def test_runs_recorded_before_disjoint_rungs_keep_their_windows_and_identity():
    record = BACKEND.identity()
    record.pop("ladder_windows")  # what a store of the previous main recorded
    old = BackendSettings.from_record(record)
    assert old.ladder_windows == "nested" and old.identity() == record and old.search_tokens == 1024
    assert BackendSettings.from_record(BACKEND.identity()) == BACKEND
    with pytest.raises(EvopruneError, match="ladder_windows 'overlap' is unknown"):
        replace(BACKEND, ladder_windows="overlap").validate()


def test_the_surrogate_learns_from_the_first_rung_only(tmp_path, tiny_model_dir, text_file):
    path = tmp_path / "s.db"
    settings = _settings()
    search(str(tiny_model_dir), str(text_file), str(path), settings)
    backend = prepare_backend(str(tiny_model_dir), str(text_file), settings)
    with Store(path) as st:
        ctx = SearchContext(backend, st, settings)
        ctx.open_run()
        X, targets = ActiveLearning()._train(ctx)
        ok = [e for e in ctx.evaluations() if e.status == "ok"]
    assert any(e.ladder for e in ok)
    assert np.allclose(targets["ppl"], [math.log(e.metrics["ppl"]) for e in ok])
    assert [list(x) for x in X] == [e.levels for e in ok]


def _evaluation(i: int, first: float, rung: float | None, se: float = 0.01) -> Evaluation:
    return Evaluation(
        id=i, run_id=1, config_key=str(i), levels=[0, 0], status="ok", origin="design", round=0, params=1,
        params_fraction=0.8, metrics={"ppl": first, "nll_se": se}, cost={}, predicted=None, error=None,
        created_at="", finished_at=None, duration_s=None,
        ladder={} if rung is None else {8192: {"ppl": rung, "nll_se": se / 2}},
    )  # fmt: skip


def test_choice_uses_the_highest_fidelity_on_the_first_rungs_scale():
    # a is best on the first rung but worse than b on the larger rung; c never climbed.
    a, b, c = _evaluation(1, 10.0, 12.0), _evaluation(2, 11.0, 11.5), _evaluation(3, 14.0, None)
    offsets = rung_offsets([a, b, c], "ppl")
    assert offsets[8192] == pytest.approx((math.log(1.2) + math.log(11.5 / 11)) / 2)
    assert best_of([a, b, c], "ppl").id == 2
    assert selection_value(c, "ppl", offsets) == pytest.approx(math.log(14.0))
    assert selection_value(b, "ppl", offsets) < selection_value(a, "ppl", offsets)


def test_without_a_ladder_nothing_climbs_and_the_picks_are_still_validated(tmp_path, tiny_model_dir, text_file):
    path = tmp_path / "s.db"
    settings = _settings(backend=BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, ladder="none"))
    result = search(str(tiny_model_dir), str(text_file), str(path), settings)
    with Store(path) as st:
        rows = st.fidelities(result.run.id)
    assert rows and {f.split for f in rows} == {"validation"}


def test_pareto_json_carries_fidelity_standard_error_and_validation(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    args = ["search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
            "--evals", "10", "--init", "6", "--batch", "2", "--eval-tokens", "256", "--calib-tokens", "256",
            "--seq-len", "64", "--mlp-levels", "4", "--ladder", "1024", "--validation-tokens", "256",
            *small_inner_search(tmp_path)]  # fmt: skip
    result = evoprune(*args)
    assert result.returncode == 0, result.stderr
    assert "valid ppl" in result.stdout and "±" in result.stdout
    out = evoprune("pareto", "--store", str(store), "--json")
    assert out.returncode == 0, out.stderr
    points = json.loads(out.stdout)["points"]
    for p in points:
        assert p["metrics"]["ppl_se"] > 0 and p["fidelity"]["tokens"] in (256, 1024)
        assert p["fidelity"]["metrics"]["ppl_se"] > 0
    # Without a budget the front climbs once, at the end: a batch of it spread along the front (both
    # ends of the pruned part included, the dense model left out); and a batch spread along it (both
    # ends included) is validated, on 256 tokens as asked.
    climbed = {p["id"] for p in points if p["fidelity"]["tokens"] == 1024}
    pruned = [p for p in points if p["params_fraction"] < 1]
    # ... and the knee, `export`'s default pick (test_without_a_budget_the_knee_climbs_and_is_validated)
    from evoprune.objectives.budget import pick_evaluation

    with Store(store) as st:
        knee = pick_evaluation(st, st.get_run(), "knee")
    assert pruned and climbed == {pruned[0]["id"], pruned[-1]["id"]} | (
        {knee.id} if knee.params_fraction < 1 else set()
    )
    validated = [p for p in points if p["validation"]]
    assert {points[0]["id"], points[-1]["id"], knee.id} == {p["id"] for p in validated}
    assert all(p["validation"]["tokens"] == 256 and p["validation"]["metrics"]["ppl"] > 1 for p in validated)


def test_a_ladder_that_does_not_climb_is_refused(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    result = evoprune("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
                      "--evals", "4", "--eval-tokens", "256", "--seq-len", "64", "--ladder", "128")  # fmt: skip
    _assert_clean_usage_error(result, "--ladder")
    assert not store.exists()


def test_sigkill_in_the_middle_of_the_ladder_loses_and_repeats_nothing(tmp_path, tiny_model_dir, text_file):
    def command(store: Path) -> list[str]:
        return [
            sys.executable, "-m", "evoprune", "search", "--model", str(tiny_model_dir), "--data", str(text_file),
            "--store", str(store), "--evals", "12", "--init", "6", "--batch", "3", "--max-params", "0.8",
            "--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--mlp-levels", "4",
            "--ladder", "8192", "--validation-tokens", "4096",
        ]  # fmt: skip

    whole = tmp_path / "whole.db"
    assert subprocess.run(command(whole), capture_output=True, timeout=300).returncode == 0
    killed = tmp_path / "killed.db"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, at_kill = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            at_kill = _fidelity_rows(killed)
        except sqlite3.OperationalError:
            continue
        if any(r[4] == "ok" for r in at_kill):  # the ladder has begun and measured something
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _fidelity_rows(killed)
    final_whole = _fidelity_rows(whole)
    assert any(r[4] == "ok" for r in at_kill) and len(at_kill) < len(final_whole), "not killed mid-ladder"

    assert subprocess.run(command(killed), capture_output=True, timeout=300).returncode == 0
    rows = _fidelity_rows(killed)
    by_id = {r[0]: r for r in rows}
    for r in at_kill:
        if r[4] != "pending":  # every measurement finished before the kill is kept as it was
            assert by_id[r[0]] == r
    assert all(r[4] == "ok" for r in rows)
    # The same decisions as a search that was never interrupted, each measured once.
    assert sorted(r[1:4] for r in rows) == sorted(r[1:4] for r in final_whole)
    assert {r[1:4]: json.loads(r[5]) for r in rows} == {r[1:4]: json.loads(r[5]) for r in final_whole}


def test_a_store_written_before_the_ladder_still_opens(tmp_path):
    store = tmp_path / "old.db"
    shutil.copy(OLD_STORE, store)
    out = evoprune("pareto", "--store", str(store), "--json")
    assert out.returncode == 0, out.stderr
    points = json.loads(out.stdout)["points"]
    assert points and all(p["fidelity"]["tokens"] == 256 and p["validation"] is None for p in points)
    table = evoprune("pareto", "--store", str(store))
    assert table.returncode == 0 and "Pareto front" in table.stdout, table.stderr
    plan = evoprune("plan", "--store", str(store), "--max-params", "0.8", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["measured"]["ppl"] > 1


class _NoBudgetLadder(FidelityLadder):
    """The ladder of a run searched without a budget, over a real store; a rung "measures" a
    configuration as 0.9x its first-rung perplexity."""

    def __init__(self, store: Store, run):
        self.store, self.run = store, run
        self.objectives = Objectives.parse("ppl,params")
        self.constraint_names = ()
        self.settings = SimpleNamespace(batch=4)
        self.backend = SimpleNamespace(settings=SimpleNamespace(ladder_tokens=(1024,), validation_token_count=512))
        self.measured: list[tuple[str, int]] = []
        self.factor: dict[int, float] = {}  # eval id -> its rung figure over its first rung's (default 0.9)

    def shared_evaluations(self):
        return self.store.shared_evaluations(self.run)

    def evaluate_pending_fidelities(self) -> float:
        for f in self.store.fidelities(self.run.id, status="pending"):
            ppl = self.factor.get(f.eval_id, 0.9) * self.store.evaluation(f.eval_id).metrics["ppl"]
            self.store.finish_fidelity(f.id, ok=True, metrics={"ppl": ppl, "nll": math.log(ppl)}, error=None,
                                       duration_s=0.0)  # fmt: skip
            self.measured.append((f.split, f.eval_id))
        return 0.0


def test_without_a_budget_the_knee_climbs_and_is_validated(tmp_path):
    # `export`'s default pick is the knee: a newcomer's export of the main job's store reported it on
    # the first rung's 2,048 tokens, unvalidated, while members spread along the front had climbed.
    from evoprune.objectives.pareto import front_of, knee_of

    with Store(tmp_path / "s.db") as st:
        run, _ = st.get_or_create_run("k", model="m", model_fingerprint="f", data="d", data_fingerprint="g",
                                      dense_params=1000, space={}, settings={}, versions={})  # fmt: skip
        for i, (kept, ppl) in enumerate([(1.0, 10), (0.9, 10.2), (0.8, 10.5), (0.7, 11), (0.6, 20), (0.5, 40)]):
            eid = st.add_pending(run.id, f"c{i}", [i], "design", 0, int(1000 * kept), kept)
            st.finish(eid, ok=True, metrics={"ppl": ppl, "nll": math.log(ppl)}, error=None, duration_s=1.0)
        front = front_of(st.shared_evaluations(run))
        knee = front[knee_of(front, "ppl")]
        ladder = _NoBudgetLadder(st, run)
        ladder.promote(round_=1, limit=2)
        climbed = {eid for split, eid in ladder.measured if split == "search"}
        spread = {front[1].id, front[-1].id}  # the pruned ends
        assert knee.id not in spread and climbed == spread | {knee.id}
        ladder.validate_picks(round_=1)
        validated = {eid for split, eid in ladder.measured if split == "validation"}
        assert knee.id in validated


def test_without_a_budget_the_knee_the_ladder_leaves_climbs_too(tmp_path):
    # In the main job the knee moved once the climbers' figures did (#8 climbed, the knee became #14,
    # measured on 2,048 tokens): the knee of the front as the ladder leaves it climbs as well.
    from evoprune.objectives.pareto import front_of, knee_of

    with Store(tmp_path / "s.db") as st:
        run, _ = st.get_or_create_run("k", model="m", model_fingerprint="f", data="d", data_fingerprint="g",
                                      dense_params=1000, space={}, settings={}, versions={})  # fmt: skip
        levels = [(1.0, 10), (0.9, 10.2), (0.8, 10.5), (0.75, 10.8), (0.7, 11), (0.6, 20), (0.5, 40)]
        for i, (kept, ppl) in enumerate(levels):
            eid = st.add_pending(run.id, f"c{i}", [i], "design", 0, int(1000 * kept), kept)
            st.finish(eid, ok=True, metrics={"ppl": ppl, "nll": math.log(ppl)}, error=None, duration_s=1.0)
        first = front_of(st.shared_evaluations(run))
        knee = first[knee_of(first, "ppl")]
        ladder = _NoBudgetLadder(st, run)
        ladder.factor = {knee.id: 1.6}  # the first knee climbs and turns out worse than its first rung said
        ladder.promote(round_=1, limit=3)
        final = front_of(st.shared_evaluations(run))
        moved = final[knee_of(final, "ppl")]
        assert moved.id != knee.id and 1024 in {int(t) for t in moved.ladder}
