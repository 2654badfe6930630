"""What a newcomer found with memory and latency budgets (2026-12-03), each fixed and kept fixed:
`export --pick best|knee` read only a parameter budget (a memory-budget run "searched without
one"), `plan` advised `--spend` on a budget no configuration can meet, plan printed "memory 0 MB"
for a model under a megabyte, and the FLOPs of `plan --json` and `measure --json` did not say
which context length they count."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evoprune.choice.plan import plan
from evoprune.engine.run import search
from evoprune.errors import EvopruneError
from evoprune.objectives.budget import pick_evaluation
from evoprune.objectives.cost import CostModel
from evoprune.objectives.spec import Budget
from evoprune.space import SearchSpace
from evoprune.store import Store
from tests.test_user_reports import _one_line_error, _settings, evoprune_in_process

LIMIT = "1.2MB"  # the tiny Llama: 2.7 MB dense with its KV cache at 2048 tokens in float32, 0.1 MB at the smallest


@pytest.fixture(scope="module")
def memory_store(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    """A store holding one search under --max-memory 1.2MB and no parameter budget."""
    path = tmp_path_factory.mktemp("memory-budget") / "mem.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=6, max_memory=LIMIT))
    return path


def _memory(run, e) -> int:
    return CostModel(SearchSpace.from_dict(run.space)).cost(e.levels).memory_bytes


def test_export_pick_best_is_plans_answer_under_the_runs_memory_budget_or_a_given_one(memory_store, tmp_path):
    with Store.open_existing(memory_store, readonly=True) as st:
        run = st.get_run()
        evals = [e for e in st.evaluations(run.id) if e.status == "ok"]
    assert run.settings["max_params"] is None and run.settings["max_memory"] == LIMIT
    planned = plan(str(memory_store), Budget(max_memory=LIMIT)).evaluation
    assert _memory(run, planned) <= 1.2e6
    # No budget option: the run's own (its memory budget), as plan answers it.
    result = evoprune_in_process("export", "--store", str(memory_store), "--pick", "best", "--out",
                                 str(tmp_path / "best"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["evaluation"] == planned.id
    # A given --max-memory overrides it: under one that the plan's answer breaks, the answer changes with plan's.
    tighter = f"{_memory(run, planned) - 1}B"
    lighter = [e for e in evals if _memory(run, e) <= _memory(run, planned) - 1]
    assert lighter  # the search measured lighter configurations than the best
    want = plan(str(memory_store), Budget(max_memory=tighter)).evaluation
    result = evoprune_in_process("export", "--store", str(memory_store), "--pick", "best", "--max-memory", tighter,
                                 "--out", str(tmp_path / "tighter"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["evaluation"] == want.id != planned.id
    with Store.open_existing(memory_store, readonly=True) as st:
        knee = pick_evaluation(st, run, "knee", Budget(max_memory=tighter))
    assert _memory(run, knee) <= _memory(run, planned) - 1
    with Store.open_existing(memory_store, readonly=True) as st:
        assert _memory(run, pick_evaluation(st, run, "knee")) <= 1.2e6  # knee: under the run's budget too
        # An id over a given memory budget is refused, naming it.
        heaviest = max(evals, key=lambda e: _memory(run, e))
        with pytest.raises(EvopruneError, match=f"evaluation {heaviest.id} needs .* over --max-memory 100kB"):
            pick_evaluation(st, run, str(heaviest.id), Budget(max_memory="100kB"))


def test_an_impossible_budget_says_so_instead_of_advising_spend(memory_store, tmp_path):
    out = tmp_path / "x"
    for args in (
        ["plan", "--store", str(memory_store), "--max-memory", "0.1MB"],
        ["export", "--store", str(memory_store), "--pick", "best", "--max-memory", "0.1MB", "--out", str(out)],
    ):  # fmt: skip
        result = evoprune_in_process(*args)
        _one_line_error(result, "the budget is impossible", "above the limit 100 kB")
        assert "--spend" not in result.stderr
    assert not out.exists()
    # A possible budget nothing evaluated meets still points to --spend.
    result = evoprune_in_process("plan", "--store", str(memory_store), "--max-memory", "110kB")
    if "impossible" not in result.stderr:
        _one_line_error(result, "no evaluated configuration meets the budget (--max-memory 110kB)", "--spend N")


def test_plan_shows_memory_under_a_megabyte_says_how_to_export_and_what_context_its_flops_count(memory_store):
    result = evoprune_in_process("plan", "--store", str(memory_store), "--max-memory", LIMIT)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "memory 0 MB" not in text and re.search(r"memory \d+(\.\d+)? kB at 2048 tokens of KV cache", text), text
    answer = plan(str(memory_store), Budget(max_memory=LIMIT))
    e = answer.evaluation
    command = f"evoprune export --store {memory_store} --run {e.run_id} --pick {e.id} --out DIR"
    assert command in result.stdout.splitlines()  # one line, to copy whole
    cost = answer.to_dict()["cost"]
    assert cost["flops_context_tokens"] == cost["memory_context_tokens"] == 2048


def test_recover_finalists_are_plans_order_under_the_runs_memory_budget_or_a_given_one(memory_store):
    from evoprune.recovery.finalists import finalists_of

    # recover --finalists read --max-params only: a memory-budget run needed a parameter budget made up
    with Store.open_existing(memory_store, readonly=True) as st:
        run = st.get_run()
    _, own, budget = finalists_of(memory_store, None, 3)
    assert budget.max_memory == LIMIT and own[0].id == plan(str(memory_store), Budget(max_memory=LIMIT)).evaluation.id
    assert len(own) == 3 and all(_memory(run, e) <= 1.2e6 for e in own)
    tighter = f"{_memory(run, own[0]) - 1}B"
    _, given, _ = finalists_of(memory_store, Budget(max_memory=tighter), 2)
    assert given[0].id == plan(str(memory_store), Budget(max_memory=tighter)).evaluation.id != own[0].id
    _one_line_error(evoprune_in_process("recover", "--finalists", "1", "--store", str(memory_store), "--data",
                                        "builtin", "--out", "unused", "--max-memory", "10B"),
                    "the budget is impossible")  # fmt: skip


def test_plan_without_a_budget_option_answers_under_the_runs_own_as_export_does(memory_store):
    result = evoprune_in_process("plan", "--store", str(memory_store), "--json")
    assert result.returncode == 0, result.stderr
    with Store.open_existing(memory_store, readonly=True) as st:
        best = pick_evaluation(st, st.get_run(), "best")  # export --pick best without a budget option
    assert (
        json.loads(result.stdout)["evaluation"]
        == best.id
        == plan(str(memory_store), Budget(max_memory=LIMIT)).evaluation.id
    )
