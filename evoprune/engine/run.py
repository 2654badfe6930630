"""Running a search: ``search()`` (everything ``evoprune search`` does, as one call), the loaded
backend it needs (``prepare_backend``), and ``run_strategy``, the frame every method runs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evoprune.backend.pruner import PruningBackend, load_backend
from evoprune.engine.baselines.one_shot import method_settings
from evoprune.engine.context import SearchContext
from evoprune.engine.registry import STRATEGIES
from evoprune.engine.settings import ProgressFn, SearchSettings, log_progress
from evoprune.errors import require_parent_dir
from evoprune.execution.executors import BackendRecipe, make_executor
from evoprune.objectives.spec import CostEvaluator, Objectives
from evoprune.store import Evaluation, Run, Store
from evoprune.store.lock import search_lock


@dataclass
class SearchResult:
    run: Run
    evaluations: list[Evaluation]
    new_evaluations: int
    importance_cached: bool
    stop_reason: str | None = None  # why the method ended with budget left; None when it spent it
    notes: tuple[str, ...] = ()  # what the search space changed from what was asked (SearchSpace.notes)


# Kept for the public API: the active-learning search bound to one store.
class ActiveLearningSearch:
    def __init__(self, backend, store, settings, progress=log_progress, executor=None):
        self.context = SearchContext(backend, store, settings, progress, executor)

    def run(self) -> SearchResult:
        return run_strategy(self.context)


def run_strategy(ctx: SearchContext, retry_failed: bool = False) -> SearchResult:
    """Run ``ctx``'s method to its budget; ``retry_failed`` first evaluates again the run's failed
    rows and its ok rows that lack one of its quality objectives."""
    if ctx.run is None:
        ctx.open_run()
    # Rows stored ok without one of the run's quality objectives (by Ray workers before their task
    # metrics travelled with them, 2026-12-02) can be neither learned from nor chosen.
    lacking = [e.id for e in ctx.evaluations() if e.status == "ok" and ctx.lacks_an_objective(e.metrics)]
    if retry_failed:
        retried = ctx.store.retry_failed(ctx.run.id, also=lacking)
        ctx.progress("phase", name=f"evaluating {retried} failed rows again")
    elif lacking:
        note = f"{len(lacking)} rows lack an objective of the run: --retry-failed measures them again"
        ctx.progress("phase", name=note)
    finished = sum(e.status != "pending" for e in ctx.evaluations())  # pending rows are evaluated below
    ctx.progress("start", run=ctx.run, done=finished, total=ctx.settings.evals)
    ctx.evaluate_pending()  # finish what a killed process left behind
    ctx.evaluate_pending_fidelities()
    STRATEGIES[ctx.settings.method]().run(ctx)
    ctx.check_not_all_failed(finished=True)
    # Every method ends the same way: its candidates climb the ladder, its picks are validated.
    final_round = ctx.next_round()
    ctx.promote(final_round, limit=2 * ctx.settings.batch if ctx.constraint_names else ctx.settings.batch)
    ctx.validate_picks(final_round)
    reason = _stop_reason(ctx)
    if reason:
        ctx.progress("stopped", reason=reason)
    return SearchResult(
        ctx.run, ctx.evaluations(), ctx.new_evaluations, ctx.backend.importance_cached, reason, ctx.space.notes
    )


def _stop_reason(ctx: SearchContext) -> str | None:
    """One sentence on why a method ended before spending ``evals`` (every method can: a small
    space, a tight budget, a method that proposes a fixed set, a GA that converged)."""
    done = len(ctx.evaluations())
    if done >= ctx.settings.evals:
        return None
    text = (
        f"method {ctx.settings.method} stopped after {done} of {ctx.settings.evals} evaluations: "
        "it proposed no further configuration that is feasible and not yet evaluated"
    )
    sizes = ctx.space.upper - ctx.space.lower + 1
    if float(np.prod(sizes.astype(float))) <= 200_000:  # small enough to count exactly
        grids = np.meshgrid(*[np.arange(lo, hi + 1) for lo, hi in zip(ctx.space.lower, ctx.space.upper, strict=True)])
        X = np.column_stack([g.ravel() for g in grids])
        text += f" (the space holds {int(ctx.feasible(X).sum())} feasible configurations within the budget and floor)"
    return text


def prepare_backend(
    model: str, data: str, settings: SearchSettings, progress: ProgressFn = log_progress
) -> PruningBackend:
    """Validate the search settings, then load model and data and score importance.

    Task-accuracy objectives (``acc:TASK``) attach a task evaluator on a fixed subset of
    ``task_limit`` questions, so every real evaluation also reports those accuracies.
    """
    settings.validate()

    def check_budget(backend: PruningBackend) -> None:  # before the scoring: minutes on a real model
        CostEvaluator(backend.space, backend.loaded.model.config, dtype=settings.backend.dtype).check_feasible(
            settings.budget
        )
        if settings.backend.validation_token_count:
            backend.validation_windows()  # a text too short for it fails now, not after the search

    backend = load_backend(model, data, settings.backend, progress, check=check_budget)
    names = Objectives.parse(settings.objectives).names
    if any(n.startswith(("acc:", "acc_norm:")) for n in names):
        from evoprune.tasks import task_evaluators

        progress("phase", name="preparing task questions")
        backend.extra_metrics.extend(task_evaluators(backend, names, limit=settings.task_limit, seed=settings.seed))
    return backend


def search(
    model: str,
    data: str,
    store: str,
    settings: SearchSettings,
    progress: ProgressFn = log_progress,
    executor: str = "local",
    executor_options: dict | None = None,
    backend: PruningBackend | None = None,
    retry_failed: bool = False,
) -> SearchResult:
    """Run (or continue) a search: everything the ``evoprune search`` command does, as one call.

    ``retry_failed`` evaluates the run's failed rows again (after a transient fault was fixed),
    and its ok rows that lack one of its quality objectives, before the method goes on; they
    count against ``evals`` as before.

    The store file is created only after the model, data and budget have been checked, so bad
    input never leaves an empty store behind. ``executor`` names where real evaluations run
    (``local`` in this process; see ``evoprune.execution.executors``). Pass ``backend`` to reuse a loaded
    model across searches (``compare`` does); a method that needs another level grid (the one-shot
    baselines, see ``evoprune.engine.baselines.one_shot.method_settings``) gets it on the same loaded model.

    Raises EvopruneError for bad input (settings, model, data, budget, a store in use or of
    another problem), each with one line that names the fix; ``BudgetUnmet`` (an EvopruneError)
    when a one-shot baseline's recipe cannot meet the budget. Every finished evaluation is in the
    store before any error leaves, so ``resume`` continues from there.
    """
    settings = method_settings(settings)
    # Before the model loads: minutes of setup would be spent for nothing.
    require_parent_dir(Path(store).expanduser(), "--store")
    Store.refuse_directory(store)
    Store.refuse_unwritable(store)
    # One searching process per store (a second one would redo the first one's pending rows), held
    # from before the model loads, so that a second search started at the same time is refused
    # at once instead of after minutes of loading.
    with search_lock(store):
        if backend is None:
            backend = prepare_backend(model, data, settings, progress)
        else:
            settings.validate()
            backend = backend.with_grid(settings.backend)
        CostEvaluator(backend.space, backend.loaded.model.config, dtype=settings.backend.dtype).check_feasible(
            settings.budget
        )
        recipe = BackendRecipe.of(model, data, backend)
        if executor != "local":  # a Ray pool starts and loads the model in each worker: tens of seconds, silent
            progress("phase", name=f"starting the {executor} workers (each loads the model before the first result)")
        runner = make_executor(executor, backend, recipe, **(executor_options or {}))
        try:
            with Store(store) as st:
                return run_strategy(SearchContext(backend, st, settings, progress, runner), retry_failed)
        finally:
            runner.close()
