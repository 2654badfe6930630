"""Situations users reported against other pruning tools (issue 13), tried on evoprune.

Each test holds one kind of fault at bay: read commands on read-only media, two processes on one
store, exports that load as something they are not, searches that stop or fail without saying so.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evoprune.backend.settings import BackendSettings
from evoprune.engine.run import search
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError
from evoprune.store import Store

BACKEND = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)
SEARCH_ARGS = ["--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--mlp-levels", "4"]


def _settings(**kw) -> SearchSettings:
    base = dict(evals=6, init=4, batch=2, pop_size=16, generations=4, backend=BACKEND)
    base.update(kw)
    return SearchSettings(**base)


def evoprune(
    *args: str, timeout: float = 300, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "evoprune", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def evoprune_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI run in this process: the same code path as :func:`evoprune` without an interpreter
    start per call (seconds each), for the many short bad-input cases."""
    from typer.testing import CliRunner

    from evoprune.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2 and one ``error:`` line. A command that ran over 5 s without a terminal has logged its
    progress first ("00:05 evaluating ..."): a log, not part of the error, however busy the machine."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not re.match(r"\d+:\d\d ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def searched_store(tmp_path_factory, tiny_model_dir, text_file) -> Path:
    """A store holding one finished 6-evaluation search on the tiny Llama."""
    path = tmp_path_factory.mktemp("searched") / "s.db"
    search(str(tiny_model_dir), str(text_file), str(path), _settings())
    return path


@pytest.fixture
def read_only_copy(tmp_path, searched_store):
    """A copy of the searched store in a directory nobody can write to (a read-only bind mount as root)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(searched_store, src / "s.db")
    if os.geteuid() != 0:
        os.chmod(src / "s.db", 0o444)
        os.chmod(src, 0o555)
        yield src / "s.db"
        os.chmod(src, 0o755)
        return
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode == 0
    if not mounted or subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True).returncode:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        pytest.skip("root without permission to make a read-only mount")
    try:
        yield mnt / "s.db"
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            # Still busy (a handle not yet collected): detach it so no mount outlives the test.
            gc.collect()
            subprocess.run(["umount", "--lazy", str(mnt)], check=False)


# -- 4: read-only stores ---------------------------------------------------------------------
def test_read_commands_work_on_a_store_in_a_read_only_location(read_only_copy, tmp_path):
    store = str(read_only_copy)
    with pytest.raises(OSError):
        (read_only_copy.parent / "probe").write_text("x")
    for args in (
        ["runs", "--store", store],
        ["pareto", "--store", store, "--json"],
        ["plan", "--store", store, "--max-params", "0.9", "--json"],
        ["report", "--store", store, "--out", str(tmp_path / "report")],
        ["export", "--store", store, "--pick", "knee", "--out", str(tmp_path / "export")],
    ):
        result = evoprune_in_process(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "not an evoprune store" not in result.stderr
    with Store.open_existing(read_only_copy, readonly=True) as st:
        assert len(st.evaluations(st.get_run().id)) == 6
    # A write says what is wrong, in one line, and does not blame the file's format.
    with pytest.raises(EvopruneError, match="read-only"):
        Store.open_existing(read_only_copy)
    resumed = evoprune_in_process("resume", "--store", store, "--evals", "8")
    _one_line_error(resumed, "read-only", "copy the store")


def test_an_out_in_a_read_only_location_is_refused_in_one_line(read_only_copy):
    out = read_only_copy.parent / "report"
    result = evoprune_in_process("report", "--store", str(read_only_copy), "--out", str(out))
    _one_line_error(result, f"--out '{out}': '{read_only_copy.parent}' is not writable", "pass another --out")
    assert not out.exists()


def test_a_search_or_export_that_cannot_write_is_refused_before_the_model_loads(read_only_copy, monkeypatch):
    # A search into a read-only store folder, and `export --out /proc/x`, failed only after loading the model.
    loads = []
    monkeypatch.setattr("evoprune.engine.run.prepare_backend", lambda *a, **k: loads.append(1))
    folder = read_only_copy.parent
    new = folder / "new.db"
    result = evoprune_in_process(
        "search", "--model", "m", "--data", "d", "--store", str(new), "--evals", "4", *SEARCH_ARGS
    )
    _one_line_error(result, f"its folder '{folder}' is read-only", "or pass another --store")
    result = evoprune_in_process(
        "search", "--model", "m", "--data", "d", "--store", str(read_only_copy), "--evals", "4", *SEARCH_ARGS
    )
    _one_line_error(result, "is read-only")
    assert loads == [] and not new.exists()
    if Path("/proc").is_dir():
        out = evoprune_in_process("export", "--store", str(read_only_copy), "--out", "/proc/evoprune-x")
        _one_line_error(out, "--out '/proc/evoprune-x' cannot be created", "pass another --out")


# -- 5: two processes on one store -----------------------------------------------------------
def test_two_processes_creating_the_same_run_get_the_same_row(tmp_path):
    fields = dict(model="m", model_fingerprint="f", data="d", data_fingerprint="g", dense_params=10,
                  space={}, settings={}, versions={})  # fmt: skip
    with Store(tmp_path / "s.db") as first, Store(tmp_path / "s.db") as second:
        # The second process looked before the first inserted: its look-up misses, its insert must not fail.
        real_find, calls = second.find_run, []

        def late_find(key):
            calls.append(key)
            return None if len(calls) == 1 else real_find(key)

        second.find_run = late_find
        run, created = first.get_or_create_run("key", **fields)
        again, created_again = second.get_or_create_run("key", **fields)
        assert created and not created_again and again.id == run.id


def test_a_second_search_on_a_store_in_use_is_refused_in_one_line(tmp_path, tiny_model_dir, text_file):
    from evoprune.store.lock import search_lock

    store = tmp_path / "s.db"
    with search_lock(store):  # another search holds the store
        events = []
        with pytest.raises(EvopruneError, match="is in use by another evoprune search"):
            search(str(tiny_model_dir), str(text_file), str(store), _settings(evals=2, init=2),
                   lambda event, **info: events.append(event))  # fmt: skip
        assert events == []  # refused before loading the model, not after
        with Store(store) as st:
            assert st.runs() == []
    # Once it is released (as when its process ends), the search runs.
    result = search(str(tiny_model_dir), str(text_file), str(store), _settings(evals=2, init=2))
    assert len(result.evaluations) == 2


def test_the_same_search_started_twice_at_once_loses_and_repeats_nothing(tmp_path, tiny_model_dir, text_file):
    store = tmp_path / "s.db"
    args = ["search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
            "--evals", "8", "--init", "4", "--batch", "2", *SEARCH_ARGS]  # fmt: skip
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "evoprune", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    # Either the second one finds the store in use, or it started after the first finished: nothing left to do.
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            # one error line, and nothing loaded before it: the lock is taken before the model loads
            assert len(lines) == 1 and lines[0].startswith("error: "), err
            assert "is in use by another evoprune search" in lines[0], err
    with Store(store) as st:
        (run,) = st.runs()
        evals = st.evaluations(run.id)
    assert len(evals) == 8 and {e.status for e in evals} == {"ok"}
    assert len({e.config_key for e in evals}) == 8


# -- 1: exports load as what they are, or not at all -----------------------------------------
def _allocations(space) -> dict:
    L = space.num_layers
    dense = space.lower.copy()
    depth = dense.copy()
    depth[1], depth[L + 2] = space.attn_levels, space.mlp_levels  # attention of layer 1, MLP of layer 2
    width = dense.copy()
    width[:L], width[L:] = 1, 1
    return {"dense": dense, "depth-only": depth, "width-only": width}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "llama-mha", "opt"])
def test_an_export_never_loads_silently_as_its_dense_base_model(family, tiny_tokenizer, text_file, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, pipeline

    from evoprune.backend.loading import load_config, resolve_model
    from evoprune.pruned.export import export_pruned, load_pruned
    from tests.test_export import _backend

    backend = _backend(family, tiny_tokenizer, text_file)
    tokens = backend.eval_windows[:1, :24]
    for name, x in _allocations(backend.space).items():
        out = tmp_path / name
        result = export_pruned(backend, x, out)
        # Without its code, transformers refuses the directory instead of building the dense base model.
        with pytest.raises(ValueError, match="trust_remote_code"):
            AutoModelForCausalLM.from_pretrained(out)
        with pytest.raises(ValueError, match="trust_remote_code"):
            pipeline("text-generation", model=str(out), tokenizer=tiny_tokenizer)
        config = AutoConfig.from_pretrained(out, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
        assert config.architectures == [type(model).__name__] == ["EvopruneForCausalLM"], name
        assert sum(p.numel() for p in model.parameters()) == result.params, name
        # Nor does evoprune itself take it as a model to prune.
        with pytest.raises(EvopruneError, match="is an evoprune export"):
            load_config(resolve_model(str(out)))
        ours, _ = load_pruned(out)
        with torch.inference_mode():
            torch.testing.assert_close(model(input_ids=tokens).logits, ours(input_ids=tokens).logits, rtol=0, atol=0)


# -- 7: a search that ends before its budget says why -----------------------------------------
@pytest.mark.parametrize("method", ["random", "ga"])
def test_a_method_that_stops_before_its_budget_says_why(method, tmp_path, tiny_tokenizer, text_file):
    from tests.conftest import build_tiny_model

    model_dir = tmp_path / "one-layer"
    build_tiny_model("llama", num_layers=1).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    backend = BackendSettings(eval_tokens=128, calib_tokens=128, seq_len=64, mlp_levels=2)
    settings = _settings(evals=40, method=method, min_params=0.0, backend=backend)
    result = search(str(model_dir), str(text_file), str(tmp_path / "s.db"), settings)
    done = len(result.evaluations)
    assert done < 40
    assert result.stop_reason is not None
    assert f"stopped after {done} of 40 evaluations" in result.stop_reason
    assert "feasible configurations" in result.stop_reason
    # A search that spends its budget has nothing to explain.
    spent = search(str(model_dir), str(text_file), str(tmp_path / "s.db"), replace(settings, evals=done))
    assert spent.stop_reason is None


# -- 8: shipped tasks never read a development path -------------------------------------------
ARC_ROWS = [
    {
        "id": f"q{i}",
        "question": f"Question {i}?",
        "choices": {"text": ["yes", "no"], "label": ["A", "B"]},
        "answerKey": "A",
    }
    for i in range(3)
]


@pytest.fixture
def task_data(tmp_path) -> Path:
    """A task data folder in the layout the shipped tasks name (arc_easy/..., mmlu/dev/...)."""
    import json

    root = tmp_path / "task-data"
    (root / "arc_easy").mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "question": {
                    "stem": r["question"],
                    "choices": [{"text": t, "label": la} for t, la in zip(*r["choices"].values(), strict=True)],
                },
                "answerKey": r["answerKey"],
            }
        )
        for r in ARC_ROWS
    ]
    (root / "arc_easy" / "ARC-Easy-Dev.jsonl").write_text("\n".join(lines) + "\n")
    (root / "mmlu" / "dev").mkdir(parents=True)
    (root / "mmlu" / "dev" / "astronomy_dev.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\nA?,a,b,c,d,0\nB?,a,b,c,d,1\n"
    )
    return root


def test_shipped_tasks_read_the_task_data_folder_or_the_hub_and_otherwise_say_how_to_get_the_data(
    task_data, monkeypatch
):
    import datasets

    from evoprune.tasks import build_questions, registry, resolve_task

    assert all(not Path(s.path).is_absolute() and ".." not in Path(s.path).parts for s in registry().values())
    # From the option, then from the variable; never from a folder beside the project.
    ref = resolve_task("arc_easy", task_data)
    assert ref.data == task_data / "arc_easy" / "ARC-Easy-Dev.jsonl" and len(build_questions(ref)) == 3
    monkeypatch.setenv("EVOPRUNE_TASK_DATA", str(task_data))
    assert len(build_questions(resolve_task("mmlu"))) == 2
    with pytest.raises(EvopruneError, match=r"does not exist in the task data directory .* --tasks arc_challenge=PATH"):
        resolve_task("arc_challenge")
    with pytest.raises(EvopruneError, match=r"task data directory '.*nowhere' \(from --task-data\) does not exist"):
        resolve_task("arc_easy", task_data / "nowhere")
    # No folder: the hub, through datasets, in the Hugging Face layouts.
    monkeypatch.delenv("EVOPRUNE_TASK_DATA")
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        if name == "cais/mmlu":
            return [{"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}] * 2
        return ARC_ROWS

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    arc = resolve_task("arc_easy")
    assert arc.data == "hf:allenai/ai2_arc:ARC-Easy:validation" and len(build_questions(arc)) == 3
    mmlu = build_questions(resolve_task("mmlu"), shots=1)
    assert mmlu[0].context.startswith("The following are multiple choice questions (with answers) about anatomy.")
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "validation"), ("cais/mmlu", "all", "dev")]

    # Hub unreachable: one line that says how to get the data.
    def offline(name, config, split):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(EvopruneError) as err:
        resolve_task("arc_easy")
    message = str(err.value)
    assert "\n" not in message and "Couldn't reach" in message
    for hint in ("--task-data DIR", "EVOPRUNE_TASK_DATA", "arc_easy/ARC-Easy-Dev.jsonl", "--tasks arc_easy=PATH"):
        assert hint in message, message


def test_cli_evaluate_takes_task_data_from_the_option_outside_the_project(task_data, tiny_model_dir, tmp_path):
    env_less = {k: v for k, v in os.environ.items() if k != "EVOPRUNE_TASK_DATA"}
    repo = str(Path(__file__).resolve().parents[1])
    env_less["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    env_less["HF_HUB_OFFLINE"] = env_less["HF_DATASETS_OFFLINE"] = "1"

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "evoprune", "evaluate", "--model", str(tiny_model_dir), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env_less, cwd=tmp_path)

    ok = run("--tasks", "arc_easy,mmlu", "--task-data", str(task_data), "--json")
    assert ok.returncode == 0, ok.stderr
    import json

    report = json.loads(ok.stdout)
    assert [r["n"] for r in report["results"]] == [3, 2]
    assert report["results"][0]["data"] == str(task_data / "arc_easy" / "ARC-Easy-Dev.jsonl")
    _one_line_error(run("--tasks", "arc_easy"), "could not load allenai/ai2_arc", "--task-data DIR")
    _one_line_error(run("--tasks", "arc_easy", "--task-data", str(tmp_path / "none")), "does not exist")


# -- 3: degenerate items, searches whose evaluations all fail, what a run's identity covers ----
def _mc_task(folder: Path, questions: list[str]) -> Path:
    """A generic multiple-choice task file over a jsonl of the given questions."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": q, "choices": ["yes", "no"], "answer": i % 2} for i, q in enumerate(questions)]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = folder / "task.yaml"
    spec.write_text('name: yesno\nformat: mc_jsonl\npath: items.jsonl\nprompt: "{question}"\nmetrics: [acc]\n')
    return spec


def test_a_question_that_encodes_to_nothing_is_scored_not_a_crash(tmp_path, tiny_tokenizer):
    import math

    from evoprune.tasks import encode_pair, evaluate_model, resolve_task
    from tests.conftest import build_tiny_model

    ctx, cont = encode_pair(tiny_tokenizer, "  \n ", " yes")
    assert ctx == [tiny_tokenizer.bos_token_id] and tiny_tokenizer.decode(cont) == "  \n  yes"
    spec = _mc_task(tmp_path / "t", ["Is water wet?", "   ", "", "\n\t"])
    result = evaluate_model(build_tiny_model("llama"), tiny_tokenizer, resolve_task(str(spec)))
    assert result.n == 4 and all(math.isfinite(ll) for s in result.items for ll in s.loglikelihoods)


def test_a_search_whose_evaluations_all_fail_stops_in_one_line(tmp_path, tiny_model_dir, tiny_tokenizer, text_file):
    import torch

    from evoprune.engine.run import prepare_backend
    from tests.conftest import build_tiny_model

    # A metric that raises on every configuration (as a task item that crashed the scorer did):
    # a fault, so the search stops after its first batch instead of spending the budget.
    settings = _settings()
    backend = prepare_backend(str(tiny_model_dir), str(text_file), settings)

    def broken_metric(_backend):
        raise RuntimeError("Expected tensor for argument #1 'indices' to have one of the following scalar types")

    backend.extra_metrics.append(broken_metric)
    store = tmp_path / "fault.db"
    with pytest.raises(EvopruneError, match=r"all 4 evaluations of run 1 failed, the first with: RuntimeError: "):
        search(str(tiny_model_dir), str(text_file), str(store), settings, backend=backend)
    with Store(store) as st:
        assert [e.status for e in st.evaluations(1)] == ["failed"] * 4
    # Every configuration collapses (the final norm is NaN): collapse is a verdict on a
    # configuration, so the method goes on, but it ends with one line and exit 2, never an empty front.
    model = build_tiny_model("llama")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    path = tmp_path / "broken"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    cli = evoprune(
        "search", "--model", str(path), "--data", str(text_file), "--store", str(tmp_path / "cli.db"),
        "--evals", "6", "--init", "4", "--batch", "2", *SEARCH_ARGS,
    )  # fmt: skip
    _one_line_error(cli, "all 6 evaluations of run 1 failed", "non-finite", "--retry-failed")


def test_a_run_is_its_task_files_content_and_failed_rows_are_retried_on_request(
    tmp_path, searched_store, tiny_model_dir, text_file
):
    # A task file edited in place is another problem: a new run, the old one untouched.
    spec = _mc_task(tmp_path / "t", ["Is water wet?", "Is fire cold?", "Is ice hot?"])
    settings = _settings(evals=4, objectives=f"ppl,acc:{spec},params", task_limit=3)
    first = search(str(tiny_model_dir), str(text_file), str(tmp_path / "a.db"), settings)
    assert all(f"acc:{spec}" in e.metrics for e in first.evaluations)  # keyed as the objective names it
    _mc_task(tmp_path / "t", ["Is water wet?", "Is fire cold?", "Is snow white?"])
    second = search(str(tiny_model_dir), str(text_file), str(tmp_path / "a.db"), settings)
    assert second.run.id != first.run.id and second.new_evaluations == 4
    same = search(str(tiny_model_dir), str(text_file), str(tmp_path / "a.db"), settings)
    assert same.run.id == second.run.id and same.new_evaluations == 0
    # Failed rows stay failed unless asked; --retry-failed evaluates them again.
    store = tmp_path / "s.db"
    shutil.copy2(searched_store, store)
    with Store(store) as st:
        before = {e.id: e for e in st.evaluations(1)}
        hit = [e.id for e in before.values() if e.status == "ok"][:2]
        for eid in hit:
            st.finish(eid, ok=False, metrics={}, error="RuntimeError: CUDA out of memory", duration_s=1.0)
    again = search(str(tiny_model_dir), str(text_file), str(store), _settings())
    assert again.new_evaluations == 0 and sum(e.status == "failed" for e in again.evaluations) == 2
    config = tmp_path / "search.toml"
    config.write_text("pop_size = 16\ngenerations = 4\n")  # the inner search as _settings() has it
    cli = evoprune(
        "search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
        "--evals", "6", "--init", "4", "--batch", "2", "--config", str(config), *SEARCH_ARGS, "--retry-failed",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    with Store(store) as st:
        after = {e.id: e for e in st.evaluations(1)}
    assert after.keys() == before.keys() and all(after[i].status == "ok" for i in after)
    for eid in hit:
        assert after[eid].metrics["ppl"] == pytest.approx(before[eid].metrics["ppl"], rel=1e-6)


# -- 2: the run's dtype after the search ------------------------------------------------------
def test_a_bfloat16_run_counts_two_bytes_and_loads_its_model_and_export_in_bfloat16(
    tmp_path, tiny_model_dir, text_file
):
    import torch

    from evoprune.choice.plan import plan
    from evoprune.engine.run import prepare_backend
    from evoprune.objectives.spec import Budget
    from evoprune.pruned.evaluate import run_evaluate
    from evoprune.pruned.export import export_pruned, load_pruned
    from evoprune.pruned.measure import measure

    backend_settings = replace(BACKEND, dtype="bfloat16")
    probe = prepare_backend(str(tiny_model_dir), str(text_file), _settings(backend=backend_settings))
    space = probe.space
    dense = space.lower
    kv_bytes = 2 * space.arch.num_layers * space.arch.num_kv_heads * space.arch.head_dim * 2048 * 2
    dense_bytes = space.params(dense) * 2 + kv_bytes  # 2 bytes per weight and KV element
    # A budget just above the dense model in bfloat16 (in float32 it is twice that): dense is a candidate.
    limit = f"{dense_bytes + 16}B"
    settings = _settings(evals=3, init=3, max_memory=limit, backend=backend_settings)
    store = tmp_path / "s.db"
    result = search(str(tiny_model_dir), str(text_file), str(store), settings, backend=probe)
    by_levels = {tuple(e.levels): e for e in result.evaluations}
    assert tuple(dense.tolist()) in by_levels
    assert by_levels[tuple(dense.tolist())].cost["memory_bytes"] == dense_bytes
    assert plan(str(store), Budget(max_memory=limit)).cost["memory_bytes"] <= dense_bytes
    # evaluate --config ID loads the run's model in its dtype (and accepts it), or in one it is told.
    spec = _mc_task(tmp_path / "t", ["Is water wet?", "Is fire cold?"])
    ev = next(e for e in result.evaluations if e.levels != dense.tolist())
    for dtype, want in ((None, torch.bfloat16), ("float32", torch.float32)):
        report = run_evaluate(str(tiny_model_dir), [str(spec)], config=str(ev.id), store_path=store, dtype=dtype)
        assert next(report.target.model.parameters()).dtype == want and report.target.run_id == result.run.id
    dense_report = run_evaluate(str(tiny_model_dir), [str(spec)], store_path=store)
    assert next(dense_report.target.model.parameters()).dtype == torch.bfloat16
    assert dense_report.target.eval_id == by_levels[tuple(dense.tolist())].id
    # An export of the run loads, and is measured, in bfloat16: measured bytes equal predicted ones.
    out = tmp_path / "export"
    export_pruned(probe, ev.levels, out)
    model, _ = load_pruned(out)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    report = measure(str(out), seq_len=16, repeats=1)
    assert report["weight_bytes"] == report["predicted"]["weight_bytes"]
    assert report["predicted"]["flops_context_tokens"] == 16  # its FLOPs count a token attending to --seq-len


def test_latency_of_a_bfloat16_run_is_timed_in_bfloat16(tmp_path):
    """The latency table behind --max-latency-ms and the latency objective runs the run's dtype."""
    from evoprune.backend.adapters import adapter_for
    from evoprune.objectives.cost import LatencyTable
    from evoprune.objectives.spec import CostEvaluator
    from evoprune.space import SearchSpace
    from tests.conftest import build_tiny_model

    model = build_tiny_model("llama", num_layers=2)
    space = SearchSpace(adapter_for(model.config).arch_spec(model.config), mlp_levels=2)
    table = LatencyTable.measure(model.config, space, seq_len=16, repeats=1, dtype="bfloat16")
    assert len(table.attn_ms) == 3 and table.fixed_ms >= 0
    timed = []
    real = LatencyTable.measure.__func__

    def spy(cls, config, space, seq_len=256, batch=1, repeats=15, dtype="float32"):
        timed.append(dtype)
        return real(cls, config, space, seq_len, batch, 1, dtype=dtype)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LatencyTable, "measure", classmethod(spy))
        costs = CostEvaluator(space, model.config, dtype="bfloat16", latency_seq_len=16)
        costs.matrix(space.lower[None], ["latency"])
    assert timed == ["bfloat16"]


def test_a_question_the_model_cannot_score_is_refused_in_one_line_naming_task_and_item(tmp_path, tiny_model_dir):
    spec = _mc_task(tmp_path / "t", ["Is water wet?", "Is fire cold?"])
    items = tmp_path / "t" / "items.jsonl"
    lines = items.read_text().splitlines()
    # Question 2's right answer is longer than the model's 512 positions.
    lines[1] = lines[1].replace('"no"', '"' + " no" * 700 + '"')
    items.write_text("\n".join(lines) + "\n")
    out = evoprune("evaluate", "--model", str(tiny_model_dir), "--tasks", str(spec))
    _one_line_error(out, "task 'yesno'", "items.jsonl", "question 2: a choice of", "longer than the model's 512")


# -- 10: what the user came for is in sight ----------------------------------------------------
@pytest.fixture(scope="module")
def deep_store(tmp_path_factory) -> Path:
    """A 24-evaluation search (8 designed, 16 acquired in 4 rounds) on a 40-layer synthetic model
    with 12 MLP levels: the real engine, store, surrogate and acquisition, milliseconds per evaluation."""
    from evoprune.backend.synthetic import DEFAULT_ARCH, SyntheticBackend

    backend = SyntheticBackend.create(seed=0, arch=replace(DEFAULT_ARCH, num_layers=40), mlp_levels=12)
    path = tmp_path_factory.mktemp("deep") / "s.db"
    settings = SearchSettings(evals=24, init=8, batch=4, pop_size=16, generations=4, max_ppl_ratio=1e6)
    search("synthetic", "synthetic", str(path), settings, backend=backend)
    return path


def _allocation_on_screen(text: str) -> list[str]:
    """The level cells of the allocation table in ``text``, line by line, read off the screen."""
    import re

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Per-layer levels of the front"))
    # The header: the first layer of each block (over one line or more), id and sub-layer beside it.
    column = re.search(r"\d", lines[start + 1]).start()
    rule = next(i for i in range(start, len(lines)) if set(lines[i].strip()) == {"─"})
    cells = []
    for line in lines[rule + 1 :]:
        if not re.fullmatch(r"\s*(\d+\s+attention|MLP|)\s*", line[:column]) or not line[column:].strip():
            break
        cells.append(line[column:].rstrip())
    return cells


def _points(layers: int, top: int, count: int = 12, seed: int = 0) -> list:
    from evoprune.objectives.pareto import ParetoPoint

    rng = np.random.default_rng(seed)
    return [
        ParetoPoint(id=100 * i + 7, params=int(1e8 * (1 - i / 40)), params_fraction=1 - i / 40,
                    metrics={"ppl": 20.0 + i, "ppl_se": 0.61}, origin="acquired", round=i,
                    levels={"attn": rng.integers(0, top + 1, layers).tolist(),
                            "mlp": rng.integers(0, top + 1, layers).tolist()})
        for i in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("layers", "top", "width"),
    [(30, 8, 80), (32, 3, 80), (80, 8, 80), (80, 8, 120), (48, 20, 80), (40, 120, 100)],
)
def test_the_front_shows_every_level_of_every_layer_in_a_narrow_terminal(layers, top, width):
    from rich.console import Console

    from evoprune.cli.views import _front_view, _level_tokens
    from evoprune.store import Run

    points = _points(layers, top)
    run = Run(1, "key", "a-model/with-a-rather-long-name", "f", "data.txt", "g", 10**8,
              {"attn_levels": top, "mlp_levels": top}, {}, {}, "now")  # fmt: skip
    console = Console(width=width, record=True)
    console.print(_front_view(run, points, console.width))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    # Read back from the screen: every level of every layer, attention then MLP of each member, in order.
    cells = _allocation_on_screen(text)
    want = [t for p in points for kind in ("attn", "mlp") for t in _level_tokens(p.levels[kind], top)]
    shown = " ".join(cells).split() if len(want[0]) > 1 else list("".join(cells).replace(" ", ""))
    assert shown == [t.strip() for t in want]
    # One layer's attention and MLP levels share a column: both kinds of a member wrap the same way.
    per_kind = len(cells) // (2 * len(points))
    assert len(cells) == 2 * len(points) * per_kind
    assert [len(c) for c in cells[:per_kind]] == [len(c) for c in cells[per_kind : 2 * per_kind]]
    for p in points:
        assert f"{p.params / 1e6:.2f}M" in text and f" {p.id} " in text


def test_no_table_of_a_command_is_cut_in_an_80_column_terminal(deep_store, searched_store, monkeypatch):
    from typer.testing import CliRunner

    from evoprune.cli import app
    from evoprune.objectives.pareto import pareto_front

    # The console reads COLUMNS at each print. (Setting its width instead fixed it at 80 for every
    # later test: monkeypatch restores a property by setting it to the value it read.)
    monkeypatch.setenv("COLUMNS", "80")
    for store in (deep_store, searched_store):
        for args in (
            ["pareto", "--store", str(store)],
            ["plan", "--store", str(store), "--max-params", "0.9"],
            ["runs", "--store", str(store)],
            ["surrogate", "report", "--store", str(store), "--surrogates", "additive", "--folds", "2"],
        ):
            out = CliRunner().invoke(app, args)
            assert out.exit_code == 0, (args, out.output)
            assert "…" not in out.stdout, (args, out.stdout)
            # A command to copy is one line the terminal folds (nothing hidden); the rest fits 80 columns.
            lines = [line for line in out.stdout.splitlines() if not line.startswith("evoprune ")]
            assert max(map(len, lines)) <= 80, (args, out.stdout)
    # In a real 80-column terminal, every level of every front member of a 40-layer model is on screen.
    from evoprune.cli.views import _level_tokens

    narrow = {"COLUMNS": "80"}
    pareto = evoprune("pareto", "--store", str(deep_store), env=narrow).stdout
    with Store.open_existing(deep_store, readonly=True) as st:
        run = st.get_run()
        points = pareto_front(st, run)
    top = run.space["mlp_levels"]
    want = [t for p in points for kind in ("attn", "mlp") for t in _level_tokens(p.levels[kind], top)]
    assert len(points) > 5 and len(want) == 2 * 40 * len(points)
    assert list("".join(_allocation_on_screen(pareto)).replace(" ", "")) == want


def test_the_layout_check_finds_a_colour_bar_over_the_labels_beside_it():
    import matplotlib.pyplot as plt

    from evoprune.reporting.plots import overlapping_decorations

    # The heat maps as the report drew them before (15 front members, levels 0-2): each with its
    # colour bar, the members' labels on both.
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * 15 + 1.5))
    levels = np.random.default_rng(0).integers(0, 3, size=(15, 30))
    for ax in axes:
        image = ax.imshow(levels, aspect="auto", cmap="viridis")
        ax.set_yticks(range(15), [f"#{10 + i} {80 - i // 3}%" for i in range(15)], fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.04)
    found = overlapping_decorations(fig)
    plt.close(fig)
    assert found and all("colour bar" in line and "'#" in line for line in found), found


@pytest.mark.parametrize("which", ["deep", "searched"])
def test_no_report_figure_hides_a_label_behind_another_part(which, deep_store, searched_store, tmp_path):
    import re

    import matplotlib.pyplot as plt

    from evoprune.reporting.plots import overlapping_decorations
    from evoprune.reporting.report import report_figures, write_report
    from evoprune.reporting.search_predictions import search_predictions

    path = deep_store if which == "deep" else searched_store
    with Store.open_existing(path, readonly=True) as st:
        run = st.get_run()
        figures = report_figures(st, run, search_predictions(st, run))
        page = write_report(st, tmp_path / "report").read_text()
    assert list(figures) == ["front", "levels", "predictions", "rounds"]
    # Every figure of the page is one of those checked here.
    assert len(re.findall(r"<img ", page)) == len(figures)
    for name, fig in figures.items():
        found = overlapping_decorations(fig)
        plt.close(fig)
        assert found == [], (name, found)


def test_the_report_shows_each_prediction_of_the_search_with_its_interval_and_pooled_figures_with_theirs(
    deep_store, searched_store, tmp_path
):
    import json

    from scipy import stats
    from typer.testing import CliRunner

    from evoprune.cli import app
    from evoprune.reporting.prediction_metrics import MIN_TAU_POINTS
    from evoprune.reporting.report import write_report
    from evoprune.reporting.search_predictions import search_predictions

    with Store.open_existing(deep_store, readonly=True) as st:
        run = st.get_run()
        acquired = [e for e in st.evaluations(run.id, "ok") if e.origin == "acquired"]
        check = search_predictions(st, run)
        page = write_report(st, tmp_path / "report").read_text()
    # One point per acquired evaluation, each with a finite interval around its prediction.
    assert [p["id"] for p in check.points] == [e.id for e in acquired] and len(acquired) == 16
    z = stats.norm.ppf(0.95)
    for p, e in zip(check.points, acquired, strict=True):
        assert p["measured"] == pytest.approx(np.log(e.metrics["ppl"]))
        assert p["predicted"] == e.predicted["ppl"] and np.isfinite([p["lower"], p["upper"]]).all()
        assert p["lower"] < p["predicted"] < p["upper"]
        assert p["upper"] - p["predicted"] == pytest.approx(z * e.predicted["std"])
        assert p["inside"] == (p["lower"] <= p["measured"] <= p["upper"])
    # Pooled over all acquired points: tau with its bootstrap interval and deviation, coverage with its interval.
    pooled = check.pooled
    measured, predicted = [p["measured"] for p in check.points], [p["predicted"] for p in check.points]
    assert pooled["n"] == 16 >= MIN_TAU_POINTS
    assert pooled["kendall_tau"] == pytest.approx(stats.kendalltau(measured, predicted).statistic)
    assert pooled["tau_low"] <= pooled["kendall_tau"] <= pooled["tau_high"] and 0 < pooled["tau_se"] < 1
    assert pooled["inside"] == sum(p["inside"] for p in check.points)
    assert pooled["coverage_low"] <= pooled["coverage"] <= pooled["coverage_high"]
    # The same figures over every acquired point up to each round; the last round's are the pooled ones.
    assert [r["n"] for r in check.by_round] == [4, 8, 12, 16]
    assert check.by_round[-1] == {"round": check.by_round[-1]["round"], **pooled}
    assert all(np.isnan(r["tau_low"]) for r in check.by_round if r["n"] < MIN_TAU_POINTS)
    # The page says it, and the per-batch tau plot is gone.
    assert "surrogate Kendall tau on each new batch" not in page
    assert f"{pooled['inside']} of 16 inside their predicted interval" in page
    assert f"[{pooled['tau_low']:.2f}, {pooled['tau_high']:.2f}]" in page
    # So does `surrogate report --json`, and a real model's measurements carry their standard error.
    out = CliRunner().invoke(app, ["surrogate", "report", "--store", str(searched_store), "--surrogates", "additive",
                                   "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    own = json.loads(out.stdout)["search_predictions"]
    assert own["pooled"]["n"] == len(own["points"]) == 2
    assert all(p["measured_se"] > 0 and p["lower"] < p["upper"] for p in own["points"])
    with Store.open_existing(searched_store, readonly=True) as st:  # too few points for an interval: said so
        few = write_report(st, tmp_path / "few").read_text()
    assert f"(no interval: 2 points, where a bootstrap interval needs {MIN_TAU_POINTS}); " in few


def test_the_bootstrap_interval_of_kendall_tau_is_that_of_scipys_tau_on_the_same_resamples():
    from scipy import stats

    from evoprune.reporting.prediction_metrics import bootstrap_kendall_tau

    rng = np.random.default_rng(3)
    actual = rng.normal(size=25)
    predicted = np.round(actual + rng.normal(scale=0.8, size=25), 1)  # with ties
    low, high, se = bootstrap_kendall_tau(actual, predicted, level=0.9, resamples=300, seed=5)
    idx = np.random.default_rng(5).integers(0, 25, size=(300, 25))
    taus = np.array([stats.kendalltau(actual[i], predicted[i]).statistic for i in idx])
    assert (low, high) == pytest.approx(tuple(np.quantile(taus, [0.05, 0.95])))
    assert se == pytest.approx(np.std(taus, ddof=1))


# -- 6: every level of a sub-layer keeps another width -------------------------------------------
def _arch(intermediate: int = 200, heads: int = 4, kv_heads: int = 2):
    from evoprune.space import ArchSpec

    return ArchSpec("llama", num_layers=4, hidden_size=64, num_heads=heads, num_kv_heads=kv_heads, head_dim=16,
                    intermediate_size=intermediate, vocab_size=384, tie_word_embeddings=True)  # fmt: skip


def test_no_two_levels_of_a_sub_layer_keep_the_same_width(tmp_path, tiny_model_dir, text_file):
    from evoprune.space import HEAD_UNITS, SearchSpace

    # The report: 200 channels in multiples of 64 kept 128 channels at levels 2, 3 and 4.
    space = SearchSpace(_arch(200), mlp_levels=8, mlp_multiple=64)
    assert space.mlp_levels == 4 and [space.kept_mlp_channels(lv) for lv in range(5)] == [200, 192, 128, 64, 0]
    (note,) = space.notes
    assert "--mlp-levels 8" in note and "merged" in note and "the MLP has 4 levels" in note
    assert SearchSpace.from_dict(space.to_dict()) == space
    # The finest grid (the one-shot baselines') reaches every multiple, 192 included.
    assert SearchSpace(_arch(200), mlp_levels=0, mlp_multiple=64).mlp_widths == (200, 192, 128, 64, 0)
    # Every grid, MLP and attention, keeps another width at every level.
    for n in (96, 200, 1536, 8960):
        for levels in (0, 1, 2, 3, 4, 8, 16):
            for multiple in (1, 8, 32, 64, 128, 256):
                if multiple >= n and levels != 1:
                    continue
                widths = SearchSpace(_arch(n), mlp_levels=levels, mlp_multiple=multiple).mlp_widths
                assert all(a > b for a, b in zip(widths, widths[1:], strict=False)), (n, levels, multiple, widths)
    for heads, kv_heads in ((4, 2), (4, 4), (8, 2), (32, 8), (12, 12)):
        for unit in HEAD_UNITS:
            units = SearchSpace(_arch(200, heads, kv_heads), head_unit=unit).attn_units
            for attn_levels in (-1, 0, *range(1, units + 1)):
                s = SearchSpace(_arch(200, heads, kv_heads), head_unit=unit, attn_levels=attn_levels)
                kept = [s.attn_heads(lv) for lv in range(s.attn_levels + 1)]
                assert len(set(kept)) == len(kept), (heads, kv_heads, unit, attn_levels, kept)
    # A multiple no smaller than the MLP leaves nothing to prune in width: one line, nothing written.
    with pytest.raises(EvopruneError) as err:
        SearchSpace(_arch(200), mlp_multiple=256)
    assert "\n" not in str(err.value) and "--mlp-multiple 256" in str(err.value) and "200 channels" in str(err.value)
    assert SearchSpace(_arch(200), mlp_multiple=256, mlp_levels=1).mlp_widths == (200, 0)  # whole MLPs only: fine
    store = tmp_path / "s.db"
    cli = evoprune("search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
                   "--evals", "4", *SEARCH_ARGS, "--mlp-multiple", "96")  # fmt: skip
    _one_line_error(cli, "--mlp-multiple 96", "96 channels")
    assert not store.exists()
    # Grids without repeated widths read, and key their configurations, as before (a store of the previous main).
    with Store.open_existing(Path(__file__).parent / "data" / "store_v1.db", readonly=True) as st:
        run = st.get_run()
        evals = st.evaluations(run.id)
    b = run.settings["backend"]
    rebuilt = SearchSpace(
        SearchSpace.from_dict(run.space).arch, head_unit=b["head_unit"], attn_levels=b["attn_levels"],
        mlp_levels=b["mlp_levels"], mlp_multiple=b["mlp_multiple"],
        compensation_bias=b.get("compensation", "none") == "bias",
    )  # fmt: skip
    assert rebuilt.to_dict() == run.space and rebuilt == SearchSpace.from_dict(run.space)
    assert [e.config_key for e in evals] == [rebuilt.key(e.levels) for e in evals]


def test_a_search_never_evaluates_one_model_twice(tmp_path, tiny_tokenizer, text_file):
    from evoprune.space import SearchSpace
    from tests.conftest import build_tiny_model

    model_dir = tmp_path / "one-layer"
    build_tiny_model("llama", num_layers=1).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    # 96 channels in multiples of 64: 96, 64 or none kept, however many levels are asked; with
    # 3 attention levels that is 9 models, which a random search with budget to spare exhausts.
    backend = BackendSettings(eval_tokens=128, calib_tokens=128, seq_len=64, mlp_levels=8, mlp_multiple=64)
    settings = _settings(evals=40, method="random", min_params=0.0, backend=backend)
    result = search(str(model_dir), str(text_file), str(tmp_path / "s.db"), settings)
    space = SearchSpace.from_dict(result.run.space)
    kept = [tuple(space.widths(e.levels)) for e in result.evaluations]
    assert len(kept) == len(set(kept)) == 9
    assert len({e.metrics["ppl"] for e in result.evaluations}) == 9
    assert space.mlp_widths == (96, 64, 0) and any("merged" in note for note in result.notes)
    assert result.stop_reason is not None and "stopped after 9 of 40" in result.stop_reason


def test_a_store_written_before_levels_were_merged_shows_what_it_keeps_and_exports(tmp_path, tiny_model_dir, text_file):
    import json
    from dataclasses import asdict

    import torch

    from evoprune.backend.pruner import PruningBackend, load_backend
    from evoprune.pruned.export import export_from_store, load_pruned
    from evoprune.space import SearchSpace

    # What the previous main recorded for --mlp-multiple 128 on 96 channels: 8 levels, of which
    # 1 to 7 keep all 96 channels, measured (twice: the same model) as the report describes.
    backend_settings = replace(BACKEND, mlp_levels=8, mlp_multiple=128)
    probe = load_backend(str(tiny_model_dir), str(text_file), replace(backend_settings, mlp_multiple=1))
    record = {**probe.space.to_dict(), "mlp_multiple": 128}
    old = SearchSpace.from_dict(record)
    assert old.mlp_widths == (96,) * 8 + (0,) and old.to_dict() == record
    backend = PruningBackend(probe.loaded, probe.text, backend_settings, probe.calib_text, old)
    untouched, same = np.array([1, 0, 0, 1, 0, 5, 7, 1]), np.array([1, 0, 0, 1, 0, 3, 2, 6])
    store = tmp_path / "old.db"
    with Store(store) as st:
        run, _ = st.get_or_create_run(
            "old", model=str(tiny_model_dir), model_fingerprint=probe.loaded.fingerprint, data=str(text_file),
            data_fingerprint=backend.data_fingerprint, dense_params=old.arch.dense_params(), space=record,
            settings={**asdict(_settings(backend=backend_settings)), "pair_key": "old"}, versions={},
        )  # fmt: skip
        for x in (old.lower, untouched, same):
            m = backend.evaluate(x)
            eid = st.add_pending(run.id, old.key(x), x.tolist(), "design", 0, old.params(x), old.params_fraction(x))
            st.finish(eid, ok=m.ok, metrics=m.metrics, error=m.error, duration_s=m.duration_s)
        evals = st.evaluations(run.id)
    assert evals[1].metrics["ppl"] == evals[2].metrics["ppl"]  # one model, evaluated twice
    # The front shows an untouched MLP at level 0, whatever level the store holds.
    shown = evoprune("pareto", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    points = {p["id"]: p["levels"] for p in json.loads(shown.stdout)["points"]}
    for e in evals[1:]:
        assert points[e.id] == {"attn": [1, 0, 0, 1], "mlp": [0, 0, 0, 0]}
    # It exports as recorded, with the parameters the export holds (no compensation where nothing went).
    np.testing.assert_array_equal(old.canonical(same), [1, 0, 0, 1, 0, 0, 0, 0])
    result = export_from_store(store, tmp_path / "export", str(evals[2].id))
    model, _ = load_pruned(tmp_path / "export")
    assert result.params == old.params(same) == sum(p.numel() for p in model.parameters())
    tokens = backend.eval_windows[:2, :48]
    with backend.applied(same), torch.inference_mode():
        want = backend.loaded.model(input_ids=tokens).logits
    with torch.inference_mode():
        assert torch.equal(model(input_ids=tokens).logits, want)


# -- 9: a given allocation exports ---------------------------------------------------------------
GRID_ARGS = ["--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--mlp-levels", "4"]


def test_a_given_allocation_exports_exactly_as_the_masks_apply_it(tmp_path, tiny_model_dir, text_file, searched_store):
    import json

    import torch

    from evoprune.pruned.allocation import parse_levels, resolve_allocation
    from evoprune.pruned.export import export_config, load_pruned

    model, config = str(tiny_model_dir), "levels:0,1,1,0/2,2,3,4"
    out = tmp_path / "levels"
    cli = evoprune("export", "--model", model, "--config", config, "--data", str(text_file), *GRID_ARGS,
                   "--out", str(out), "--json")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    written = json.loads(cli.stdout)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["levels"] == {"attn": [0, 1, 1, 0], "mlp": [2, 2, 3, 4]} and plan["config"] == config
    # The same resolution as 'evaluate --config' (with the same options), through the masks: the same logits.
    settings = replace(BackendSettings(), eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)
    chosen = resolve_allocation(model, config, data=str(text_file), settings=settings)
    space = chosen.backend.space
    for same in ("levels:0110/2234", "levels:0,1,1,0,2,2,3,4"):  # as pareto prints it, as the store keeps it
        np.testing.assert_array_equal(parse_levels(space, same), chosen.levels)
    tokens = chosen.backend.eval_windows[:2, :48]
    with chosen.backend.applied(chosen.levels), torch.inference_mode():
        want = chosen.backend.loaded.model(input_ids=tokens).logits
    exported, _ = load_pruned(out)
    assert written["params"] == space.params(chosen.levels) == sum(p.numel() for p in exported.parameters())
    with torch.inference_mode():
        assert torch.equal(exported(input_ids=tokens).logits, want)
    # Without --json it says which text and importance chose the channels (levels: alone does not say).
    told = evoprune("export", "--model", model, "--config", config, "--data", str(text_file), *GRID_ARGS,
                    "--out", str(tmp_path / "told"))  # fmt: skip
    assert told.returncode == 0, told.stderr
    assert f"by obs importance on 256 tokens of {text_file}" in " ".join(told.stdout.split()), told.stdout
    # Its plan.json alone exports it again (it records the text), bit for bit.
    again = export_config(model, str(out / "plan.json"), tmp_path / "again")
    assert again.params == written["params"]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    # An evaluation id of a store is the configuration --pick exports, with its run's settings.
    with Store.open_existing(searched_store, readonly=True) as st:
        run = st.get_run()
        ev = [e for e in st.evaluations(run.id) if e.status == "ok"][-1]
    by_id = export_config(model, str(ev.id), tmp_path / "by-id", store=searched_store)
    picked = evoprune("export", "--store", str(searched_store), "--pick", str(ev.id), "--out", str(tmp_path / "pick"))
    assert picked.returncode == 0, picked.stderr
    assert by_id.evaluation == ev.id and by_id.metrics == ev.metrics
    assert (tmp_path / "by-id" / "model.safetensors").read_bytes() == (
        tmp_path / "pick" / "model.safetensors"
    ).read_bytes()
    # levels: next to a store, without options, means what it means in the store's run of this model.
    stored = export_config(model, "levels:" + ",".join(map(str, ev.levels)), tmp_path / "stored", store=searched_store)
    assert stored.evaluation == ev.id
    assert json.loads((tmp_path / "stored" / "plan.json").read_text())["space"] == run.space


def test_export_refuses_a_wrong_allocation_or_mixed_options_in_one_line(tmp_path, tiny_model_dir, searched_store):
    model, out = str(tiny_model_dir), str(tmp_path / "out")
    cases = [
        (["--store", str(searched_store), "--model", model], ["--model and --config go together"]),
        (["--model", model, "--config", "uniform:0.3", "--store", str(searched_store), "--pick", "knee"],
         ["--pick", "pass one or the other"]),
        (["--store", str(searched_store), "--importance", "wanda"], ["go with --model and --config"]),
        (["--model", model, "--config", "levels:0,1/0,1"], ["2 attention levels", "4 layers", "one per layer"]),
        (["--model", model, "--config", "levels:0000/0009", *GRID_ARGS],
         ["level 9 for the MLP of layer 3 is outside 0..4", "--mlp-levels"]),
        (["--model", model, "--config", "3"], ["evaluation id", "--store"]),
        ([], ["--store", "--model and --config"]),
    ]  # fmt: skip
    for args, fragments in cases:
        _one_line_error(evoprune_in_process("export", *args, "--out", out), *fragments)
    # One case through a real process too: the exit code and stderr as a shell sees them.
    _one_line_error(evoprune("export", "--out", out), "--store", "--model and --config")
    assert not Path(out).exists()


def test_stores_that_cannot_be_opened_are_one_line_for_every_command(searched_store, tmp_path, text_file):
    """What a newcomer mistypes: a missing store, a folder, an empty or non-SQLite file, a run
    that is not there, an infinite budget. One line, exit 2, for search, resume and plan alike."""
    folder, empty, text = tmp_path / "adir", tmp_path / "empty.db", tmp_path / "notes.db"
    folder.mkdir()
    empty.write_bytes(b"")
    text.write_text("not a database, " * 100)
    missing = tmp_path / "nope.db"
    for store, fragment in ((missing, "does not exist"), (folder, "is a directory"),
                            (empty, "is an empty file"), (text, "not a SQLite database")):  # fmt: skip
        _one_line_error(evoprune_in_process("resume", "--store", str(store), "--evals", "9"), fragment)
        _one_line_error(evoprune_in_process("plan", "--store", str(store), "--max-params", "0.8"), fragment)
    _one_line_error(evoprune_in_process("resume", "--store", str(searched_store), "--run", "99"), "99")
    for budget in ("inf", "1e400"):
        _one_line_error(evoprune_in_process("plan", "--store", str(searched_store), "--max-params", budget), "finite")
    # search: the folder is refused before the model loads (there is none here to load)
    result = evoprune_in_process("search", "--model", str(tmp_path / "no-model"), "--data", str(text_file),
                                 "--store", str(folder), "--evals", "3")  # fmt: skip
    _one_line_error(result, "is a directory", "runs.db")
    assert not any(folder.iterdir())
