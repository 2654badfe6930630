"""One run in one store: ``SearchContext`` (bookkeeping, costs and feasibility, real evaluation).

A search method is a ``Strategy`` (``evoprune.engine.registry``): it proposes configurations; the
context writes each one to the store as ``pending``, has the executor evaluate it, and commits the
result the moment it arrives. A killed search resumes where it stopped: pending rows are evaluated
first, finished rows are never evaluated again, and every decision is a function of the seed and
the store's contents. The fidelity ladder's part of the context is ``evoprune.engine.ladder``.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from evoprune.backend.loading import absolute_if_local
from evoprune.backend.pruner import COLLAPSED, Measurement, PruningBackend
from evoprune.engine.ladder import FidelityLadder
from evoprune.engine.settings import ProgressFn, SearchSettings, log_progress
from evoprune.errors import EvopruneError
from evoprune.execution.executors import Executor, Job, LocalExecutor, WorkerFailure
from evoprune.objectives.pareto import hypervolume_of
from evoprune.objectives.spec import CostEvaluator, Objectives, quality_limit, quality_value
from evoprune.store import Evaluation, Run, Screening, Store


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("evoprune", "torch", "transformers", "pymoo", "ngboost", "scikit-learn", "xgboost", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


class SearchContext(FidelityLadder):
    """One run in one store: bookkeeping, costs, and real evaluation. Strategies drive it."""

    def __init__(
        self,
        backend: PruningBackend,
        store: Store,
        settings: SearchSettings,
        progress: ProgressFn = log_progress,
        executor: Executor | None = None,
    ):
        self.backend = backend
        self.store = store
        self.settings = settings
        self.progress = progress
        self.executor = executor or LocalExecutor(backend)
        self.space = backend.space
        self.objectives = Objectives.parse(settings.objectives)
        # Bytes per weight and KV element follow the run's dtype (2 in bfloat16/float16).
        self.costs = CostEvaluator(backend.space, backend.loaded.model.config, dtype=backend.settings.dtype)
        self.constraint_names, self.constraint_limits = self.costs.constraints(settings.budget)
        self.costs.check_feasible(settings.budget)
        self.dense_params = self.space.arch.dense_params()
        self.run: Run | None = None
        self.new_evaluations = 0
        self.timings = {"eval_s": 0.0, "fit_s": 0.0, "search_s": 0.0, "screen_s": 0.0, "ladder_s": 0.0}

    # -- the run ----------------------------------------------------------------------------
    def pair_key(self) -> str:
        """Runs with the same pair key measured the same problem; their pairs can be shared."""
        b = self.backend
        payload = [b.loaded.fingerprint, b.data_fingerprint, self.space.fingerprint(), b.settings.identity()]
        # Metrics read from files (task questions) are part of the problem by content; runs
        # without such metrics keep the key they always had.
        extra = [getattr(m, "fingerprint", None) for m in b.extra_metrics]
        if any(extra):
            payload.append([f for f in extra if f])
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def open_run(self) -> Run:
        b = self.backend
        for other in self.store.runs():
            if other.space["arch"] != self.space.to_dict()["arch"]:
                theirs = other.space["arch"]
                raise EvopruneError(
                    f"store '{self.store.path}' holds runs of a different model ({other.model}: "
                    f"{theirs['model_type']}, {theirs['num_layers']} layers) than '{b.loaded.source.spec}' "
                    f"({self.space.arch.model_type}, {self.space.num_layers} layers): use another --store"
                )
        identity = {"pair_key": self.pair_key(), "settings": self.settings.identity()}
        run_key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.run, _ = self.store.get_or_create_run(
            run_key,
            # absolute where local: `resume` and `export` run from any folder
            model=absolute_if_local(b.loaded.source.spec),
            model_fingerprint=b.loaded.fingerprint,
            data=absolute_if_local(b.text.spec),
            data_fingerprint=b.data_fingerprint,
            dense_params=self.dense_params,
            space=self.space.to_dict(),
            settings={
                **asdict(self.settings),
                "pair_key": self.pair_key(),
                "importance_cached": b.importance_cached,
            },
            versions=library_versions(),
        )
        return self.run

    def evaluations(self) -> list[Evaluation]:
        return self.store.evaluations(self.run.id)

    def shared_evaluations(self) -> list[Evaluation]:
        """This run's evaluations plus, with warm start, those of earlier evoprune runs of the same problem."""
        return self.store.shared_evaluations(self.run)

    def inherited_pairs(self) -> int:
        """Successful pairs of other runs this run started from: those committed before its first
        evaluation (all of them while it has none), so that a resumed run counts what it began with."""
        first = min((e.id for e in self.evaluations()), default=None)
        return sum(
            1
            for e in self.shared_evaluations()
            if e.run_id != self.run.id and e.status == "ok" and (first is None or e.id < first)
        )

    def budget_left(self) -> int:
        return self.settings.evals - len(self.evaluations())

    def known_keys(self) -> set[str]:
        return {e.config_key for e in self.shared_evaluations()}

    # -- costs and feasibility --------------------------------------------------------------
    def feasible(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        ok = self.space.params_matrix(X) / self.dense_params >= self.settings.min_params
        if self.constraint_names:
            ok &= np.all(self.costs.matrix(X, self.constraint_names) <= self.constraint_limits, axis=1)
        return ok

    def constraint_matrix(self, X: np.ndarray) -> np.ndarray:
        """pymoo inequality constraints ``G <= 0``: the floor on parameters and every budget."""
        floor = self.settings.min_params - self.space.params_matrix(X) / self.dense_params
        if not self.constraint_names:
            return floor[:, None]
        return np.column_stack([floor, self.costs.matrix(X, self.constraint_names) - self.constraint_limits])

    def focus_slack(self, X: np.ndarray) -> np.ndarray | None:
        """How far each configuration is from the band just under the budget (``<= 0``: inside).

        A budget asks for the best model that spends it; configurations far below it cannot be
        that answer, so with ``focus`` > 0 acquisition looks only within ``focus`` (relative) of
        some budget limit. ``None`` without a budget or with ``focus`` 0.
        """
        if not self.constraint_names or self.settings.focus <= 0:
            return None
        costs = self.costs.matrix(np.atleast_2d(X), self.constraint_names)
        return np.min(self.constraint_limits * (1 - self.settings.focus) - costs, axis=1)

    def cost_objectives(self, X: np.ndarray) -> np.ndarray:
        return self.costs.matrix(X, self.objectives.costs)

    def objective_matrix(self, evals: list[Evaluation]) -> np.ndarray:
        """Really measured objectives (qualities on the minimised scale, exact costs) per evaluation."""
        if not evals:
            return np.zeros((0, len(self.objectives.names)))
        X = np.array([e.levels for e in evals], dtype=int)
        costs = self.cost_objectives(X)
        cols, c = [], 0
        for name in self.objectives.names:
            if name in self.objectives.costs:
                cols.append(costs[:, c])
                c += 1
            else:
                cols.append(np.array([quality_value(name, e.metrics) for e in evals]))
        return np.column_stack(cols)

    # -- real evaluation --------------------------------------------------------------------
    def enqueue(self, x: np.ndarray, origin: str, round_: int, predicted: dict | None = None) -> int:
        x = self.space.validate(x)
        return self.store.add_pending(
            self.run.id,
            self.space.key(x),
            x.tolist(),
            origin,
            round_,
            self.space.params(x),
            self.space.params_fraction(x),
            predicted,
            cost=self.costs.row(x),
        )

    def evaluate_pending(self) -> float:
        """Evaluate every pending row; commit each result as it arrives; return the seconds spent."""
        pending = [e for e in self.evaluations() if e.status == "pending"]
        if not pending:
            return 0.0
        spent = 0.0
        self.progress("batch", size=len(pending), origin=pending[0].origin, round=pending[0].round)

        def commit(job: Job, m: Measurement) -> None:
            nonlocal spent
            m = self._with_every_objective(m)
            self.store.finish(job.eval_id, ok=m.ok, metrics=m.metrics, error=m.error, duration_s=m.duration_s)
            spent += m.duration_s
            self.new_evaluations += 1
            self.progress("eval_done", evaluation=self.store.evaluation(job.eval_id))

        # ray executor (issue 8): every worker failure goes to the store; the store has one writer, this process.
        def note_failure(job: Job | None, f: WorkerFailure) -> None:
            eval_id = job.eval_id if job is not None else None
            self.store.record_failure(
                self.run.id, eval_id, attempt=f.attempt, worker=f.worker, error=f.error, retried=f.retried
            )

        self.executor.evaluate([Job(e.id, tuple(e.levels)) for e in pending], commit, note_failure)
        self.timings["eval_s"] += spent
        self.check_not_all_failed()
        return spent

    def _with_every_objective(self, m: Measurement) -> Measurement:
        """``m``, or ``m`` as failed when it lacks a quality objective of the run: stored as ok, such a
        row could never be learned from nor evaluated again (a worker built without the run's task
        evaluators gave ppl and KL only); failed, ``--retry-failed`` measures it again."""
        missing = self.lacks_an_objective(m.metrics)
        if not m.ok or not missing:
            return m
        error = f"the evaluation reported no {missing}, an objective of this run (its evaluator lacked that metric)"
        return replace(m, ok=False, error=error)

    def lacks_an_objective(self, metrics: dict) -> str | None:
        """The first quality objective of the run that ``metrics`` lacks, or None."""
        return next((name for name in self.objectives.quality if name not in metrics), None)

    def check_not_all_failed(self, finished: bool = False) -> None:
        """Stop the search when every evaluation of the run failed: at once when they failed with
        errors (a fault in the model, the data or a metric, not in the configurations, so the rest
        of the budget would only add failed rows), and when the method is done (``finished``)
        whatever the errors (collapsed models included), so a search never ends with an empty
        front as if it had succeeded.

        Raises EvopruneError naming the first error and how to go on.
        """
        evals = self.evaluations()
        if not evals or any(e.status in ("ok", "pending") for e in evals):
            return
        # Collapse is a verdict on a configuration: others may not collapse, so the search goes on.
        if not finished and all(e.error == COLLAPSED for e in evals):
            return
        first = ((evals[0].error or "").strip().splitlines() or ["no message"])[0]
        raise EvopruneError(
            f"all {len(evals)} evaluations of run {self.run.id} failed, the first with: {first}: fix the "
            "cause (a changed model, data or task file starts a new run), or evaluate these rows again with "
            "--retry-failed"
        )

    def evaluate_now(
        self, X, origin: str, round_: int, predicted: list[dict] | None = None, limit: int | None = None
    ) -> None:
        """Enqueue new, feasible, not yet known configurations within the budget (and at most
        ``limit`` of them), then evaluate them, with any left pending by a killed run."""
        known = self.known_keys()
        left = self.budget_left()  # counted here: reading the store per candidate is quadratic
        if limit is not None:
            left = min(left, limit)
        for i, x in enumerate(np.atleast_2d(X)):
            if left <= 0:
                break
            key = self.space.key(x)
            if key in known or not self.feasible(x[None])[0]:
                continue
            known.add(key)
            self.enqueue(x, origin, round_, predicted[i] if predicted else None)
            left -= 1
        self.evaluate_pending()

    def screen(self, X: np.ndarray, round_: int) -> list[Screening]:
        """Low-fidelity measurements of ``X`` on ``screen_tokens`` tokens, each committed as it
        finishes; a configuration this run already screened is read back, not measured again."""
        tokens = self.settings.screen_tokens
        done = {sc.config_key: sc for sc in self.store.screenings(self.run.id, tokens)}
        keys = [self.space.key(x) for x in X]
        todo = [Job(i, tuple(int(v) for v in X[i]), tokens) for i, key in enumerate(keys) if key not in done]
        if todo:
            self.progress("phase", name=f"round {round_}: screening {len(todo)} on {tokens} tokens")

        def commit(job: Job, m: Measurement) -> None:
            done[keys[job.eval_id]] = self.store.add_screening(
                self.run.id, keys[job.eval_id], list(job.levels), tokens, round_,
                ok=m.ok, metrics=m.metrics, error=m.error, duration_s=m.duration_s,
            )  # fmt: skip
            self.timings["screen_s"] += m.duration_s

        self.executor.evaluate(todo, commit)
        return [done[key] for key in keys]

    def next_round(self) -> int:
        return max((e.round for e in self.evaluations()), default=-1) + 1

    # -- tracking ---------------------------------------------------------------------------
    def reference_point(self) -> np.ndarray | None:
        """A fixed reference for hypervolume: the quality ``max_ppl_ratio`` allows from the best of
        the design (``objectives.spec.quality_limit``), and the design's highest cost."""
        design = [e for e in self.evaluations() if e.status == "ok" and e.origin == "design"]
        if not design:
            return None
        F = self.objective_matrix(design)
        ref = []
        for j, name in enumerate(self.objectives.names):
            if name in self.objectives.costs:
                ref.append(np.max(F[:, j]) * 1.0001 if name != "params" else 1.0 + 1e-9)
            else:  # as far from the best as --max-ppl-ratio allows (for KL: in nats, not a ratio of ~0)
                best = float(np.nanmin(F[:, j]))
                limit = quality_limit(name, best, self.settings.max_ppl_ratio)
                ref.append(best + math.log(self.settings.max_ppl_ratio) if limit is None else limit)
        return np.array(ref)

    def hypervolume(self) -> float | None:
        ref = self.reference_point()
        if ref is None:
            return None
        ok = [e for e in self.evaluations() if e.status == "ok"]
        return hypervolume_of(self.objective_matrix(ok), ref)
