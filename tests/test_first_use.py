"""What a newcomer tripped over on first use (2026-12-01), each fixed and kept fixed: budgets that are
neither a fraction nor a count, a budget ignored by `export --pick knee`, `evaluate --out` a
directory, click's own usage errors, a misspelled model name, silence in a log file, the export's
figures and file modes, and a refused `recover` leaving its lock file behind."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from rich.console import Console

from evoprune.cli.common import _SearchProgress
from evoprune.engine.run import search
from evoprune.errors import EvopruneError
from evoprune.objectives.budget import pick_evaluation
from evoprune.objectives.spec import check_max_params, params_fraction
from evoprune.store import Store
from tests.test_user_reports import SEARCH_ARGS, _one_line_error, _settings, evoprune, evoprune_in_process


@pytest.fixture(scope="module")
def searched_store(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    path = tmp_path_factory.mktemp("first-use") / "s.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=8))
    return path


def test_a_budget_is_a_kept_fraction_or_a_parameter_count_and_nothing_else(searched_store, tiny_model_dir, text_file):
    assert params_fraction(0.7, 1000) == 0.7 and params_fraction(90e6, 120e6) == 0.75
    for bad, message in ((1.5, "neither a kept fraction"), (70, "neither"), (2e9 + 0.5, "neither"), (0, "positive")):
        with pytest.raises(EvopruneError, match=message):
            check_max_params(bad)
    with pytest.raises(EvopruneError, match="more than the model's 1,000 parameters"):
        params_fraction(5000, 1000)
    store = str(searched_store)
    for args in (
        ["plan", "--store", store, "--max-params", "1.5"],
        ["export", "--store", store, "--pick", "best", "--max-params", "2", "--out", "unused"],
        ["search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", store, "--evals", "9",
         "--max-params", "1.5", *SEARCH_ARGS],
    ):  # fmt: skip
        _one_line_error(evoprune_in_process(*args), "is neither a kept fraction", "90e6")
    _one_line_error(
        evoprune_in_process("pareto", "--store", store, "--max-params", "0.7"), "budget line on --plot", "plan"
    )
    assert not Path("unused").exists()


def test_knee_and_an_id_respect_a_budget_when_given(searched_store):
    with Store.open_existing(searched_store, readonly=True) as st:
        run = st.get_run()
        ok = [e for e in st.evaluations(run.id) if e.status == "ok"]
        budget = min(e.params_fraction for e in ok) + 1e-9
        knee = pick_evaluation(st, run, "knee", budget)
        assert knee.params_fraction <= budget
        largest = max(ok, key=lambda e: e.params_fraction)
        assert largest.params_fraction > budget
        with pytest.raises(EvopruneError, match=f"evaluation {largest.id} keeps .* over --max-params"):
            pick_evaluation(st, run, str(largest.id), budget)
        with pytest.raises(EvopruneError, match="no evaluated configuration keeps at most"):
            pick_evaluation(st, run, "knee", budget / 2)
        assert pick_evaluation(st, run, str(largest.id)).id == largest.id  # no budget: any id


def test_export_reports_its_figures_and_writes_readable_files(searched_store, tmp_path):
    out = tmp_path / "export"
    result = evoprune("export", "--store", str(searched_store), "--pick", "knee", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    with Store.open_existing(searched_store, readonly=True) as st:
        chosen = next(e for e in st.evaluations(st.get_run().id) if e.id == summary["evaluation"])
    assert summary["fidelity"]["tokens"] >= 256 and "ppl_se" in summary["fidelity"]["metrics"]
    assert summary["validation"] == chosen.validation
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~mask, modes
    assert len(set(modes.values())) == 1, modes


def test_evaluate_refuses_a_directory_as_out_before_scoring(tmp_path, tiny_model_dir):
    result = evoprune_in_process(
        "evaluate", "--model", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "2", "--out", str(tmp_path)
    )
    _one_line_error(result, "is a directory", "tasks.json")
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["plan", "--store", "x.db", "--max-params", "70%"],
            ["Invalid value for '--max-params'", "evoprune plan --help"],
        ),
        (["paretoo"], ["No such command 'paretoo'", "Did you mean 'pareto'"]),
        (["pareto", "--store", "x.db", "--jsn"], ["No such option: --jsn", "--json"]),
        (["export", "--store", "x.db"], ["Missing option '--out'"]),
        (["cache", "clear", "--older-than"], ["requires an argument", "see 'evoprune cache clear --help'"]),
    ],
)
def test_click_usage_errors_are_one_line_and_exit_2(args, fragments):
    _one_line_error(evoprune(*args), *fragments)


@pytest.mark.parametrize(
    "command", [[], ["pareto"], ["search"], ["cache"], ["cache", "clear"], ["surrogate", "report"]]
)
def test_help_shows_no_value_type_for_a_flag(command):
    # typer 0.29 printed "--json <bool>", as if the flag took a value.
    result = evoprune_in_process(*command, "--help")
    assert result.returncode == 0 and "--help" in result.stdout
    assert "<bool>" not in result.stdout
    if command in (["pareto"], ["surrogate", "report"]):
        assert "--json" in result.stdout and "<int>" in result.stdout  # options that take a value keep their type


def test_a_misspelled_model_name_gets_a_suggestion_not_the_hub(tmp_path, text_file):
    result = evoprune_in_process(
        "search", "--model", "smolm2-135m", "--data", str(text_file), "--store", str(tmp_path / "s.db"), "--evals", "4"
    )
    _one_line_error(result, "model 'smolm2-135m' is not known", "did you mean 'smollm2-135m'")


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(searched_store):
    with Store.open_existing(searched_store, readonly=True) as st:
        first, second = st.evaluations(st.get_run().id)[:2]

    def render(after_s: float) -> list[str]:
        buffer = io.StringIO()
        progress = _SearchProgress(Console(file=buffer, width=200))
        progress.PLAIN_AFTER_S = after_s
        with progress:
            progress("phase", name="loading model")
            progress("start", total=8, done=0)
            progress("batch", origin="design", round=0, size=2)
            progress("eval_done", evaluation=first)
            progress("eval_done", evaluation=second)
        return buffer.getvalue().splitlines()

    lines = render(0)
    assert [line[6:].split(":")[0] for line in lines] == [
        "loading model",
        "evaluating 0/8",
        "evaluating 2 (initial design) 0/8",
        "evaluating 2 (initial design) 1/8",
        "evaluating 2 (initial design) 2/8",
    ]
    assert f"#{second.id}: {100 * second.params_fraction:.1f}% params, ppl {second.metrics['ppl']:.2f}" in lines[-1]
    assert render(5.0) == []  # a command refused in its first seconds prints its error line alone


def test_plain_lines_tell_local_moves_acquisition_and_the_ladder_apart():
    buffer = io.StringIO()
    progress = _SearchProgress(Console(file=buffer, width=200))
    progress.PLAIN_AFTER_S = 0
    with progress:
        progress("start", total=12, done=8)
        progress("batch", origin="local", round=2, size=1)
        progress("batch", origin="acquired", round=2, size=1)
        progress("phase", name="ladder: measuring 1 configuration(s) on 8192 tokens")
        progress("fidelity_done", eval_id=7, split="search", tokens=8192, ok=True, metrics={"ppl": 41.74}, error=None)
        # The knee's climb after the spread's: a phase named as the last one still gets its line.
        progress("phase", name="ladder: measuring 1 configuration(s) on 8192 tokens")
        progress("fidelity_done", eval_id=9, split="search", tokens=8192, ok=True, metrics={"ppl": 40.02}, error=None)
    lines = [line[6:] for line in buffer.getvalue().splitlines()]
    assert lines[1:3] == ["evaluating 1 (round 2: local moves) 8/12", "evaluating 1 (round 2: acquisition) 8/12"]
    assert [line.split(":")[0] for line in lines[-4:]] == ["ladder", "ladder", "ladder", "ladder"], lines
    assert lines[-3].endswith("#7 on 8192 tokens: ppl 41.74") and lines[-1].endswith("#9 on 8192 tokens: ppl 40.02")


def test_a_long_first_phase_is_shown_when_plain_lines_begin():
    buffer = io.StringIO()
    progress = _SearchProgress(Console(file=buffer, width=200))
    progress.PLAIN_AFTER_S = 0.2
    with progress:
        progress("phase", name="loading model")  # before plain lines begin, then no event for a while
        time.sleep(1.0)
        assert [line[6:] for line in buffer.getvalue().splitlines()] == ["loading model"]
        progress("phase", name="scoring")
    assert [line[6:] for line in buffer.getvalue().splitlines()] == ["loading model", "scoring"]


def test_a_refused_recover_leaves_nothing_beside_out(tmp_path, searched_store):
    export = tmp_path / "export"
    assert evoprune("export", "--store", str(searched_store), "--out", str(export)).returncode == 0
    out = tmp_path / "recovered"
    result = evoprune_in_process(
        "recover", "--model", str(export), "--data", str(tmp_path / "missing.txt"), "--out", str(out)
    )
    _one_line_error(result, "missing.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # refused after the lock on OUT.lock was taken: the lock file goes too
    result = evoprune_in_process("recover", "--model", str(export), "--data", "builtin", "--out", str(out),
                                 "--store", str(tmp_path / "other.db"))  # fmt: skip
    assert result.returncode == 2 and "other.db" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_unreachable_hub_means_offline_at_once(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    from evoprune.hub import offline_unless_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://localhost")
    assert offline_unless_reachable() is False and not constants.HF_HUB_OFFLINE
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 6761)
    assert offline_unless_reachable() is True
    assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE


def test_a_hub_model_without_a_network_fails_in_one_line_without_retrying(tmp_path, text_file):
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "https://hub.invalid"}
    result = evoprune("search", "--model", "some-org/some-model", "--data", str(text_file),
                      "--store", str(tmp_path / "s.db"), "--evals", "2", env=env)  # fmt: skip
    _one_line_error(result, "could not load model 'some-org/some-model' from the Hugging Face hub")
    assert "Retrying" not in result.stderr


def test_evaluate_writes_through_a_link_and_refuses_what_is_not_a_file(tmp_path):
    from evoprune.pruned.evaluate import check_report_out, write_report

    class Report:  # what write_report needs of an EvaluateReport
        def to_dict(self, items: bool = False) -> dict:
            return {"results": [], "items": items}

    real = tmp_path / "real"
    real.mkdir()
    (real / "acc.json").write_text("{}")
    link = tmp_path / "latest.json"
    link.symlink_to(real / "acc.json")
    write_report(Report(), link)
    assert link.is_symlink() and json.loads((real / "acc.json").read_text()) == {"results": [], "items": True}
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(EvopruneError, match="is not a regular file"):
        check_report_out(tmp_path / "pipe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "pipe", "real"]


def test_the_readme_python_example_runs(tmp_path, tiny_model_dir, text_file, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = readme.split("The same from Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    small = (
        "evals=6, init=4, batch=2, pop_size=16, generations=4, backend=evoprune.BackendSettings("
        "eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)"
    )
    for old, new in (('"smollm2-135m"', repr(str(tiny_model_dir))), ('"builtin"', repr(str(text_file))),
                     ("evals=24", small), ("max_params=0.7", "max_params=0.8")):  # fmt: skip
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "pruned" / "model.safetensors").exists()


def test_pick_best_defaults_to_the_budget_the_run_searched_under(tmp_path, tiny_model_dir, text_file):
    path = tmp_path / "budget.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=6, max_params=0.8))
    with Store.open_existing(path, readonly=True) as st:
        run = st.get_run()
        best = pick_evaluation(st, run, "best")
        assert best.params_fraction <= 0.8 and best.id == pick_evaluation(st, run, "best", 0.8).id


def test_an_impossible_budget_is_refused_before_importance_is_scored(tiny_model_dir, text_file):
    from evoprune.engine.run import prepare_backend

    phases = []
    for budget, message in ((0.01, "the budget is impossible"), (5e9, "more than the model's")):
        phases.clear()
        with pytest.raises(EvopruneError, match=message):
            prepare_backend(str(tiny_model_dir), str(text_file), _settings(max_params=budget),
                            lambda event, **info: phases.append(info.get("name")))  # fmt: skip
        assert "loading model" in phases and not any("scoring" in (p or "") for p in phases), phases


def test_third_newcomer_bad_input_gets_one_line_and_leaves_nothing(tmp_path, searched_store, tiny_model_dir):
    _one_line_error(evoprune_in_process("measure", "--model", "nonexist/"), "model path 'nonexist/' does not exist")
    # timed a length the model cannot take (a long one ran for minutes)
    _one_line_error(evoprune_in_process("measure", "--model", str(tiny_model_dir), "--seq-len", "1024"),
                    "--seq-len 1024 is longer than the model's context of 512 tokens")  # fmt: skip
    _one_line_error(evoprune_in_process("measure", "--model", str(tiny_model_dir), "--device", "tpu"),
                    "--device 'tpu' is not a device")  # fmt: skip
    _one_line_error(evoprune_in_process("pareto", "--store", str(tmp_path)), "is a directory")
    out = tmp_path / "report"
    _one_line_error(evoprune_in_process("report", "--store", str(searched_store), "--out", str(out), "--run", "99"),
                    "has no run 99")  # fmt: skip
    assert not out.exists()
    with Store.open_existing(searched_store, readonly=True) as st:
        done = len(st.evaluations(st.get_run().id))
    _one_line_error(evoprune_in_process("resume", "--store", str(searched_store), "--evals", "2"),
                    f"already has {done} evaluations", f"--evals {done + 2}")  # fmt: skip


def test_sixth_newcomer_bad_input_gets_one_line(tmp_path, searched_store, tiny_model_dir):
    # a device is not a missing file
    _one_line_error(evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", "/dev/null",
                                        "--store", str(tmp_path / "s.db"), "--evals", "2"),
                    "data '/dev/null' is not a regular file")  # fmt: skip
    # the plot is a PNG: it was written into front.txt
    plot = tmp_path / "front.txt"
    _one_line_error(evoprune_in_process("pareto", "--store", str(searched_store), "--plot", str(plot)),
                    "pass a path ending in .png")  # fmt: skip
    assert not plot.exists() and not (tmp_path / "s.db").exists()


def test_an_export_names_its_store_by_an_absolute_path(searched_store, tmp_path, monkeypatch):
    # recover reads the store plan.json names; a relative path broke from another folder.
    monkeypatch.chdir(searched_store.parent)
    out = tmp_path / "x"
    result = evoprune_in_process("export", "--store", searched_store.name, "--pick", "knee", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "plan.json").read_text())["store"] == str(searched_store.resolve())


# -- fourth tester (2026-12): outputs that cannot be created, Ctrl-C before the store, models without tokenizers


def test_an_out_that_cannot_be_created_is_refused_in_one_line_before_the_model_loads(
    tmp_path, searched_store, monkeypatch
):
    import evoprune.pruned.export as export_module
    from evoprune.pruned.export import export_from_store

    export = tmp_path / "export"
    export_from_store(searched_store, export, "knee")
    blocker = tmp_path / "notadb.db"
    blocker.write_text("a file, not a folder")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(export_module, "backend_for_run", never)
    monkeypatch.setattr(export_module, "load_pruned", never)  # what recover loads the export with
    store = str(searched_store)
    for out in (blocker / "sub", blocker / "sub" / "deeper"):
        for args in (
            ["report", "--store", store, "--out", str(out)],
            ["export", "--store", store, "--pick", "knee", "--out", str(out)],
            ["recover", "--model", str(export), "--data", "builtin", "--out", str(out), "--steps", "1"],
        ):
            _one_line_error(evoprune_in_process(*args), f"--out '{out}'", f"'{blocker}' is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "notadb.db"]


def test_an_out_where_no_folder_can_be_made_is_one_line_not_a_traceback(tmp_path, searched_store, monkeypatch):
    import evoprune.errors
    from evoprune.errors import make_output_dir, require_output_dir

    # /proc takes no new folders, even from root (whom os.access calls it writable).
    out = Path("/proc/evoprune-no-such/y")
    result = evoprune_in_process("report", "--store", str(searched_store), "--out", str(out))
    _one_line_error(result, f"--out '{out}'", "pass another --out")
    with pytest.raises(EvopruneError, match=r"'/proc/evoprune-x/y' (cannot be created|.* is not writable)"):
        make_output_dir(Path("/proc/evoprune-x/y"), "--out")  # the first as root, the second as anyone else
    # A folder the user may not write to (root may write anywhere: the check is simulated).
    monkeypatch.setattr(evoprune.errors.os, "access", lambda path, mode: False)
    with pytest.raises(EvopruneError, match=f"--out '{tmp_path / 'a' / 'b'}': '{tmp_path}' is not writable"):
        require_output_dir(tmp_path / "a" / "b", "--out")
    assert list(tmp_path.iterdir()) == []


def test_a_store_whose_folder_is_a_file_says_it_is_a_file(tmp_path, tiny_model_dir, text_file):
    blocker = tmp_path / "notadb.db"
    blocker.write_text("")
    for store in (blocker / "x.db", blocker / "a" / "x.db"):
        result = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(text_file),
                                     "--store", str(store), "--evals", "3", *SEARCH_ARGS)  # fmt: skip
        _one_line_error(result, f"--store '{store}'", f"'{blocker}' is a file, not a directory")
        assert "does not exist" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notadb.db"]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_ctrl_c_in_recover_says_whether_a_rerun_continues(tmp_path, monkeypatch, checkpointed):
    import evoprune.recovery.run as recovery_run

    out = tmp_path / "recovered"

    def interrupted(*args, **kwargs):
        if checkpointed:
            (out / ".checkpoint").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(recovery_run, "recover", interrupted)
    result = evoprune_in_process("recover", "--model", "unused", "--data", "unused", "--out", str(out))
    assert result.returncode == 130 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if checkpointed:
        assert f"continue from the last checkpoint in '{out}'" in result.stderr
    else:  # it said "continue from the last checkpoint" where there was none
        assert "before the first checkpoint: the same command trains from the start again" in result.stderr


def test_ctrl_c_says_whether_the_store_holds_anything(tmp_path, searched_store, monkeypatch):
    import evoprune.cli.search as search_cli

    def interrupted(*args, **kwargs):  # Ctrl-C while the model loads: before the store is created
        raise KeyboardInterrupt

    monkeypatch.setattr(search_cli, "search", interrupted)
    store = tmp_path / "int2.db"
    result = evoprune_in_process("search", "--model", "unused", "--store", str(store), "--evals", "40")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == (
        f"error: interrupted before anything was stored: '{store}' was not created; "
        "run the same command to start the search"
    )
    assert not store.exists()
    result = evoprune_in_process("search", "--model", "unused", "--store", str(searched_store), "--evals", "40")
    assert result.returncode == 130 and f"every finished evaluation is in '{searched_store}'" in result.stderr
    result = evoprune_in_process("resume", "--store", str(searched_store), "--evals", "40")
    assert result.returncode == 130 and "run 'evoprune resume' to continue" in result.stderr


def test_pick_best_without_a_budget_points_to_max_params_and_knee(tmp_path, searched_store):
    out = tmp_path / "best"
    result = evoprune_in_process("export", "--store", str(searched_store), "--pick", "best", "--out", str(out))
    _one_line_error(result, "--pick best needs a budget", "--max-params FRACTION", "--pick knee")
    assert not out.exists()


@pytest.mark.parametrize("family", ["qwen2", "llama"])  # an empty tokenizer; no tokenizer at all
def test_a_model_folder_without_a_tokenizer_is_refused_in_one_line(family, tmp_path, tiny_model_dir):
    from evoprune.pruned.measure import measure
    from tests.conftest import build_tiny_model

    folder = tmp_path / "weights-only"
    build_tiny_model(family).save_pretrained(folder)
    store = tmp_path / "s.db"
    result = evoprune_in_process("search", "--model", str(folder), "--data", "builtin", "--store", str(store),
                                 "--evals", "3", *SEARCH_ARGS)  # fmt: skip
    _one_line_error(result, f"model '{folder}' has no usable tokenizer", "tokenizer.json / tokenizer_config.json")
    assert not store.exists()
    # Timing a forward pass needs no tokenizer.
    assert measure(str(folder), seq_len=8, repeats=1)["params"] > 0


def test_a_search_given_relative_paths_resumes_and_exports_from_another_folder(
    tmp_path, tiny_model_dir, text_file, monkeypatch
):
    """The store records local paths absolute: `resume` needs nothing but the store, from any folder
    (it looked for 'calib.txt' in the folder it was run from), and plan.json names the model too."""
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tiny_model_dir, work / "model")
    shutil.copy(text_file, work / "calib.txt")
    monkeypatch.chdir(work)
    store = work / "s.db"
    done = evoprune_in_process("search", "--model", "model", "--data", "calib.txt", "--store", "s.db", "--evals", "4",
                               "--init", "4", *SEARCH_ARGS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(elsewhere)
    resumed = evoprune_in_process("resume", "--store", str(store), "--evals", "5")
    assert resumed.returncode == 0, resumed.stderr
    with Store.open_existing(store, readonly=True) as st:
        run = st.get_run()
        assert len(st.evaluations(run.id)) == 5
    assert (run.model, run.data) == (str(work / "model"), str(work / "calib.txt"))
    exported = evoprune_in_process("export", "--store", str(store), "--pick", "knee", "--out", "e")
    assert exported.returncode == 0, exported.stderr
    plan = json.loads((elsewhere / "e" / "plan.json").read_text())
    assert (plan["source_model"], plan["data"]) == (str(work / "model"), str(work / "calib.txt"))
    # A run stored before local paths were recorded absolute: resume names its relative path and where to go.
    import sqlite3

    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET data='calib.txt'")
    conn.close()
    old = evoprune_in_process("resume", "--store", str(store), "--evals", "6")
    _one_line_error(old, "data file 'calib.txt' does not exist", "recorded it relative to the folder its search")


def test_the_ladder_phase_says_which_rung_or_the_validation_split():
    from types import SimpleNamespace as Row

    from evoprune.engine.ladder import _phase_name

    rung, valid = Row(split="search", tokens=8192), Row(split="validation", tokens=4096)
    assert _phase_name([rung, rung]) == "ladder: measuring 2 configuration(s) on 8192 tokens"
    assert _phase_name([valid] * 5) == "validating 5 configuration(s) on the validation split"
    assert _phase_name([rung, Row(split="search", tokens=32768), valid]) == (
        "ladder: measuring 2 configuration(s) on 8192/32768 tokens; "
        "validating 1 configuration(s) on the validation split"
    )
