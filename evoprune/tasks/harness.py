"""lm-evaluation-harness as a second scorer (optional: ``pip install 'evoprune[tasks]'``).

- ``lm_eval:NAME`` runs the harness's own task NAME (``hellaswag``, ``piqa``, ...) on a model in
  memory, masked or not. Those tasks download their data from the Hugging Face hub.
- ``harness_local`` runs evoprune's questions (a local task's contexts and choices, rendered by
  evoprune) through the harness's scorer: no hub, and a check that both scorers agree.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from evoprune.errors import EvopruneError
from evoprune.hub import offline_unless_reachable
from evoprune.tasks.evaluator import TaskResult
from evoprune.tasks.scoring import stderr
from evoprune.tasks.spec import Question, TaskRef, build_questions

PREFIX = "lm_eval:"
INSTALL_HINT = "install lm-evaluation-harness with pip install 'evoprune[tasks]'"


def available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _require(what: str) -> None:
    if not available():
        raise EvopruneError(f"{what} needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")


def harness_lm(model, tokenizer, batch_size: int = 1):
    """The harness's HFLM around a model object (no loading: masks stay in effect)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _metrics(task_results: dict) -> tuple[dict[str, float], dict[str, float]]:
    """{"acc": ..} and their standard errors from one task's harness results ("acc,none": ..)."""
    metrics, errors = {}, {}
    for key, value in task_results.items():
        name, _, _filter = key.partition(",")
        if not isinstance(value, (int, float)):
            continue
        if name.endswith("_stderr"):
            errors[name[: -len("_stderr")]] = float(value)
        elif name in ("acc", "acc_norm"):
            metrics[name] = float(value)
    return metrics, {k: v for k, v in errors.items() if k in metrics}


def _simple_evaluate(lm, tasks: list, *, limit, shots, seed: int) -> dict:
    import lm_eval

    offline_unless_reachable()  # the harness reads its data sets from the hub

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=shots,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        verbosity="ERROR",
    )


def harness_evaluate(
    model, tokenizer, name: str, *, limit: int | None = None, shots: int | None = None, seed: int = 0
) -> TaskResult:
    """Run the harness's task ``name`` (``lm_eval:`` prefix optional) on ``model`` as it is."""
    task = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    _require(f"task '{PREFIX}{task}'")
    start = time.perf_counter()
    try:
        out = _simple_evaluate(harness_lm(model, tokenizer), [task], limit=limit, shots=shots, seed=seed)
    except EvopruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - the harness raises anything from KeyError to hub errors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvopruneError(
            f"lm-evaluation-harness could not run task {task!r} ({reason[:200]}): its tasks need the Hugging Face "
            "hub; without one use a local task (arc_easy, mmlu, or a task file)"
        ) from None
    results = out["results"]
    if task not in results:
        raise EvopruneError(f"lm-evaluation-harness returned no results for {task!r} (a group?): name one task")
    metrics, errors = _metrics(results[task])
    n = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
    return TaskResult(
        task=f"{PREFIX}{task}",
        shots=shots or 0,
        limit=limit,
        seed=seed,
        data="huggingface hub",
        n=n,
        metrics=metrics,
        stderr=errors,
        scorer="lm_eval",
        duration_s=time.perf_counter() - start,
    )


def harness_local(
    model,
    tokenizer,
    ref: TaskRef,
    *,
    limit: int | None = None,
    shots: int | None = None,
    seed: int = 0,
    questions: list[Question] | None = None,
) -> TaskResult:
    """evoprune's questions of a local task, scored by the harness (no hub needed).

    evoprune renders the contexts (description, shots, prompt) and the choices; the harness
    tokenizes, runs the model and computes acc/acc_norm itself. Per-question log-likelihoods are
    returned in ``items``.
    """
    from evoprune.tasks.scoring import Scored

    _require("scoring a local task with the harness")
    if questions is None:
        questions = build_questions(ref, limit=limit, shots=shots, seed=seed)
    delimiters = {c[: len(c) - len(ch)] for q in questions for c, ch in zip(q.continuations, q.choices, strict=True)}
    if len(delimiters) != 1:
        raise EvopruneError(f"task {ref.name!r}: choices use several delimiters; the harness takes one")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evoprune-harness-") as tmp:
        data = Path(tmp) / "questions.jsonl"
        with data.open("w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps({"context": q.context, "choices": list(q.choices), "gold": q.gold}) + "\n")
        config = {
            "task": f"evoprune_{ref.name}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": delimiters.pop(),
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ref.spec.metrics],
        }
        out = _simple_evaluate(harness_lm(model, tokenizer), [config], limit=None, shots=0, seed=seed)
    name = config["task"]
    metrics, errors = _metrics(out["results"][name])
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    items = []
    for q, sample in zip(questions, samples, strict=True):
        lls = tuple(float(r[0]) for r in sample["filtered_resps"])
        norm = [ll / len(c) for ll, c in zip(lls, q.choices, strict=True)]
        items.append(Scored(q.index, q.gold, lls, lls.index(max(lls)), norm.index(max(norm))))
    return TaskResult(
        task=ref.name,
        shots=ref.spec.shots if shots is None else shots,
        limit=limit,
        seed=seed,
        data=str(ref.data),
        n=len(items),
        metrics=metrics,
        stderr={m: stderr(v, len(items)) for m, v in metrics.items()} | errors,
        scorer="lm_eval",
        duration_s=time.perf_counter() - start,
        items=items,
    )
