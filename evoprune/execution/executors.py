"""Where real evaluations run. The search hands an executor a batch of jobs; the executor calls
back with each result as it finishes, in completion order, and the search (the store's single
writer) commits it at once.

``local`` evaluates in this process. Other executors (e.g. ``ray``) register under their name
and build their own backends from a ``BackendRecipe``, so they need nothing but picklable data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from evoprune.backend.pruner import Measurement, PruningBackend, load_backend
from evoprune.backend.settings import BackendSettings
from evoprune.errors import EvopruneError

if TYPE_CHECKING:
    from evoprune.tasks.evaluator import TaskSetup


@dataclass(frozen=True)
class Job:
    eval_id: int
    levels: tuple[int, ...]
    tokens: int | None = None  # on this many rung tokens (a screening or a higher rung); None: the first rung
    split: str = "search"  # or "validation" (see PruningBackend.evaluate)


@dataclass(frozen=True)
class BackendRecipe:
    """Everything a worker needs to build the same backend as the driver (all picklable)."""

    model: str
    data: str
    settings: BackendSettings
    model_fingerprint: str
    tasks: tuple[TaskSetup, ...] = ()  # the driver's task-accuracy metrics (acc:TASK objectives)
    # Every other ``extra_metrics`` callable of the driver, shipped as it is: it must pickle (Ray
    # uses cloudpickle, so a function defined in a notebook does) and take the worker's backend.
    metrics: tuple[Callable[[PruningBackend], dict[str, float]], ...] = ()

    @classmethod
    def of(cls, model: str, data: str, backend: PruningBackend) -> BackendRecipe:
        """The recipe of the driver's ``backend``, all of its ``extra_metrics`` included: task
        evaluators as their ``TaskSetup`` (rebuilt on the worker's backend), others as they are."""
        from evoprune.tasks.evaluator import TaskEvaluator  # only searches with task metrics need it

        tasks = tuple(m.setup for m in backend.extra_metrics if isinstance(m, TaskEvaluator))
        metrics = tuple(m for m in backend.extra_metrics if not isinstance(m, TaskEvaluator))
        return cls(model, data, backend.settings, backend.loaded.fingerprint, tasks, metrics)

    def load(self) -> PruningBackend:
        backend = load_backend(self.model, self.data, self.settings)
        if backend.loaded.fingerprint != self.model_fingerprint:
            raise EvopruneError(f"worker loaded a different model than the driver for '{self.model}'")
        backend.extra_metrics.extend(task.build(backend) for task in self.tasks)
        backend.extra_metrics.extend(self.metrics)
        return backend


@dataclass(frozen=True)
class WorkerFailure:
    """A worker died or raised. ``attempt`` counts from 1 for the job it held; it is 0 when the
    worker failed while loading, before it held any job. ``retried``: the job goes to another worker."""

    worker: str
    error: str
    attempt: int
    retried: bool


ResultFn = Callable[[Job, Measurement], None]
FailureFn = Callable[[Job | None, WorkerFailure], None]


class Executor:
    name = "base"

    def evaluate(
        self, jobs: list[Job], on_result: ResultFn, on_failure: FailureFn | None = None
    ) -> None:  # pragma: no cover - abstract
        """Evaluate every job and call ``on_result`` once per job, in this process, as each finishes.

        ``on_failure`` hears of every worker failure (also those that the executor recovered from
        by retrying), so the caller can record them; a job whose retries are spent still gets its
        ``on_result``, with a failed Measurement.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release workers; the executor is not used afterwards."""


class LocalExecutor(Executor):
    """Evaluates jobs one after the other with the driver's own backend."""

    name = "local"

    def __init__(self, backend: PruningBackend):
        self.backend = backend

    def evaluate(self, jobs: list[Job], on_result: ResultFn, on_failure: FailureFn | None = None) -> None:
        for job in jobs:
            on_result(job, self.backend.evaluate(np.array(job.levels), job.tokens, job.split))


ExecutorFactory = Callable[..., Executor]
EXECUTORS: dict[str, ExecutorFactory] = {}
# Executors whose module needs an optional dependency: imported (and so registered) only when
# asked for by name, so that evoprune itself never needs the dependency.
LAZY_EXECUTORS = {"ray": "evoprune.execution.ray_executor"}


def register_executor(name: str):
    def decorate(factory: ExecutorFactory) -> ExecutorFactory:
        EXECUTORS[name] = factory
        return factory

    return decorate


@register_executor("local")
def _make_local(backend: PruningBackend, recipe: BackendRecipe | None = None, **options) -> Executor:
    return LocalExecutor(backend)


def executor_factory(name: str) -> ExecutorFactory:
    """The factory registered as ``name``; raises EvopruneError if it is unknown or cannot be imported."""
    if name not in EXECUTORS and name in LAZY_EXECUTORS:
        importlib.import_module(LAZY_EXECUTORS[name])
    if name not in EXECUTORS:
        known = sorted(set(EXECUTORS) | set(LAZY_EXECUTORS))
        raise EvopruneError(f"executor {name!r} is unknown: use one of {', '.join(known)}")
    return EXECUTORS[name]


def make_executor(name: str, backend: PruningBackend, recipe: BackendRecipe | None = None, **options) -> Executor:
    return executor_factory(name)(backend, recipe, **options)
