"""Task accuracy of a model, of an export, or of configurations applied through the masks."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from evoprune.errors import EvopruneError
from evoprune.tasks.scoring import Scored, accuracy, score_questions, stderr
from evoprune.tasks.spec import Question, TaskRef, build_questions, resolve_task


@dataclass
class TaskResult:
    """Accuracy of one model on one task."""

    task: str
    shots: int
    limit: int | None
    seed: int
    data: str
    n: int
    metrics: dict[str, float]  # {"acc": ..., "acc_norm": ...}
    stderr: dict[str, float]
    scorer: str = "evoprune"
    duration_s: float = 0.0
    items: list[Scored] = field(default_factory=list)

    @property
    def truncated(self) -> int:
        """Questions whose context (prompt and shots) was cut from the left to fit the model's
        positions, as lm-evaluation-harness cuts them."""
        return sum(s.truncated for s in self.items)

    def keyed(self, task: str | None = None) -> dict[str, float]:
        """``{"acc:TASK": ..., "acc_norm:TASK": ...}``: the names search objectives use; ``task``
        names the task as an objective does (default: the task's own name)."""
        return {f"{m}:{task or self.task}": v for m, v in self.metrics.items()}

    def to_dict(self, items: bool = False) -> dict:
        d = {
            "task": self.task,
            "shots": self.shots,
            "limit": self.limit,
            "seed": self.seed,
            "data": self.data,
            "n": self.n,
            "metrics": self.metrics,
            "stderr": {k: None if math.isnan(v) else v for k, v in self.stderr.items()},
            "scorer": self.scorer,
            "duration_s": round(self.duration_s, 3),
            "truncated": self.truncated,
        }
        if items:
            d["items"] = [s.to_dict() for s in self.items]
        return d


def _ref(task: str | TaskRef, data_dir: str | Path | None = None) -> TaskRef:
    return task if isinstance(task, TaskRef) else resolve_task(task, data_dir)


def _result(ref: TaskRef, scored: list[Scored], *, shots, limit, seed, duration_s) -> TaskResult:
    metrics = accuracy(scored, ref.spec.metrics)
    return TaskResult(
        task=ref.name,
        shots=ref.spec.shots if shots is None else shots,
        limit=limit,
        seed=seed,
        data=str(ref.data),
        n=len(scored),
        metrics=metrics,
        stderr={m: stderr(v, len(scored)) for m, v in metrics.items()},
        duration_s=duration_s,
        items=scored,
    )


def _scored(ref: TaskRef, model, tokenizer, questions, progress=None) -> list[Scored]:
    """``score_questions``; a question it refuses is named with its task and data."""
    try:
        return score_questions(model, tokenizer, questions, progress)
    except EvopruneError as exc:
        raise EvopruneError(f"task {ref.name!r} ({ref.data}): {exc}") from None


def evaluate_model(
    model,
    tokenizer,
    task: str | TaskRef,
    *,
    limit: int | None = None,
    shots: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    data_dir: str | Path | None = None,
) -> TaskResult:
    """Accuracy of ``model`` as it is (dense, masked or an export) on ``task``.

    ``limit`` scores a fixed random subset of that many questions (chosen by ``seed``);
    ``shots`` overrides the task's default number of in-context examples; ``data_dir`` is the
    task data directory of shipped tasks (see ``resolve_task``).
    """
    ref = _ref(task, data_dir)
    questions = build_questions(ref, limit=limit, shots=shots, seed=seed)
    start = time.perf_counter()
    scored = _scored(ref, model, tokenizer, questions, progress)
    return _result(ref, scored, shots=shots, limit=limit, seed=seed, duration_s=time.perf_counter() - start)


class TaskEvaluator:
    """Task accuracy of a backend's configurations, through its masks, on a fixed question subset.

    ``TaskEvaluator(backend, "arc_easy", limit=100).evaluate(levels)`` returns
    ``{"acc:arc_easy": ..., "acc_norm:arc_easy": ...}``. The questions, prompts and shots are
    built once, so every configuration is judged on the same ones.

    As ``backend.extra_metrics.append(evaluator)``, every ``backend.evaluate(x)`` adds these
    metrics to its perplexity and KL (the evaluator is then called with the masks applied).
    """

    def __init__(
        self,
        backend,
        task: str | TaskRef,
        *,
        limit: int | None = None,
        shots: int | None = None,
        seed: int = 0,
        data_dir: str | Path | None = None,
        key: str | None = None,
    ):
        self.backend = backend
        self.ref = _ref(task, data_dir)
        # The task as the objective names it (a file path, say), so metrics and objective match.
        self.key = key or self.ref.name
        self.limit = limit
        self.shots = self.ref.spec.shots if shots is None else shots
        self.seed = seed
        self.questions: list[Question] = build_questions(self.ref, limit=limit, shots=shots, seed=seed)

    @property
    def task(self) -> str:
        return self.ref.name

    @property
    def fingerprint(self) -> str:
        """A hash of everything that shapes these accuracies: the metrics, and every question's
        context (prompt, shots), continuations, choices and answer, so an edited task file or
        data file is another task, whatever its name or path."""
        payload = [
            self.ref.spec.metrics,
            [(q.index, q.context, q.continuations, q.choices, q.gold) for q in self.questions],
        ]
        return hashlib.sha1(json.dumps(payload).encode()).hexdigest()[:16]

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The keys ``evaluate`` returns (``acc:KEY``...); all are accuracies (higher is better)."""
        return tuple(f"{m}:{self.key}" for m in self.ref.spec.metrics)

    def _score_current(self) -> TaskResult:
        loaded = self.backend.loaded
        start = time.perf_counter()
        scored = _scored(self.ref, loaded.model, loaded.tokenizer, self.questions)
        return _result(
            self.ref, scored, shots=self.shots, limit=self.limit, seed=self.seed, duration_s=time.perf_counter() - start
        )

    def result(self, levels) -> TaskResult:
        """The full result (per-question log-likelihoods included) of configuration ``levels``."""
        with self.backend.applied(levels):
            return self._score_current()

    def evaluate(self, levels) -> dict[str, float]:
        """``{"acc:KEY": ..., "acc_norm:KEY": ...}`` of configuration ``levels``."""
        return self.result(levels).keyed(self.key)

    def __call__(self, backend) -> dict[str, float]:
        """The metrics of ``backend``'s model as it is now (the ``extra_metrics`` hook)."""
        if backend is not self.backend:
            raise ValueError("a TaskEvaluator scores the backend it was built for")
        return self._score_current().keyed(self.key)

    @property
    def setup(self) -> TaskSetup:
        """What builds this evaluator again on another backend (a Ray worker's); picklable."""
        return TaskSetup(self.ref, self.limit, self.shots, self.seed, self.fingerprint, self.key)


@dataclass(frozen=True)
class TaskSetup:
    """A ``TaskEvaluator``'s task, question subset and fingerprint, to rebuild it in a worker."""

    ref: TaskRef
    limit: int | None
    shots: int
    seed: int
    fingerprint: str
    key: str

    def build(self, backend) -> TaskEvaluator:
        """The evaluator on ``backend``. Raises EvopruneError when the task's questions read here
        differ from those of the process that made this setup (another task file on this node)."""
        evaluator = TaskEvaluator(backend, self.ref, limit=self.limit, shots=self.shots, seed=self.seed, key=self.key)
        if evaluator.fingerprint != self.fingerprint:
            raise EvopruneError(
                f"task {self.ref.name!r} has other questions here ('{self.ref.data}') than where the search "
                "runs: give every node the same task files"
            )
        return evaluator


def task_evaluators(
    backend,
    metric_names: Iterable[str],
    *,
    limit: int | None = None,
    shots: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> list[TaskEvaluator]:
    """One evaluator per task named in ``metric_names`` (``acc:TASK``/``acc_norm:TASK``; others are skipped),
    each reporting its metrics under the names given (``acc:path/to/task.yaml`` for a task file).

    Raises EvopruneError when a task is unknown, its data is missing, or it does not report the
    named metric.
    """
    wanted: dict[str, list[str]] = {}
    for name in metric_names:
        metric, sep, task = name.partition(":")
        if sep and metric in ("acc", "acc_norm"):
            if not task:
                raise EvopruneError(f"objective {name!r} names no task: use {metric}:TASK, e.g. {metric}:arc_easy")
            wanted.setdefault(task, []).append(name)
    evaluators = []
    for task, names in wanted.items():
        ev = TaskEvaluator(backend, task, limit=limit, shots=shots, seed=seed, data_dir=data_dir, key=task)
        missing = [n for n in names if n.partition(":")[0] not in ev.ref.spec.metrics]
        if missing:
            raise EvopruneError(
                f"task {ev.task!r} reports {', '.join(ev.metric_names)}, not {missing[0]!r}: use one of those"
            )
        evaluators.append(ev)
    return evaluators
