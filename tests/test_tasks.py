"""Task accuracy: the multiple-choice scorer, the data layouts, prompts, errors, and the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evoprune.errors import EvopruneError
from evoprune.pruned.evaluate import run_evaluate
from evoprune.store import Store
from evoprune.tasks import (
    TaskEvaluator,
    build_questions,
    encode_pair,
    evaluate_model,
    load_docs,
    resolve_task,
    score_questions,
    task_evaluators,
)
from evoprune.tasks.formats import Doc
from evoprune.tasks.scoring import predictions
from evoprune.tasks.spec import read_spec
from tests.conftest import SHARED_DATA, smollm2_mixed_config
from tests.test_export import _backend, prune_everywhere

REAL_ARC = SHARED_DATA / "arc_easy" / "ARC-Easy-Dev.jsonl"
REAL_MMLU = SHARED_DATA / "mmlu" / "dev"
needs_shared_data = pytest.mark.skipif(not REAL_ARC.exists() or not REAL_MMLU.is_dir(), reason="no ../shared/data")

ARC_ITEMS = [
    ("Which of these is a gas at room temperature?", ["ice", "steam", "sand", "iron"], "ABCD", "B"),
    ("What do plants need to make food?", ["sunlight", "darkness", "salt"], "ABC", "A"),
    (
        "Which unit measures length?",
        ["kilogram", "metre", "second", "ampere", "kelvin"],
        "ABCDE",
        "B",
    ),
    ("Which planet is closest to the Sun?", ["Venus", "Mars", "Mercury", "Earth"], "1234", "3"),
    ("Which animal is a mammal?", ["shark", "trout", "whale", "eel"], "ABCD", "C"),
    (
        "Water boils at sea level at about",
        ["50 degrees C", "100 degrees C", "150 degrees C", "0 degrees C"],
        "1234",
        "2",
    ),
]


def write_arc(path: Path, items=ARC_ITEMS) -> Path:
    lines = []
    for i, (stem, texts, labels, key) in enumerate(items):
        choices = [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)]
        lines.append(json.dumps({"id": f"q{i}", "question": {"stem": stem, "choices": choices}, "answerKey": key}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_mmlu(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "astronomy_dev.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\n"
        "What is the Sun?,A planet,A star,A moon,A comet,1\n"
        '"Which is larger:\nthe Earth or the Moon?",The Moon,They are equal,The Earth,Neither,2\n'
        "How many planets orbit the Sun?,7,8,9,10,1\n",
        encoding="utf-8",
    )
    (directory / "high_school_physics_dev.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\n"
        " What is the unit of force? ,newton,joule,watt,pascal,0\n"
        "What is the unit of energy?,newton,joule,watt,pascal,1\n"
        "What is the unit of power?,newton,joule,watt,pascal,2\n",
        encoding="utf-8",
    )
    return directory


@pytest.fixture
def arc_file(tmp_path) -> Path:
    return write_arc(tmp_path / "arc.jsonl")


@pytest.fixture
def mmlu_dir(tmp_path) -> Path:
    return write_mmlu(tmp_path / "mmlu")


def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """The continuation's summed log-probability from one plain forward pass of context + continuation."""
    ctx = tokenizer.encode(context)
    cont = tokenizer.encode(context + continuation)[len(ctx) :]
    with torch.inference_mode():
        logprobs = F.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), dim=-1)
    return sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


# -- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_scores_equal_hand_computed_loglikelihoods_dense_and_masked(
    family, tiny_tokenizer, text_file, arc_file, mmlu_dir
):
    backend = _backend(family, tiny_tokenizer, text_file)
    model = backend.loaded.model
    questions = build_questions(resolve_task(f"arc_easy={arc_file}"), shots=1) + build_questions(
        resolve_task(f"mmlu={mmlu_dir}")
    )
    masks = backend._masks()
    for plans in (None, backend.plan(prune_everywhere(backend.space))):
        if plans is not None:
            masks.apply(plans)  # layer 0's attention and layer 1's MLP removed, the rest narrowed
        try:
            scored = score_questions(model, tiny_tokenizer, questions)
            for q, s in zip(questions, scored, strict=True):
                want = [hand_loglikelihood(model, tiny_tokenizer, q.context, c) for c in q.continuations]
                assert s.loglikelihoods == pytest.approx(want, abs=2e-4)
                assert s.pred == int(np.argmax(want))
                assert s.pred_norm == int(np.argmax(np.array(want) / [len(c) for c in q.choices]))
        finally:
            masks.reset()


def test_accuracy_is_the_share_of_questions_won(tiny_tokenizer, arc_file):
    from tests.conftest import build_tiny_model

    model = build_tiny_model("llama", seed=3)
    result = evaluate_model(model, tiny_tokenizer, f"arc_easy={arc_file}")
    assert result.n == len(ARC_ITEMS)
    assert result.metrics["acc"] == pytest.approx(np.mean([s.pred == s.gold for s in result.items]))
    assert result.metrics["acc_norm"] == pytest.approx(np.mean([s.pred_norm == s.gold for s in result.items]))
    assert result.keyed() == {"acc:arc_easy": result.metrics["acc"], "acc_norm:arc_easy": result.metrics["acc_norm"]}
    # The 3- and 5-choice questions get 3 and 5 scores; the gold of "1234"-labelled items is an index.
    assert [len(s.loglikelihoods) for s in result.items] == [4, 3, 5, 4, 4, 4]
    assert [s.gold for s in result.items] == [1, 0, 1, 2, 2, 1]


def test_acc_norm_divides_by_the_length_of_the_choice_without_the_delimiter():
    # per character of "a"/"bbbb": -2.0 vs -1.5; of " a"/" bbbb" it would be -1.0 vs -1.2
    assert predictions([-2.0, -6.0], ["a", "bbbb"]) == (0, 1)
    assert predictions([-3.0, -3.0, -1.0], ["x", "y", "zz"]) == (2, 2)
    assert predictions([-1.0, -1.0], ["same", "also"]) == (0, 0)  # ties go to the first choice


def test_encode_pair_splits_like_the_harness(tiny_tokenizer):
    ctx, cont = encode_pair(tiny_tokenizer, "Question: why?\nAnswer: ", "because")
    # The trailing space moves to the continuation, so " because" is tokenized as a word.
    assert ctx == tiny_tokenizer.encode("Question: why?\nAnswer:")
    assert ctx + cont == tiny_tokenizer.encode("Question: why?\nAnswer: because")
    ctx, cont = encode_pair(tiny_tokenizer, "", "hello")
    assert ctx == [tiny_tokenizer.bos_token_id] and cont == tiny_tokenizer.encode("hello")


# -- data layouts and prompts -----------------------------------------------------------------


def test_loaders_read_the_three_layouts(tmp_path, arc_file, mmlu_dir):
    arc = load_docs("arc", arc_file)
    assert arc[1] == Doc("What do plants need to make food?", ("sunlight", "darkness", "salt"), 0)
    assert arc[3].gold == 2 and len(arc[2].choices) == 5
    hf = tmp_path / "hf.jsonl"
    hf.write_text(
        json.dumps({"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}) + "\n"
    )
    assert load_docs("arc", hf) == [Doc("Q?", ("a", "b"), 1)]

    mmlu = load_docs("mmlu", mmlu_dir)
    assert len(mmlu) == 6 and mmlu[1].question == "Which is larger:\nthe Earth or the Moon?" and mmlu[1].gold == 2
    assert [d.subject for d in mmlu] == ["astronomy"] * 3 + ["high_school_physics"] * 3
    assert load_docs("mmlu", mmlu_dir / "astronomy_dev.csv") == mmlu[:3]
    headerless = tmp_path / "anatomy_test.csv"
    headerless.write_text("What is a bone?,tissue,organ,cell,gas,B\n")
    assert load_docs("mmlu", headerless) == [Doc("What is a bone?", ("tissue", "organ", "cell", "gas"), 1, "anatomy")]

    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        json.dumps({"context": "The sky is", "choices": ["blue", "green"], "answer": 0})
        + "\n\n"
        + json.dumps({"question": "2+2=", "choices": ["3", "4", "5"], "answer": 1, "subject": "maths"})
        + "\n"
    )
    assert load_docs("mc_jsonl", mc) == [
        Doc("The sky is", ("blue", "green"), 0),
        Doc("2+2=", ("3", "4", "5"), 1, "maths"),
    ]


@needs_shared_data
def test_loaders_read_the_real_arc_and_mmlu_files():
    arc = load_docs("arc", REAL_ARC)
    assert len(arc) == 570
    assert sorted(len(d.choices) for d in arc if len(d.choices) != 4) == [3, 5, 5]
    assert all(0 <= d.gold < len(d.choices) for d in arc)
    mmlu = load_docs("mmlu", REAL_MMLU)
    subjects = {d.subject for d in mmlu}
    assert len(mmlu) == 285 and len(subjects) == 57 and "high_school_physics" in subjects
    assert all(sum(d.subject == s for d in mmlu) == 5 for s in subjects)
    assert any("\n" in d.question for d in mmlu)  # quoted line breaks stay inside a question
    # The shipped tasks find these files by default.
    assert resolve_task("arc_easy").data == REAL_ARC.resolve()
    assert len(build_questions(resolve_task("mmlu"), limit=20)) == 20


def test_prompts_are_the_harness_formats(arc_file, mmlu_dir):
    q = build_questions(resolve_task(f"arc_easy={arc_file}"))[1]
    assert q.context == "Question: What do plants need to make food?\nAnswer:"
    assert q.continuations == (" sunlight", " darkness", " salt") and q.choices == ("sunlight", "darkness", "salt")

    mmlu = resolve_task(f"mmlu={mmlu_dir}")
    q = build_questions(mmlu)[3]
    assert q.context == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What is the unit of force?\nA. newton\nB. joule\nC. watt\nD. pascal\nAnswer:"
    )
    assert q.continuations == (" A", " B", " C", " D") and q.choices == ("A", "B", "C", "D") and q.gold == 0
    # Few-shot: the first other questions of the same subject, answered, then the question.
    q = build_questions(mmlu, shots=2)[4]
    assert q.context == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What is the unit of force?\nA. newton\nB. joule\nC. watt\nD. pascal\nAnswer: A\n\n"
        "What is the unit of power?\nA. newton\nB. joule\nC. watt\nD. pascal\nAnswer: C\n\n"
        "What is the unit of energy?\nA. newton\nB. joule\nC. watt\nD. pascal\nAnswer:"
    )


def test_fewshot_examples_and_subsets_are_seeded_and_never_the_question_itself(tmp_path):
    items = [(f"Question number {i}?", [f"yes {i}", f"no {i}"], "AB", "AB"[i % 2]) for i in range(30)]
    ref = resolve_task(f"arc_easy={write_arc(tmp_path / 'many.jsonl', items)}")
    a = build_questions(ref, limit=8, shots=3, seed=5)
    assert a == build_questions(ref, limit=8, shots=3, seed=5)
    assert [q.index for q in a] == sorted(q.index for q in a) and len({q.index for q in a}) == 8
    assert [q.index for q in build_questions(ref, limit=8, seed=6)] != [q.index for q in a]
    for q in a:
        shown = q.context.split("\n\n")
        assert len(shown) == 4 and shown[-1] == f"Question: Question number {q.index}?\nAnswer:"
        for shot in shown[:-1]:
            j = int(shot.split("number ")[1].split("?")[0])
            assert j != q.index and shot.endswith(f"?\nAnswer: {'yes' if j % 2 == 0 else 'no'} {j}")


# -- bad input --------------------------------------------------------------------------------


def test_bad_task_names_data_and_layouts_get_one_clear_error(tmp_path, arc_file, mmlu_dir):
    with pytest.raises(EvopruneError, match=r"unknown task 'nope': use one of arc_challenge, arc_easy, mmlu"):
        resolve_task("nope")
    with pytest.raises(EvopruneError, match=r"task 'arc_easy': data '.*missing.jsonl' does not exist"):
        resolve_task(f"arc_easy={tmp_path / 'missing.jsonl'}")
    with pytest.raises(EvopruneError, match=r"arc\.jsonl' line 1 is not in the MMLU layout: expected MMLU CSV rows"):
        build_questions(resolve_task(f"mmlu={arc_file}"))
    with pytest.raises(EvopruneError, match=r"astronomy_dev\.csv' line 1 is not JSON: expected an AI2 ARC jsonl line"):
        build_questions(resolve_task(f"arc_easy={mmlu_dir / 'astronomy_dev.csv'}"))
    bad_key = write_arc(tmp_path / "bad.jsonl", ARC_ITEMS[:2] + [("Q?", ["a", "b"], "AB", "C")])
    with pytest.raises(EvopruneError, match=r"bad\.jsonl' line 3 is not in the ARC layout"):
        load_docs("arc", bad_key)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "x", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(EvopruneError, match=r"mc\.jsonl' line 1 is not a multiple-choice item: expected"):
        load_docs("mc_jsonl", mc)
    with pytest.raises(EvopruneError, match=r"3-shot needs 3 other questions of subject 'astronomy', the data has 2"):
        build_questions(resolve_task(f"mmlu={mmlu_dir}"), shots=3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvopruneError, match=r"has no \.csv files"):
        load_docs("mmlu", empty)


def test_task_files_are_validated_and_usable(tmp_path, arc_file):
    spec = tmp_path / "my_task.yaml"
    prompt = json.dumps("Q: {question}\nA:")  # a JSON string is a YAML double-quoted string
    spec.write_text(f"name: my_task\nformat: arc\npath: {arc_file.name}\nprompt: {prompt}\n")
    questions = build_questions(resolve_task(str(spec)))
    assert questions[0].context == "Q: Which of these is a gas at room temperature?\nA:"  # path relative to the file
    spec.write_text("name: x\nformat: arc\npath: a.jsonl\nprompt: '{question}'\ncolour: red\n")
    with pytest.raises(EvopruneError, match=r"my_task\.yaml' has an unknown field 'colour'"):
        read_spec(spec)
    spec.write_text("name: x\nformat: csv\npath: a.jsonl\nprompt: '{question}'\n")
    with pytest.raises(EvopruneError, match=r"my_task\.yaml': format 'csv' is unknown: use arc, mmlu, mc_jsonl"):
        read_spec(spec)
    spec.write_text("name: x\nformat: arc\npath: a.jsonl\nprompt: '{stem}'\n")
    with pytest.raises(EvopruneError, match=r"prompt template uses \{stem\}"):
        read_spec(spec)


# -- through the masks --------------------------------------------------------------------------


def test_task_evaluator_through_masks_equals_the_sliced_model_and_feeds_evaluate(tiny_tokenizer, text_file, arc_file):
    backend = _backend("llama", tiny_tokenizer, text_file)
    x = prune_everywhere(backend.space)
    tokens = backend.eval_windows[:1, :32]
    with torch.inference_mode():
        dense_before = backend.loaded.model(input_ids=tokens).logits
    evaluator = TaskEvaluator(backend, f"arc_easy={arc_file}", limit=4, seed=1)
    assert evaluator.metric_names == ("acc:arc_easy", "acc_norm:arc_easy")
    masked = evaluator.result(x)
    sliced = evaluate_model(backend.sliced_copy(x), tiny_tokenizer, f"arc_easy={arc_file}", limit=4, seed=1)
    assert [s.index for s in masked.items] == [s.index for s in sliced.items]
    for a, b in zip(masked.items, sliced.items, strict=True):
        assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-4)
        assert (a.pred, a.pred_norm) == (b.pred, b.pred_norm)
    assert masked.metrics == sliced.metrics
    with torch.inference_mode():
        torch.testing.assert_close(backend.loaded.model(input_ids=tokens).logits, dense_before, atol=0, rtol=0)

    [from_names] = task_evaluators(backend, ["params", "acc_norm:arc_easy=" + str(arc_file), "ppl"], limit=4)
    assert from_names.task == "arc_easy"
    backend.extra_metrics.append(evaluator)
    m = backend.evaluate(x)
    assert m.ok and m.metrics["ppl"] > 1
    assert {k: m.metrics[k] for k in evaluator.metric_names} == evaluator.evaluate(x) == masked.keyed()
    with pytest.raises(EvopruneError, match=r"task 'mmlu' reports acc:mmlu, not 'acc_norm:mmlu'"):
        task_evaluators(backend, ["acc_norm:mmlu"])


def test_lm_evaluation_harness_scores_the_same_questions_the_same(tiny_tokenizer, arc_file, mmlu_dir):
    pytest.importorskip("lm_eval")
    from evoprune.tasks.harness import harness_local
    from tests.conftest import build_tiny_model

    model = build_tiny_model("llama", seed=11)
    for name in (f"arc_easy={arc_file}", f"mmlu={mmlu_dir}"):
        ref = resolve_task(name)
        ours = evaluate_model(model, tiny_tokenizer, ref)
        theirs = harness_local(model, tiny_tokenizer, ref)
        for a, b in zip(ours.items, theirs.items, strict=True):
            assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-4)
        assert theirs.metrics == pytest.approx(ours.metrics, abs=1e-12)


# -- the command line ---------------------------------------------------------------------------


def evoprune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evoprune", *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def test_cli_evaluate_by_evaluation_id_then_its_export_in_a_fresh_process(
    tmp_path, tiny_model_dir, text_file, arc_file, mmlu_dir
):
    store = tmp_path / "s.db"
    search_args = ["--eval-tokens", "256", "--calib-tokens", "256", "--seq-len", "64", "--mlp-levels", "4"]
    result = evoprune(
        "search", "--model", str(tiny_model_dir), "--data", str(text_file), "--store", str(store),
        "--evals", "4", "--init", "4", *search_args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    con = sqlite3.connect(store)
    eval_id = con.execute(
        "SELECT id FROM evaluations WHERE status='ok' AND params_fraction < 0.95 ORDER BY id LIMIT 1"
    ).fetchone()[0]
    con.close()
    tasks = f"arc_easy={arc_file},mmlu={mmlu_dir}"

    out = tmp_path / "masked.json"
    args = ["--tasks", tasks, "--limit", "5", "--store", str(store)]
    masked = evoprune("evaluate", "--model", str(tiny_model_dir), "--config", str(eval_id), *args, "--out", str(out))
    assert masked.returncode == 0, masked.stderr
    assert "Task accuracy" in masked.stdout and "arc_easy" in masked.stdout
    report = json.loads(out.read_text())
    assert report["source"] == "masks" and report["evaluation"] == eval_id
    assert set(report["metrics"]) == {"acc:arc_easy", "acc_norm:arc_easy", "acc:mmlu"}
    assert [r["n"] for r in report["results"]] == [5, 5]
    with Store(store) as st:
        stored = st.task_results(eval_id=eval_id)
    assert [(r.task, r.source, r.n) for r in stored] == [("arc_easy", "masks", 5), ("mmlu", "masks", 5)]
    assert stored[0].metrics == report["results"][0]["metrics"]

    export_dir = tmp_path / "export"
    exported = evoprune("export", "--store", str(store), "--pick", str(eval_id), "--out", str(export_dir))
    assert exported.returncode == 0, exported.stderr
    fresh = evoprune("evaluate", "--model", str(export_dir), *args, "--json")
    assert fresh.returncode == 0, fresh.stderr
    again = json.loads(fresh.stdout)
    assert again["source"] == "export" and again["evaluation"] == eval_id  # found by its configuration
    assert again["metrics"] == report["metrics"]

    # The export's plan.json as --config applies the same configuration through the masks.
    by_plan = run_evaluate(str(tiny_model_dir), [tasks.split(",")[0]], config=str(export_dir / "plan.json"), limit=5)
    assert (
        by_plan.target.levels == report["levels"]
        and by_plan.metrics()["acc:arc_easy"] == report["metrics"]["acc:arc_easy"]
    )
    items = [r["items"] for r in report["results"] if r["task"] == "arc_easy"][0]
    for a, b in zip(items, by_plan.results[0].items, strict=True):
        assert a["loglikelihoods"] == pytest.approx(list(b.loglikelihoods), abs=1e-5)


def test_a_task_named_twice_is_scored_once():
    from evoprune.pruned.evaluate import parse_tasks

    assert parse_tasks("arc_easy, mmlu,arc_easy,") == ["arc_easy", "mmlu"]
    with pytest.raises(EvopruneError, match="--tasks names no task"):
        parse_tasks(" , ")


def test_questions_cut_to_the_models_positions_are_counted_and_said(tiny_model_dir):
    """25 ARC shots are far longer than the tiny model's 512 positions: the context is cut from the
    left, as lm-evaluation-harness cuts it, and the user hears of it (it was silent)."""
    from typer.testing import CliRunner

    from evoprune.cli import app

    arc = SHARED_DATA / "arc_easy" / "ARC-Easy-Dev.jsonl"
    args = ["evaluate", "--model", str(tiny_model_dir), "--tasks", f"arc_easy={arc}", "--limit", "2", "--json"]
    cut = CliRunner().invoke(app, [*args, "--shots", "25"])
    assert cut.exit_code == 0, cut.output
    assert json.loads(cut.stdout)["results"][0]["truncated"] == 2
    assert "note: 2 of 2 arc_easy questions were cut from the left" in cut.stderr
    whole = CliRunner().invoke(app, [*args, "--shots", "0"])
    assert json.loads(whole.stdout)["results"][0]["truncated"] == 0 and "note:" not in whole.stderr


def test_cli_evaluate_uniform_configuration_and_bad_input(tmp_path, tiny_model_dir, text_file, arc_file):
    report = run_evaluate(
        str(tiny_model_dir), [f"arc_easy={arc_file}"], config="uniform:0.5", data=str(text_file), limit=3
    )
    space_levels = report.target.levels
    assert report.target.source == "masks" and 0.5 < report.target.params_fraction < 0.8
    assert space_levels == [1] * 4 + [4] * 4  # half of the 2 attention and the 8 MLP levels
    assert report.results[0].n == 3

    with pytest.raises(EvopruneError, match=r"the ratio must be a number from 0 to 1"):
        run_evaluate(str(tiny_model_dir), [f"arc_easy={arc_file}"], config="uniform:2")
    with pytest.raises(EvopruneError, match=r"is an evaluation id: pass the --store"):
        run_evaluate(str(tiny_model_dir), [f"arc_easy={arc_file}"], config="3")

    bad = evoprune("evaluate", "--model", str(tiny_model_dir), "--tasks", "arc_easy,hellaswag")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("error: unknown task 'hellaswag'") and "lm_eval:NAME" in bad.stderr
    wrong = evoprune("evaluate", "--model", str(tiny_model_dir), "--tasks", f"mmlu={arc_file}")
    assert wrong.returncode == 2 and "is not in the MMLU layout" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


# -- the real SmolLM2-135M ----------------------------------------------------------------------


@pytest.mark.real_model
@needs_shared_data
def test_smollm2_arc_accuracy_through_masks_equals_its_export_in_a_fresh_process(smollm2, tmp_path):
    from evoprune.pruned.export import export_pruned

    space = smollm2.space
    x = smollm2_mixed_config(space)
    masked = TaskEvaluator(smollm2, "arc_easy", limit=30).result(space.validate(x))
    export_pruned(smollm2, x, tmp_path / "export")
    out = tmp_path / "export.json"
    result = subprocess.run(
        [sys.executable, "-m", "evoprune", "evaluate", "--model", str(tmp_path / "export"), "--tasks", "arc_easy",
         "--limit", "30", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    exported = json.loads(out.read_text())["results"][0]
    assert exported["n"] == masked.n == 30
    assert exported["metrics"] == masked.metrics  # acc and acc_norm, exactly
    for a, b in zip(masked.items, exported["items"], strict=True):
        assert a.index == b["index"] and (a.pred, a.pred_norm) == (b["pred"], b["pred_norm"])
        assert list(a.loglikelihoods) == pytest.approx(b["loglikelihoods"], abs=1e-3)
