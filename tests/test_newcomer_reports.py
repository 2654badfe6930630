"""A newcomer's reports: each test fails on the code before its fix."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evoprune.choice.plan import focused_min_params, plan
from evoprune.engine.active_learning import ActiveLearning
from evoprune.engine.run import search
from evoprune.objectives.spec import Budget
from evoprune.store import Store
from tests.test_user_reports import _one_line_error, _settings, evoprune_in_process


@pytest.fixture(scope="module")
def store6(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    """A store holding one finished 6-evaluation search on the tiny Llama (copy it before writing)."""
    path = tmp_path_factory.mktemp("store6") / "s.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings())
    return path


def _copy(store: Path, tmp_path: Path) -> Path:
    shutil.copy2(store, tmp_path / "s.db")
    return tmp_path / "s.db"


def _roi(primary: str, best_metrics: dict, predicted: list[float], k: int = 1) -> list[float]:
    """The predicted means that the region-of-interest filter keeps."""
    ctx = SimpleNamespace(
        objectives=SimpleNamespace(quality=(primary,)),
        settings=SimpleNamespace(max_ppl_ratio=20.0),
        shared_evaluations=lambda: [SimpleNamespace(status="ok", metrics=best_metrics)],
    )
    mean = np.array(predicted)
    pool = np.arange(len(mean))[:, None]
    _, kept, _ = ActiveLearning()._region_of_interest(ctx, pool, mean, np.zeros(len(mean)), k)
    return list(kept)


def test_max_ppl_ratio_does_not_confine_a_kl_search_to_near_dense_configurations():
    # The dense model's KL is 0: a ratio of it kept only candidates within 20 x 1e-8 nats.
    predicted = [math.log(1e-7), math.log(0.05), math.log(0.5), math.log(2.0), math.log(10.0)]
    kept = _roi("kl", {"kl": 0.0}, predicted)
    assert kept == predicted[:4]  # up to log(20) = 3.0 nats/token more than the best; 10 nats is collapsed


def test_max_ppl_ratio_still_bounds_perplexity_by_a_factor_and_leaves_accuracy_alone():
    assert _roi("ppl", {"ppl": 10.0}, [math.log(50.0), math.log(150.0), math.log(250.0)]) == [
        math.log(50.0),
        math.log(150.0),
    ]
    assert _roi("acc:arc_easy", {"acc:arc_easy": 0.6}, [-0.6, -0.1, 0.0]) == [-0.6, -0.1, 0.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resume_continues_a_cuda_run_on_the_cpu(tmp_path, store6):
    path = _copy(store6, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET settings = json_set(settings, '$.backend.device', 'cuda')")
    with Store.open_existing(path, readonly=True) as st:
        before = st.get_run(None)
    _one_line_error(evoprune_in_process("resume", "--store", str(path), "--evals", "7"), "use --device cpu")
    result = evoprune_in_process("resume", "--store", str(path), "--evals", "7", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    with Store.open_existing(path, readonly=True) as st:
        runs = st.runs()
        assert [r.id for r in runs] == [before.id]  # the same run, not a new one
        assert len(st.evaluations(before.id)) == 7
        after = st.get_run(None)
        assert (after.run_key, after.settings) == (before.run_key, before.settings)  # the record is unchanged


def test_plan_without_a_budget_on_a_run_without_one_says_so(store6):
    _one_line_error(
        evoprune_in_process("plan", "--store", str(store6)),
        "plan needs a budget",
        "searched without one",
        "--max-params",
    )


def test_plan_spend_keeps_the_runs_min_params_unless_the_budget_needs_lower(tmp_path, store6):
    path = _copy(store6, tmp_path)
    with Store.open_existing(path, readonly=True) as st:
        parent = st.get_run()
    assert parent.settings["min_params"] == 0.5
    assert focused_min_params(parent, 0.5, Budget(max_params=0.4)) == 0.0  # nothing above 0.5 meets 0.4
    assert focused_min_params(parent, 0.5, Budget(max_memory="2MB")) == 0.5
    assert focused_min_params(parent, 0.5, Budget(max_memory="0.3MB")) == 0.0  # under half the weights alone
    result = plan(str(path), Budget(max_params=0.8), spend=2)
    with Store.open_existing(path, readonly=True) as st:
        focused = st.get_run()
        own = st.evaluations(focused.id)
    assert result.spent == 2 and focused.settings["min_params"] == 0.5
    assert all(e.params_fraction >= 0.5 for e in own)


def test_runs_shows_each_runs_method_and_budget(tmp_path, store6, tiny_model_dir, text_file, monkeypatch):
    path = _copy(store6, tmp_path)
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=1, method="uniform", max_params=0.9))
    result = evoprune_in_process("runs", "--store", str(path), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["method"], r["budget"]) for r in rows] == [("evoprune", "none"), ("uniform", "--max-params 0.9")]
    monkeypatch.setenv("COLUMNS", "80")
    table = evoprune_in_process("runs", "--store", str(path)).stdout
    assert "method" in table and "uniform" in table and "…" not in table
    assert max(map(len, table.splitlines())) <= 80, table


def test_a_kl_search_records_a_hypervolume_and_refines_by_the_same_limit(tmp_path, tiny_model_dir, text_file):
    # The reference point and the level cuts also took KL as a ratio of the dense model's ~0:
    # the reference sat near 2e-7 nats, so every round's hypervolume was 0.
    path = tmp_path / "kl.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings(evals=12, objectives="kl,params"))
    with sqlite3.connect(path) as db:
        volumes = [v for (v,) in db.execute("SELECT hypervolume FROM rounds WHERE hypervolume IS NOT NULL")]
    assert volumes and max(volumes) > 1e-3, volumes


def test_a_cache_folder_that_cannot_be_made_or_is_a_file_is_one_line(tmp_path, monkeypatch, tiny_model_dir, text_file):
    # Was an OSError / NotADirectoryError traceback from Path.mkdir (search), and "the cache at ... is
    # empty", exit 0, from `cache list` on a file.
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    monkeypatch.setenv("EVOPRUNE_CACHE_DIR", str(a_file / "cache"))
    result = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store",
                                 str(tmp_path / "s.db"), "--evals", "2", "--eval-tokens", "128", "--calib-tokens",
                                 "256", "--seq-len", "64")  # fmt: skip
    _one_line_error(result, "cannot be created", "EVOPRUNE_CACHE_DIR")
    monkeypatch.setenv("EVOPRUNE_CACHE_DIR", str(a_file))
    for command in (("cache", "list"), ("cache", "clear")):
        _one_line_error(evoprune_in_process(*command), "is a file, not a folder", "EVOPRUNE_CACHE_DIR")


def test_a_full_disk_while_converting_a_model_is_one_line(tmp_path):
    import errno

    from evoprune.backend.loading import publish_dir
    from evoprune.errors import EvopruneError

    def fills_the_disk(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "models" / "m"
    with pytest.raises(EvopruneError, match=r"^writing the converted model m into .* ran out of disk space.*EVOPRUNE"):
        publish_dir(fills_the_disk, out)
    assert list(out.parent.iterdir()) == []  # nothing half-written left behind
    # safetensors' own error type says so only in its message
    with pytest.raises(EvopruneError, match="ran out of disk space"):
        publish_dir(
            lambda tmp: (_ for _ in ()).throw(RuntimeError("I/O error: No space left on device (os error 28)")), out
        )
    with pytest.raises(ValueError, match="other"):  # anything else is not a disk problem
        publish_dir(lambda tmp: (_ for _ in ()).throw(ValueError("other")), out)


def test_plan_says_when_configurations_keeping_more_never_met_the_ladder(tmp_path, store6):
    # `plan --max-params 0.8` on the main job's store (searched without a budget) answered with a
    # finalist keeping 70.4%, beside one at 78.8% the ladder had never measured: no hint of --spend.
    path = _copy(store6, tmp_path)
    with Store(path) as st:
        run = st.get_run()
        ok = sorted((e for e in st.evaluations(run.id, status="ok") if e.params_fraction < 1),
                    key=lambda e: e.params_fraction)  # fmt: skip
        budget, pick = ok[-1].params_fraction, ok[0]
        top = 1 + max([int(t) for e in ok for t in e.ladder] or [256])
        fid = st.add_fidelity(run.id, pick.id, "search", top, 9)  # the least kept one alone reaches the top rung
        best = min(e.metrics["ppl"] for e in ok) / 2
        st.finish_fidelity(fid, ok=True, metrics={"ppl": best, "nll": math.log(best), "nll_se": 0.01}, error=None,
                           duration_s=0.0)  # fmt: skip
    with sqlite3.connect(path) as c:  # and is the best on its first rung too: the plan's answer
        c.execute("UPDATE evaluations SET metrics=? WHERE id=?",
                  (json.dumps({"ppl": best, "nll": math.log(best), "nll_se": 0.01}), pick.id))  # fmt: skip
    kept_more = [e for e in ok if e.params_fraction > pick.params_fraction and not e.ladder]
    assert kept_more
    result = evoprune_in_process("plan", "--store", str(path), "--max-params", str(budget))
    assert result.returncode == 0, result.stderr
    assert f"evaluation #{pick.id}:" in result.stdout
    assert f"note: {len(kept_more)} configuration(s) under the budget keep more than #{pick.id}" in result.stderr
    assert "--spend N" in result.stderr
    out = evoprune_in_process("plan", "--store", str(path), "--max-params", str(budget), "--json")
    assert json.loads(out.stdout)["kept_more_first_rung_only"] == len(kept_more)


def test_converting_a_gguf_model_without_a_terminal_draws_no_progress_bar(capsys):
    # The main job's log file got transformers' "Converting and de-quantizing GGUF tensors" bar as
    # carriage-return frames: that bar is tqdm's own, which quiet_transformers() does not reach.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from evoprune.backend.loading import _plain_log_lines

    before = gguf_utils.tqdm
    with _plain_log_lines():  # pytest's captured stderr is not a terminal
        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert "Converting" not in capsys.readouterr().err and gguf_utils.tqdm is before
    for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    assert "Converting" in capsys.readouterr().err  # (the bar itself is untouched outside)


def test_a_number_option_given_something_else_says_what_and_how(tmp_path):
    # Was pydantic's "Input should be a valid number, unable to parse string as a number".
    from tests.test_user_reports import evoprune

    result = evoprune("plan", "--store", str(tmp_path / "s.db"), "--max-params", "80%")
    _one_line_error(result, "'--max-params': '80%' is not a number: give a plain number such as 0.8")
    result = evoprune("search", "--model", "m", "--data", "d", "--store", "s.db", "--evals=x")
    _one_line_error(result, "'--evals': 'x' is not an integer: give a whole number such as 8")


def test_report_takes_json_as_every_command_that_prints_results(tmp_path, store6):
    # The README says every command that prints results takes --json; report refused it.
    result = evoprune_in_process("report", "--store", str(store6), "--out", str(tmp_path / "r"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["path"] == str(tmp_path / "r" / "index.html") and Path(out["path"]).is_file() and out["run"] == 1


def test_a_text_too_short_for_the_validation_split_is_refused_before_any_evaluation(
    tmp_path, tiny_model_dir, tiny_tokenizer, text_file
):
    # Was: the search ran every evaluation and the ladder (minutes on SmolLM2-135M), then failed when
    # it first read the validation split, with "pass a longer text or fewer tokens".
    args = ["--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--ladder", "512"]
    # Rungs 256 + 512, calibration 256, validation 512 (2 x --eval-tokens): 1,536 tokens in all.
    ids = tiny_tokenizer(text_file.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    short = tmp_path / "short.txt"
    short.write_text(tiny_tokenizer.decode(ids[:1400]), encoding="utf-8")
    store = tmp_path / "s.db"
    result = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(short), "--store",
                                 str(store), "--evals", "2", *args)  # fmt: skip
    _one_line_error(result, "but 1536 are needed", "--ladder 512", "--calib-tokens 256", "--validation-tokens 512",
                    "lower those counts")  # fmt: skip
    if store.exists():
        with Store(store) as s:
            assert not any(s.evaluations(r.id) for r in s.runs()), "evaluated before refusing"
    # Without a validation split the same text is long enough.
    done = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(short), "--store",
                               str(store), "--evals", "2", "--validation-tokens", "0", *args)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_table_too_narrow_for_a_long_path_splits_the_path_and_keeps_other_words_whole():
    # Was: `runs` split "smollm2-135m", its header and its date whenever a path made the words too
    # wide for 80 columns: FoldingTable left the table to rich, which narrows every wide column.
    from rich import box
    from rich.console import Console

    from evoprune.cli.folding import FoldingTable

    table = FoldingTable(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))  # as `runs` draws it
    for col in ("run", "method", "budget", "model", "data", "ok, failed, pending", "created"):
        table.add_column(col)
    path = "/tmp/data/valid-2.txt"
    table.add_row("1", "evoprune", "--max-params 0.7", "smollm2-135m", path, "26/0/0", "2026-12-03 13:09")
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    for word in ("evoprune", "--max-params", "smollm2-135m", "2026-12-03", "method", "pending", "created"):
        assert word in text, text
    assert path not in text  # it alone folds


def test_the_end_of_a_search_is_one_line_in_a_log_however_long_the_store_path(tmp_path, tiny_model_dir, text_file):
    # Was: rich broke "run 1: ... in '<store>' (2 new in this call)" at 80 columns without a terminal.
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / "runs"
    deep.mkdir(parents=True)
    store = deep / "search.db"
    result = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store",
                                 str(store), "--evals", "2", "--eval-tokens", "128", "--calib-tokens", "256",
                                 "--seq-len", "64", "--ladder", "none", "--validation-tokens", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = f"run 1: 2 ok and 0 failed evaluations in '{store}' (2 new in this call)"
    assert summary in result.stderr.splitlines(), result.stderr


@pytest.mark.parametrize(("key", "named"), [("pop_size", "pop_size (a --config setting)"),
                                            ("batch_size", "batch_size (a --config setting)"),
                                            ("init", "--init")])  # fmt: skip
def test_a_bad_setting_of_a_config_file_is_named_as_the_file_names_it(key, named, tmp_path, tiny_model_dir, text_file):
    # Was: "--pop-size must be at least 1", a flag no command takes.
    config = tmp_path / "search.toml"
    config.write_text(f"{key} = 0\n")
    result = evoprune_in_process("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store",
                                 str(tmp_path / "s.db"), "--evals", "2", "--config", str(config))  # fmt: skip
    _one_line_error(result, f"{named} must be at least 1, got 0")


def test_every_commands_summary_is_one_paragraph_line_so_help_never_breaks_it_mid_sentence():
    # Was: `evoprune --help` broke `resume` and `plan` where their docstrings' first lines ended.
    import inspect

    import typer.main

    from evoprune.cli import app

    group = typer.main.get_group(app)
    commands = dict(group.commands)
    for name, sub in list(commands.items()):
        commands.update({f"{name} {n}": c for n, c in getattr(sub, "commands", {}).items()})
    for name, command in commands.items():
        doc = inspect.getdoc(command.callback) if command.callback else None
        if doc:
            assert "\n" not in doc.split("\n\n")[0], f"{name}: {doc.split(chr(10) * 2)[0]!r}"
