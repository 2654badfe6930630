"""Recovery training of exports: distillation lowers the loss, the result is an export again,
a killed run continues to the same weights, bad input and an --out in use are refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evoprune.backend.data import load_text, token_windows
from evoprune.backend.evaluate import quality
from evoprune.backend.pruner import load_backend
from evoprune.backend.settings import BackendSettings
from evoprune.errors import EvopruneError
from evoprune.pruned.export import export_pruned, load_pruned
from evoprune.recovery.run import recover
from evoprune.recovery.settings import RecoverySettings
from evoprune.recovery.training import WindowOrder, distillation_loss
from tests.conftest import build_tiny_model
from tests.test_export import load_in_fresh_process, prune_everywhere

# One batch of 4 windows is the whole training text, so every step sees the same tokens and
# the first and last losses compare directly.
TINY = dict(steps=12, seq_len=64, batch=4, lr=3e-3, heldout_tokens=256, train_tokens=256, checkpoint_every=0)


def _export(root: Path, family: str, text_file: Path, tokenizer) -> Path:
    dense = root / f"dense-{family}"
    build_tiny_model(family, seed=3).save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    settings = BackendSettings(eval_tokens=128, calib_tokens=128, seq_len=64, mlp_levels=4)
    backend = load_backend(str(dense), str(text_file), settings)
    export_pruned(backend, prune_everywhere(backend.space), root / f"export-{family}")
    return root / f"export-{family}"


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory, text_file, tiny_tokenizer) -> Path:
    return _export(tmp_path_factory.mktemp("recover"), "llama", text_file, tiny_tokenizer)


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*")):
        h.update(str(f.relative_to(directory)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _shapes(directory: Path) -> dict:
    return {k: tuple(v.shape) for k, v in load_file(directory / "model.safetensors").items()}


def test_distillation_loss_is_kl_to_the_teacher_mixed_with_the_lm_loss():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    p, log_q = teacher.softmax(-1), student.log_softmax(-1)
    want_kl = (p * (p.log() - log_q)).sum(-1).mean()
    want_ce = -log_q[:, :-1].gather(-1, ids[:, 1:, None]).mean()
    loss, kl, ce = distillation_loss(student, teacher, ids, 0.25)
    torch.testing.assert_close(kl, want_kl)
    torch.testing.assert_close(ce, want_ce)
    torch.testing.assert_close(loss, 0.75 * want_kl + 0.25 * want_ce)
    assert float(distillation_loss(teacher, teacher, ids)[0]) == pytest.approx(0, abs=1e-6)


def test_window_order_is_seeded_covers_every_window_each_pass_and_resumes_from_its_state():
    a = WindowOrder(5, 3, seed=7)
    first = [a.next() for _ in range(5)]  # 15 indices: three whole passes over 5 windows
    flat = torch.cat(first)
    for k in range(3):
        assert sorted(flat[5 * k : 5 * k + 5].tolist()) == list(range(5))
    b = WindowOrder(5, 3, seed=7)
    b.next()
    state = b.state_dict()
    c = WindowOrder(5, 3, seed=999)
    c.load_state_dict(state)
    assert all(torch.equal(c.next(), want) for want in first[1:])


def test_lora_recovery_lowers_the_loss_and_writes_an_export_that_loads_anywhere(llama_export, text_file, tmp_path):
    before_digest = _digest(llama_export)
    out = tmp_path / "recovered"
    result = recover(llama_export, str(text_file), out, RecoverySettings(method="lora", **TINY))
    assert _digest(llama_export) == before_digest, "the input export was modified"

    assert len(result.losses) == 12 and result.losses[-1] < 0.8 * result.losses[0]
    assert not (out / ".checkpoint").exists() and not (out / ".partial").exists()
    # An export again: the same shapes, other weights, the recovery recorded in plan.json.
    assert _shapes(out) == _shapes(llama_export)
    old, new = load_file(llama_export / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(old[k], new[k]) for k in old)
    assert not any("lora" in k for k in new), "adapters are merged into the weights"
    config_in, config_out = (json.loads((d / "config.json").read_text()) for d in (llama_export, out))
    assert config_out["evoprune_layers"] == config_in["evoprune_layers"]
    assert config_out["model_type"] == "evoprune"
    plan = json.loads((out / "plan.json").read_text())
    rec = plan["recovery"]
    assert rec["data"] == str(text_file) and rec["steps"] == 12 and rec["losses"] == result.losses
    assert rec["teacher"] == json.loads((llama_export / "plan.json").read_text())["source_model"]
    assert plan["levels"] == json.loads((llama_export / "plan.json").read_text())["levels"]

    # The figures before and after are the input's and the written model's, on the first 256 tokens.
    model, tokenizer = load_pruned(out)
    heldout = token_windows(tokenizer, load_text(str(text_file)).text, 256, 64)
    assert quality(model, heldout, None, 4)["ppl"] == pytest.approx(result.heldout_after["ppl"], rel=1e-6)
    original, _ = load_pruned(llama_export)
    assert quality(original, heldout, None, 4)["ppl"] == pytest.approx(result.heldout_before["ppl"], rel=1e-6)
    assert result.teacher_heldout["ppl"] > 1 and result.heldout_before["kl"] > 0
    # Plain transformers in a fresh process, without evoprune, computes the same logits.
    tokens = heldout[:2, :40]
    got = load_in_fresh_process(out, tokens, tmp_path)
    with torch.inference_mode():
        want = model(input_ids=tokens).logits.numpy()
    assert abs(got["logits"] - want).max() < 1e-5
    assert int(got["params"]) == sum(p.numel() for p in model.parameters()) == result.params


@pytest.mark.parametrize("family", ["opt", "qwen3"])
def test_full_recovery_of_other_families(family, tmp_path, text_file, tiny_tokenizer):
    export = _export(tmp_path, family, text_file, tiny_tokenizer)
    settings = RecoverySettings(method="full", lm_weight=0.5, **{**TINY, "lr": 1e-3})
    result = recover(export, str(text_file), tmp_path / "out", settings)
    assert result.losses[-1] < 0.9 * result.losses[0]
    assert _shapes(tmp_path / "out") == _shapes(export)
    model, _ = load_pruned(tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) == result.params


class _StopAt:
    """A progress callback that stops the run at a step, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, event, **info):
        if event == "step" and info["step"] == self.step:
            raise KeyboardInterrupt


def test_a_stopped_recovery_continues_to_the_same_result_and_refuses_other_arguments(llama_export, text_file, tmp_path):
    settings = RecoverySettings(method="lora", **{**TINY, "steps": 6, "train_tokens": 640, "checkpoint_every": 2})
    whole = recover(llama_export, str(text_file), tmp_path / "whole", settings)
    out = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt):
        recover(llama_export, str(text_file), out, settings, _StopAt(5))  # after the checkpoint at step 4
    assert (out / ".checkpoint" / "state.pt").exists() and not (out / "model.safetensors").exists()
    with pytest.raises(EvopruneError, match=r"other arguments \(settings\.lr\).*--restart"):
        recover(llama_export, str(text_file), out, RecoverySettings(**{**vars(settings), "lr": 1e-3}))
    parts = recover(llama_export, str(text_file), out, settings)
    assert parts.resumed_from == [4]
    assert parts.losses == whole.losses and parts.heldout_before == whole.heldout_before
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "plan.json").read_text())["recovery"]["resumed_from"] == [4]


def test_mixed_precision_changes_the_products_not_the_weights_and_resumes_to_the_same_result(
    llama_export, text_file, tmp_path
):
    settings = RecoverySettings(
        method="lora", amp="bfloat16", **{**TINY, "steps": 6, "train_tokens": 640, "checkpoint_every": 2}
    )
    whole = recover(llama_export, str(text_file), tmp_path / "whole", settings)
    plain = recover(
        llama_export, str(text_file), tmp_path / "plain", RecoverySettings(**{**vars(settings), "amp": None})
    )
    assert whole.losses != plain.losses, "autocast did not reach the forward pass"
    assert whole.losses[-1] < whole.losses[0] and whole.losses[0] == pytest.approx(plain.losses[0], rel=0.05)
    # Held-out figures are measured without autocast: before training they are the same model's.
    assert whole.heldout_before == plain.heldout_before
    weights = load_file(tmp_path / "whole" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    out = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt):
        recover(llama_export, str(text_file), out, settings, _StopAt(3))  # after the checkpoint at step 2
    with pytest.raises(EvopruneError, match=r"other arguments \(settings\.amp\)"):
        recover(llama_export, str(text_file), out, RecoverySettings(**{**vars(settings), "amp": "float16"}))
    parts = recover(llama_export, str(text_file), out, settings)
    assert parts.resumed_from == [2] and parts.losses == whole.losses
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_sigkill_then_rerun_equals_an_uninterrupted_run(llama_export, text_file, tmp_path):
    steps, settings = 40, dict(seq_len=64, batch=2, heldout_tokens=128, train_tokens=640, lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command runs below, so both compute the same bits
    try:
        whole = recover(llama_export, str(text_file), tmp_path / "whole", RecoverySettings(steps=steps, **settings))
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "evoprune", "recover", "--model", str(llama_export), "--data", str(text_file),
            "--out", str(out), "--steps", str(steps), "--checkpoint-every", "1", "--json",
            *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = out / ".checkpoint" / "state.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not state.exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the recovery finished before it could be killed"
    assert not (out / "model.safetensors").exists()

    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert len(result["resumed_from"]) == 1 and 1 <= result["resumed_from"][0] < steps
    assert result["losses"] == whole.losses
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _in_use(out: Path, pid: int) -> str:
    return (
        f"output directory '{out}' is in use by another evoprune recover (pid {pid}): wait for it to end "
        "(if it stops early, the same command continues from its checkpoint), or pass another --out"
    )


def test_a_second_recovery_into_an_out_in_use_is_refused_in_one_line_and_changes_nothing(
    llama_export, text_file, tmp_path
):
    from evoprune.recovery.inputs import _lock_out

    out = tmp_path / "out"
    (out / ".checkpoint").mkdir(parents=True)
    (out / ".checkpoint" / "state.pt").write_bytes(b"the other recovery's checkpoint")
    before = _digest(out)
    settings = RecoverySettings(method="lora", **{**TINY, "steps": 2})
    with _lock_out(out):  # another recovery into out holds OUT.lock
        with pytest.raises(EvopruneError) as refused:
            recover(llama_export, str(text_file), out, settings, restart=True)
        assert str(refused.value) == _in_use(out, os.getpid())
        assert _digest(out) == before
    assert (tmp_path / "out.lock").is_file()  # the lock file stays; the lock went with its holder
    # Once released (as when its process ends, even by SIGKILL), the same command runs.
    result = recover(llama_export, str(text_file), out, settings, restart=True)
    assert len(result.losses) == 2 and (out / "model.safetensors").is_file() and not (out / ".checkpoint").exists()


@pytest.mark.parametrize(
    "case", ["not-an-export", "teacher-vocab", "empty-data", "zero-steps", "bad-amp", "out-not-empty", "out-in-use"]
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, llama_export, text_file, tmp_path, tiny_tokenizer):
    from typer.testing import CliRunner

    from evoprune.cli import app

    model, data, out = str(llama_export), str(text_file), tmp_path / "out"
    extra: list[str] = []
    held = ExitStack()
    if case == "not-an-export":
        dense = tmp_path / "dense"
        build_tiny_model("llama").save_pretrained(dense)
        model, needle = str(dense), "is not an evoprune export"
    elif case == "teacher-vocab":
        teacher = tmp_path / "teacher"
        build_tiny_model("llama", vocab_size=512).save_pretrained(teacher)
        tiny_tokenizer.save_pretrained(teacher)
        extra, needle = ["--teacher", str(teacher)], "predicts 512 tokens but the export 384"
    elif case == "empty-data":
        (tmp_path / "empty.txt").write_text("")
        data, needle = str(tmp_path / "empty.txt"), "is empty"
    elif case == "zero-steps":
        extra, needle = ["--steps", "0"], "--steps must be at least 1"
    elif case == "bad-amp":
        extra, needle = ["--amp", "float32"], "--amp 'float32' is unknown: use bfloat16 or float16"
    elif case == "out-in-use":
        from evoprune.recovery.inputs import _lock_out

        held.enter_context(_lock_out(out))  # another recovery into out holds OUT.lock
        needle = _in_use(out, os.getpid())
    else:
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        needle = "exists and is not empty"
    before = _digest(llama_export)
    with held:
        result = CliRunner().invoke(
            app, ["recover", "--model", model, "--data", data, "--out", str(out), "--seq-len", "64", *extra]
        )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert _digest(llama_export) == before
    if case == "out-not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_recover_benchmark_runs_on_a_tiny_export(llama_export, text_file, tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "recover.py"
    args = [sys.executable, str(script), "--tiny", "--exports", str(llama_export), "--data", str(text_file),
            "--out-dir", str(tmp_path / "rec")]  # fmt: skip
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "rec" / "recover.json").read_text())
    (row,) = report["rows"]
    assert len(row["losses"]) == 4 and row["heldout_after"]["ppl"] > 1
    for figures in (row["before"], row["after"], report["dense"]):
        assert figures["ppl:wikitext2_test"] > 1 and figures["ppl_se:wikitext2_test"] > 0
    assert row["before"]["ppl:wikitext2_test"] != row["after"]["ppl:wikitext2_test"]
    assert "| export | kept params |" in result.stdout
    # --render reprints the table from the JSON alone and draws the loss curves.
    plot = tmp_path / "loss.png"
    rendered = subprocess.run(
        [sys.executable, str(script), "--render", str(tmp_path / "rec" / "recover.json"), "--plot", str(plot)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert "| export | kept params |" in rendered.stdout and plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flag", ["--exports", "--render"])
def test_recover_benchmark_names_a_missing_input_in_one_line(tmp_path, flag):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "recover.py"
    missing = tmp_path / ("nope" if flag == "--exports" else "nope.json")
    out_dir = tmp_path / "out"
    result = subprocess.run([sys.executable, str(script), flag, str(missing), "--out-dir", str(out_dir)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and str(missing) in result.stderr.splitlines()[-1]
    assert not out_dir.exists()  # a typo leaves nothing behind


def test_a_recovery_is_recorded_against_its_evaluation_and_plan_shows_it(tmp_path, tiny_model_dir, text_file):
    from typer.testing import CliRunner

    from evoprune.choice.plan import plan
    from evoprune.cli import app
    from evoprune.engine.run import search
    from evoprune.engine.settings import SearchSettings
    from evoprune.objectives.spec import Budget

    store = tmp_path / "s.db"
    backend = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)
    search(
        str(tiny_model_dir),
        str(text_file),
        str(store),
        SearchSettings(evals=4, init=4, min_params=0.3, backend=backend),
    )
    best = plan(str(store), Budget(max_params=0.95)).evaluation
    runner = CliRunner()
    export = tmp_path / "export"
    done = runner.invoke(app, ["export", "--store", str(store), "--pick", str(best.id), "--out", str(export)])
    assert done.exit_code == 0, done.output

    with pytest.raises(EvopruneError, match="does not exist"):
        recover(export, str(text_file), tmp_path / "x", RecoverySettings(**TINY), store=tmp_path / "other.db")
    assert recover(export, str(text_file), tmp_path / "none", RecoverySettings(**TINY), store=None).stored is None
    result = recover(export, str(text_file), tmp_path / "out", RecoverySettings(**TINY))  # the store plan.json names
    assert result.stored["evaluation"] == best.id and result.stored["store"] == str(store)
    # Held out: the search's first-rung windows (same text, 256 tokens, 64-token windows), so
    # "before" is the figure the search measured through its masks.
    assert result.heldout_before["ppl"] == pytest.approx(best.metrics["ppl"], rel=1e-5)

    (record,) = plan(str(store), Budget(max_params=0.95)).recoveries
    assert record.eval_id == best.id and record.steps == 12 and record.out == str((tmp_path / "out").resolve())
    assert record.before == result.heldout_before and record.after == result.heldout_after
    shown = runner.invoke(app, ["plan", "--store", str(store), "--max-params", "0.95"])
    assert shown.exit_code == 0, shown.output
    assert "recovered (lora, 12 steps)" in shown.stdout and f"{result.heldout_after['ppl']:.2f}" in shown.stdout
    # The report shows it too, beside the figure the search chose the configuration by.
    assert runner.invoke(app, ["report", "--store", str(store), "--out", str(tmp_path / "report")]).exit_code == 0
    page = (tmp_path / "report" / "index.html").read_text()
    section = page.split("<h2>Recovery</h2>")[1].split("<h2>")[0]
    assert f"<td>{best.id}</td>" in section and "lora, 12 steps" in section
    assert f"{result.heldout_before['ppl']:.2f}" in section and f"{result.heldout_after['ppl']:.2f}" in section
    # plan.json's store is gone: the recovery says it goes unrecorded (it said nothing)
    store.rename(tmp_path / "moved.db")
    moved = recover(export, str(text_file), tmp_path / "gone", RecoverySettings(**TINY))
    assert moved.stored is None
    assert any(n.startswith("the recovery will not be recorded in the store plan.json names") for n in moved.notes)


def test_the_teacher_is_checked_as_searched_in_any_training_dtype(tmp_path, text_file, tiny_tokenizer):
    export = _export(tmp_path, "llama", text_file, tiny_tokenizer)
    short = {**TINY, "steps": 2}
    # bfloat16 training of a float32 export: the teacher is checked as loaded in float32, the
    # result written in the export's own dtype.
    recover(export, str(text_file), tmp_path / "bf16", RecoverySettings(dtype="bfloat16", **short))
    assert {v.dtype for v in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.float32}
    # The dense model plan.json names changed since the export: refused, unless named as --teacher.
    build_tiny_model("llama", seed=11).save_pretrained(tmp_path / "dense-llama")
    with pytest.raises(EvopruneError, match="not the one the export was pruned from.*--teacher"):
        recover(export, str(text_file), tmp_path / "changed", RecoverySettings(**short))
    assert not (tmp_path / "changed").exists()
    recover(
        export, str(text_file), tmp_path / "named", RecoverySettings(teacher=str(tmp_path / "dense-llama"), **short)
    )


def test_finalists_are_recovered_with_one_recipe_ranked_after_recovery_and_resumed(tmp_path, tiny_model_dir, text_file):
    """Training-aware selection (DarwinLM): the plan's best configurations under a budget, each
    exported and recovered, ranked by held-out perplexity afterwards; a rerun trains nothing."""
    from typer.testing import CliRunner

    from evoprune.choice.plan import plan
    from evoprune.cli import app
    from evoprune.engine.run import search
    from evoprune.engine.settings import SearchSettings
    from evoprune.objectives.spec import Budget
    from evoprune.recovery.finalists import finalists_of, recover_finalists
    from evoprune.store import Store

    store = tmp_path / "s.db"
    backend = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64, mlp_levels=4)
    search(
        str(tiny_model_dir),
        str(text_file),
        str(store),
        SearchSettings(evals=6, init=6, min_params=0.3, backend=backend),
    )
    _, ranked, _ = finalists_of(store, 0.95, 2)
    assert len(ranked) == 2 and ranked[0].id == plan(str(store), Budget(max_params=0.95)).evaluation.id
    out = tmp_path / "finalists"
    result = recover_finalists(store, str(text_file), out, max_params=0.95, k=2, settings=RecoverySettings(**TINY))
    assert {f.eval_id for f in result.finalists} == {e.id for e in ranked}
    assert result.search_pick == ranked[0].id
    assert [f.after["nll"] for f in result.finalists] == sorted(f.after["nll"] for f in result.finalists)
    for f in result.finalists:
        assert f.after["nll"] != f.before["nll"]  # every finalist trained
        model, _ = load_pruned(f.recovered)
        assert json.loads((f.recovered / "plan.json").read_text())["evaluation"] == f.eval_id
    with Store.open_existing(store, readonly=True) as st:
        assert sorted(r.eval_id for r in st.recoveries()) == sorted(e.id for e in ranked)

    # A rerun reads what is there (no training, no new record); another recipe is refused.
    again = recover_finalists(store, str(text_file), out, max_params=0.95, k=2, settings=RecoverySettings(**TINY))
    assert again.to_dict() == result.to_dict()
    with Store.open_existing(store, readonly=True) as st:
        assert len(st.recoveries()) == 2
    with pytest.raises(EvopruneError, match="other settings"):
        recover_finalists(
            store, str(text_file), out, max_params=0.95, k=2, settings=RecoverySettings(**{**TINY, "steps": 3})
        )

    runner = CliRunner()
    tiny_args = ["--steps", "12", "--seq-len", "64", "--batch", "4", "--lr", "3e-3", "--heldout-tokens", "256",
                 "--train-tokens", "256", "--checkpoint-every", "0"]  # fmt: skip
    args = ["recover", "--finalists", "2", "--store", str(store), "--max-params", "0.95", "--data", str(text_file)]
    shown = runner.invoke(app, [*args, "--out", str(out), *tiny_args, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["chosen"] == result.chosen.eval_id
    table = runner.invoke(app, [*args, "--out", str(out), *tiny_args])
    assert table.exit_code == 0 and str(result.chosen.recovered) in table.stdout.replace("\n", "")
    for bad, why in [
        (["recover", "--data", str(text_file), "--out", str(tmp_path / "x")], "either --model"),
        ([*args[:5], "--data", str(text_file), "--out", str(tmp_path / "x")], "--max-params"),
        (["recover", "--finalists", "0", *args[3:], "--out", str(tmp_path / "x")], "at least 1"),
    ]:
        failed = runner.invoke(app, bad)
        assert failed.exit_code == 2, failed.output
        assert why in failed.output and "Traceback" not in failed.output


@pytest.mark.parametrize("native", [False, True])
def test_amp_a_device_cannot_run_natively_is_noted_once_before_training(
    native, llama_export, text_file, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    import evoprune.recovery.run as run
    from evoprune.cli import app

    events: list[str] = []
    monkeypatch.setattr(run, "_native_amp", lambda device, amp: native)  # the CPU's instruction set, as a given
    args = dict(steps=1, seq_len=64, batch=4, heldout_tokens=256, train_tokens=256, amp="bfloat16")
    result = recover(
        llama_export, str(text_file), tmp_path / "api", RecoverySettings(**args), lambda e, **i: events.append(e)
    )
    assert (events.index("note") < events.index("train")) if not native else "note" not in events
    assert [n for n in result.notes if "no native bfloat16" in n] == (
        [] if native else [run.amp_note(torch.device("cpu"), "bfloat16")]
    )
    options = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    cli = CliRunner().invoke(
        app,
        ["recover", "--model", str(llama_export), "--data", str(text_file), "--out", str(tmp_path / "cli"), *options],
    )
    assert cli.exit_code == 0, cli.output
    assert sum("no native bfloat16 matrix products" in line for line in cli.stderr.splitlines()) == (0 if native else 1)


def test_recover_labels_its_held_out_kl_as_a_top_32_lower_bound(llama_export, text_file, tmp_path):
    from typer.testing import CliRunner

    from evoprune.cli import app

    args = ["recover", "--model", str(llama_export), "--data", str(text_file), "--out", str(tmp_path / "out"),
            "--steps", "1", "--seq-len", "64", "--heldout-tokens", "256", "--train-tokens", "256"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "KL to the teacher, top-32 (nats/token, a lower bound)" in result.stdout
    assert "KL to the teacher (nats/token)" not in result.stdout
