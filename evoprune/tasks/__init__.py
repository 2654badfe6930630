"""Task accuracy (ARC, MMLU, any multiple-choice file) as search metrics and in reports.

evoprune's own scorer reads local data files (the shipped tasks: a task data folder from
``--task-data``/``EVOPRUNE_TASK_DATA``, else the Hugging Face hub through ``datasets``);
``evoprune.tasks.harness`` runs lm-evaluation-harness tasks by name (``pip install
'evoprune[tasks]'`` and a reachable Hugging Face hub)::

    from evoprune.tasks import TaskEvaluator, evaluate_model
    acc = TaskEvaluator(backend, "arc_easy", limit=100).evaluate(levels)  # {"acc:arc_easy": ..., ...}
    result = evaluate_model(model, tokenizer, "mmlu")                      # a TaskResult
"""

from evoprune.tasks.evaluator import TaskEvaluator, TaskResult, evaluate_model, task_evaluators
from evoprune.tasks.formats import Doc, load_docs
from evoprune.tasks.scoring import Scored, encode_pair, score_questions
from evoprune.tasks.spec import Question, TaskRef, TaskSpec, build_questions, registry, resolve_task

__all__ = [
    "Doc",
    "Question",
    "Scored",
    "TaskEvaluator",
    "TaskRef",
    "TaskResult",
    "TaskSpec",
    "build_questions",
    "encode_pair",
    "evaluate_model",
    "load_docs",
    "registry",
    "resolve_task",
    "score_questions",
    "task_evaluators",
]
