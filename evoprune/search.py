"""Searches: evoprune's active learning and the baselines, on one evaluator and one store.

A search method is a ``Strategy``: it proposes configurations; the ``SearchContext`` writes each
one to the store as ``pending``, has the executor evaluate it, and commits the result the moment
it arrives. A killed search resumes where it stopped: pending rows are evaluated first, finished
rows are never evaluated again, and every decision is a function of the seed and the store's
contents.

evoprune's own method (``ActiveLearning``): an initial design, then rounds of: fit one surrogate
per quality objective on every successful pair; run a pymoo algorithm on (predicted quality,
exact costs) under the budget constraints; narrow the level ranges the surrogate says are
harmful (optional); send the candidates of the predicted front that the acquisition strategy
ranks highest, spread along the first cost, to real evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.ref_dirs import get_reference_directions
from scipy.stats import kendalltau

from evoprune.acquisition import ACQUISITIONS, expected_hv_improvement, select_batch
from evoprune.backend.pruner import COLLAPSED, BackendSettings, Measurement, PruningBackend, load_backend
from evoprune.design import feasible_design, intensity_sample
from evoprune.errors import EvopruneError
from evoprune.executors import BackendRecipe, Executor, Job, LocalExecutor, WorkerFailure, make_executor
from evoprune.features import FeatureMap
from evoprune.locking import search_lock
from evoprune.objectives import Budget, CostEvaluator, Objectives, quality_value
from evoprune.pareto import hypervolume_of
from evoprune.store import Evaluation, Run, Screening, Store
from problems import SurrogatePruningProblem
from surrogates import available_surrogates, make_surrogate, parse_surrogate_spec

ProgressFn = Callable[..., None]

ALGORITHMS = ("nsga2", "nsga3", "agemoea", "smsemoa")


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides which configurations a search evaluates (``evals`` only bounds it)."""

    evals: int
    seed: int = 0
    method: str = "evoprune"
    objectives: str = "ppl,params"
    max_params: float | None = None
    max_memory: str | None = None
    max_latency_ms: float | None = None
    min_params: float = 0.5
    init: int = 8
    batch: int = 4
    surrogate: str = "additive"
    acquisition: str = "uncertainty"
    algorithm: str = "nsga2"
    pop_size: int = 64
    generations: int = 40
    refine: bool = True
    focus: float = 0.05
    screen_tokens: int = 0
    screen_factor: int = 3
    warm_start: bool = True
    max_ppl_ratio: float = 20.0
    task_limit: int = 100
    baseline_skip_first: int | None = None  # uniform baseline: layers left dense; None: LLM-Pruner's 4 of 32, scaled
    baseline_skip_last: int | None = None  # the same at the end (LLM-Pruner: 2 of 32)
    backend: BackendSettings = field(default_factory=BackendSettings)

    @property
    def budget(self) -> Budget:
        return Budget(self.max_params, self.max_memory, self.max_latency_ms, self.min_params)

    def validate(self) -> None:
        from evoprune.baselines import STRATEGIES

        for name in ("evals", "init", "batch", "pop_size", "generations"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise EvopruneError(f"--{flag} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_params < 1:
            raise EvopruneError(f"--min-params must be in [0, 1), got {self.min_params}")
        if self.max_params is not None and self.max_params <= 0:
            raise EvopruneError(f"--max-params must be positive (a fraction or a count), got {self.max_params}")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise EvopruneError(f"--max-latency-ms must be positive, got {self.max_latency_ms}")
        if self.screen_tokens < 0 or (self.screen_tokens and self.screen_tokens >= self.backend.eval_tokens):
            raise EvopruneError(
                f"--screen-tokens must be 0 (off) or below --eval-tokens {self.backend.eval_tokens}, "
                f"got {self.screen_tokens}"
            )
        if self.screen_factor < 2:
            raise EvopruneError(f"--screen-factor must be at least 2, got {self.screen_factor}")
        if self.screen_tokens and Objectives.parse(self.objectives).quality[0] not in ("ppl", "kl"):
            raise EvopruneError("--screen-tokens screens on perplexity or KL: put ppl or kl first in --objectives")
        if not 0 <= self.focus < 1:
            raise EvopruneError(f"--focus must be in [0, 1), got {self.focus}")
        for name in ("baseline_skip_first", "baseline_skip_last"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise EvopruneError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.max_ppl_ratio <= 1:
            raise EvopruneError(f"--max-ppl-ratio must be above 1, got {self.max_ppl_ratio}")
        if self.method not in STRATEGIES:
            raise EvopruneError(f"method {self.method!r} is unknown: use one of {', '.join(STRATEGIES)}")
        try:
            name, options = parse_surrogate_spec(self.surrogate)
            if name not in available_surrogates():
                raise ValueError(f"surrogate {name!r} is unknown: use one of {', '.join(available_surrogates())}")
            model = make_surrogate(self.surrogate)
            if options:  # a bad option value shows at fit time: find out now, not after evaluations
                rng = np.random.default_rng(0)
                model.fit(rng.random((8, 3)), rng.random(8))
        except (ValueError, TypeError) as exc:
            raise EvopruneError(str(exc).splitlines()[0]) from None
        if self.acquisition not in ACQUISITIONS:
            raise EvopruneError(f"acquisition {self.acquisition!r} is unknown: use one of {', '.join(ACQUISITIONS)}")
        if self.algorithm not in ALGORITHMS:
            raise EvopruneError(f"algorithm {self.algorithm!r} is unknown: use one of {', '.join(ALGORITHMS)}")
        Objectives.parse(self.objectives)
        if self.max_memory is not None:
            from evoprune.objectives import parse_size

            parse_size(self.max_memory)
        self.backend.validate()

    def identity(self) -> dict:
        """The settings that define a run (a larger ``evals`` continues the same run)."""
        d = asdict(self)
        d.pop("evals")
        for name in ("baseline_skip_first", "baseline_skip_last"):
            if d[name] is None:  # unset: runs recorded before these options existed keep their identity
                d.pop(name)
        d["backend"] = self.backend.identity()
        return d


@dataclass
class SearchResult:
    run: Run
    evaluations: list[Evaluation]
    new_evaluations: int
    importance_cached: bool
    stop_reason: str | None = None  # why the method ended with budget left; None when it spent it
    notes: tuple[str, ...] = ()  # what the search space changed from what was asked (SearchSpace.notes)


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("evoprune", "torch", "transformers", "pymoo", "ngboost", "scikit-learn", "xgboost", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _noop(*_args, **_kwargs) -> None:
    return None


class SearchContext:
    """One run in one store: bookkeeping, costs, and real evaluation. Strategies drive it."""

    def __init__(
        self,
        backend: PruningBackend,
        store: Store,
        settings: SearchSettings,
        progress: ProgressFn = _noop,
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
            model=b.loaded.source.spec,
            model_fingerprint=b.loaded.fingerprint,
            data=b.text.spec,
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
        own = self.evaluations()
        if not (self.settings.warm_start and self.settings.method == "evoprune"):
            return own
        seen = {e.config_key for e in own}
        shared = list(own)
        for other in self.store.runs():
            same = other.settings.get("pair_key") == self.pair_key() and other.settings.get("method") == "evoprune"
            if other.id == self.run.id or not same:
                continue
            for e in self.store.evaluations(other.id):
                if e.status != "pending" and e.config_key not in seen:
                    seen.add(e.config_key)
                    shared.append(e)
        return shared

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

    def evaluate_now(self, X, origin: str, round_: int, predicted: list[dict] | None = None) -> None:
        """Enqueue new, feasible, not yet known configurations within the budget, then evaluate them."""
        known = self.known_keys()
        left = self.budget_left()  # counted here: reading the store per candidate is quadratic
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

    # -- the fidelity ladder ----------------------------------------------------------------
    def ladder_rungs(self) -> tuple[int, ...]:
        """Token counts of the rungs above the first; none when the first quality objective is
        an accuracy (task questions are not measured per rung)."""
        if self.objectives.quality[0] not in ("ppl", "kl"):
            return ()
        return self.backend.settings.ladder_tokens

    def evaluate_pending_fidelities(self) -> float:
        """Measure every pending ladder or validation row of the run; commit each as it finishes."""
        pending = self.store.fidelities(self.run.id, status="pending")
        if not pending:
            return 0.0
        levels = {e.id: e.levels for e in self.evaluations()}
        rows = {f.id: f for f in pending}
        jobs = [
            Job(f.id, tuple(levels[f.eval_id]), f.tokens if f.split == "search" else None, f.split) for f in pending
        ]
        what = "validating" if all(f.split == "validation" for f in pending) else "ladder: measuring"
        self.progress("phase", name=f"{what} {len(jobs)} configuration(s) on more tokens")
        spent = 0.0

        def commit(job: Job, m: Measurement) -> None:
            nonlocal spent
            self.store.finish_fidelity(job.eval_id, ok=m.ok, metrics=m.metrics, error=m.error, duration_s=m.duration_s)
            spent += m.duration_s

        def note_failure(job: Job | None, f: WorkerFailure) -> None:
            eval_id = rows[job.eval_id].eval_id if job is not None else None
            self.store.record_failure(
                self.run.id, eval_id, attempt=f.attempt, worker=f.worker, error=f.error, retried=f.retried
            )

        self.executor.evaluate(jobs, commit, note_failure)
        self.timings["ladder_s"] += spent
        return spent

    def _log_se(self, metric: str, m: dict) -> float:
        """Standard error of the minimised (log) form of ``metric`` (0 when not recorded)."""
        if metric == "ppl":
            return float(m.get("nll_se", 0.0))
        if metric == "kl" and m.get("kl", 0) > 0:
            return float(m.get("kl_se", 0.0)) / float(m["kl"])
        return 0.0

    def ladder_pool(self, evals: list[Evaluation]) -> list[Evaluation]:
        """The configurations competing for the ladder: under a budget every feasible one (the
        noise rule of ``promote`` keeps only the contenders); without one, the first-rung front."""
        from evoprune.pareto import front_of

        ok = [e for e in evals if e.status == "ok"]
        if not ok:
            return []
        if not self.constraint_names:
            return front_of(ok, self.objectives.names, by_fidelity=False)
        feasible = self.feasible(np.array([e.levels for e in ok], dtype=int))
        return [e for e, f in zip(ok, feasible, strict=True) if f]

    def promote(self, round_: int, limit: int | None = None) -> int:
        """Climb the ladder: per rung, measure on the next rung the configurations of the pool
        whose figure is within noise (two standard errors of the difference) of the best one's,
        best first, at most ``limit`` per rung (default: half the batch, at least one). Without a
        budget every front member is promoted (at most ``limit`` per rung), since each is the best
        at its cost. A search climbs once, when its method is done (``run_strategy``): higher rungs
        decide the choice, not the search's direction (surrogates learn from first rungs), and a
        contender found late would otherwise be measured on fewer tokens than an early one."""
        rungs = self.ladder_rungs()
        if not rungs:
            return 0
        metric = self.objectives.quality[0]
        limit = max(1, self.settings.batch // 2) if limit is None else limit
        added = 0
        for i, tokens in enumerate(rungs):
            pool = self.ladder_pool(self.evaluations())
            measured = []
            for e in pool:
                m = e.metrics if i == 0 else e.ladder.get(rungs[i - 1])
                if m and metric in m:
                    measured.append((quality_value(metric, m), self._log_se(metric, m), e))
            measured.sort(key=lambda t: (t[0], t[2].id))
            if not measured:
                break
            if self.constraint_names:
                best_v, best_se = measured[0][0], measured[0][1]
                measured = [t for t in measured if t[0] <= best_v + 2 * math.hypot(best_se, t[1])]
            # The best ``limit`` contenders, whether or not they climbed already: running a finished
            # search again adds nothing.
            todo = [e for _, _, e in measured[:limit] if tokens not in e.ladder]
            for e in todo:
                self.store.add_fidelity(self.run.id, e.id, "search", tokens, round_)
            if todo:
                self.evaluate_pending_fidelities()
            added += len(todo)
        return added

    def validate_picks(self, round_: int) -> int:
        """Measure the picks on the validation split: under a budget the best configuration within
        it, otherwise front members spread along it (at most a batch)."""
        from evoprune.pareto import best_of, front_of

        tokens = self.backend.settings.validation_token_count
        ok = [e for e in self.evaluations() if e.status == "ok"]
        if not tokens or not ok:
            return 0
        metric = self.objectives.quality[0]
        if self.constraint_names:
            X = np.array([e.levels for e in ok], dtype=int)
            best = best_of([e for e, f in zip(ok, self.feasible(X), strict=True) if f], metric)
            picks = [best] if best is not None else []
        else:
            front = front_of(ok, self.objectives.names)
            spread = np.unique(np.linspace(0, len(front) - 1, min(len(front), self.settings.batch)).round().astype(int))
            picks = [front[i] for i in spread]
        todo = [e for e in picks if e.validation is None]
        for e in todo:
            self.store.add_fidelity(self.run.id, e.id, "validation", tokens, round_)
        if todo:
            self.evaluate_pending_fidelities()
        return len(todo)

    def next_round(self) -> int:
        return max((e.round for e in self.evaluations()), default=-1) + 1

    # -- tracking ---------------------------------------------------------------------------
    def reference_point(self) -> np.ndarray | None:
        """A fixed reference for hypervolume: ``max_ppl_ratio`` times the best quality of the design."""
        design = [e for e in self.evaluations() if e.status == "ok" and e.origin == "design"]
        if not design:
            return None
        F = self.objective_matrix(design)
        ref = []
        for j, name in enumerate(self.objectives.names):
            if name in self.objectives.costs:
                ref.append(np.max(F[:, j]) * 1.0001 if name != "params" else 1.0 + 1e-9)
            else:
                ref.append(np.nanmin(F[:, j]) + math.log(self.settings.max_ppl_ratio))
        return np.array(ref)

    def hypervolume(self) -> float | None:
        ref = self.reference_point()
        if ref is None:
            return None
        ok = [e for e in self.evaluations() if e.status == "ok"]
        return hypervolume_of(self.objective_matrix(ok), ref)


class Strategy:
    """A search method: proposes configurations through a ``SearchContext`` until the budget is spent."""

    name = "base"

    def run(self, ctx: SearchContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def initial_design_phase(ctx: SearchContext, n: int, origin: str = "design") -> None:
    design = feasible_design(ctx.space, n, ctx.settings.seed, ctx.feasible, ctx.costs, ctx.settings.budget)
    ctx.evaluate_now(design, origin, 0)


class ActiveLearning(Strategy):
    """evoprune: surrogate-assisted multi-objective search with active learning."""

    name = "evoprune"

    def run(self, ctx: SearchContext) -> None:
        initial_design_phase(ctx, ctx.settings.init)
        stalled = 0
        while ctx.budget_left() > 0 and stalled < 3:
            round_ = max(ctx.next_round(), 1)
            if sum(e.status == "ok" for e in ctx.shared_evaluations()) < 2:
                added = self.explore(ctx, round_)  # nothing to learn from yet: keep sampling
            else:
                added = self.round(ctx, round_)
            stalled = stalled + 1 if added == 0 else 0

    def explore(self, ctx: SearchContext, round_: int) -> int:
        """Space-filling samples over a wide range of intensities, when too few evaluations succeeded."""
        before = len(ctx.evaluations())
        seed = ctx.settings.seed * 1000 + round_
        pool = intensity_sample(ctx.space, 20 * ctx.settings.batch, seed, low=0.05, high=0.9)
        pool = pool[ctx.feasible(pool)]
        ctx.evaluate_now(pool[: ctx.settings.batch], "explore", round_)
        return len(ctx.evaluations()) - before

    # -- one round --------------------------------------------------------------------------
    def _train(self, ctx: SearchContext):
        ok = [e for e in ctx.shared_evaluations() if e.status == "ok"]
        X = np.array([e.levels for e in ok], dtype=int)
        targets = {}
        for name in ctx.objectives.quality:
            y = np.array([quality_value(name, e.metrics) for e in ok])
            targets[name] = y
        return X, targets

    def _fit(self, ctx: SearchContext, featurize, X, targets):
        s = ctx.settings
        models = {}
        for name, y in targets.items():
            finite = np.isfinite(y)
            if finite.sum() < 2:
                raise EvopruneError(
                    f"fewer than 2 successful evaluations with {name} to train the surrogate on: "
                    "lower the pruning intensity or check the model and data"
                )
            models[name] = make_surrogate(s.surrogate, random_state=s.seed).fit(featurize(X[finite]), y[finite])
        return models

    def _objective_fn(self, ctx: SearchContext, models, featurize):
        names = ctx.objectives.names

        def objectives(X: np.ndarray) -> np.ndarray:
            F = featurize(X)
            costs = ctx.cost_objectives(X)
            cols, c = [], 0
            for name in names:
                if name in ctx.objectives.costs:
                    cols.append(costs[:, c])
                    c += 1
                else:
                    cols.append(models[name].predict(F))
            return np.column_stack(cols)

        return objectives

    def _algorithm(self, ctx: SearchContext, sampling: np.ndarray):
        s = ctx.settings
        ops = dict(
            sampling=sampling.astype(float),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        n_obj = len(ctx.objectives.names)
        if s.algorithm == "nsga3":
            ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=12 if n_obj == 2 else 6)
            return NSGA3(ref_dirs=ref_dirs, pop_size=s.pop_size, **ops)
        if s.algorithm == "agemoea":
            try:
                from pymoo.algorithms.moo.age import AGEMOEA
            except Exception:  # noqa: BLE001 - pymoo raises a bare Exception when numba is missing
                raise EvopruneError("--algorithm agemoea needs numba: pip install numba") from None
            return AGEMOEA(pop_size=s.pop_size, **ops)
        if s.algorithm == "smsemoa":
            return SMSEMOA(pop_size=s.pop_size, **ops)
        return NSGA2(pop_size=s.pop_size, **ops)

    def refine_bounds(self, ctx: SearchContext, models, featurize, X: np.ndarray) -> np.ndarray:
        """Upper level bounds, narrowed where the surrogate and the data agree a level is harmful.

        As the paper narrows its space with the predictor's feature importance, we use partial
        dependence: for each variable, set it to each level in every evaluated configuration and
        average the predicted quality. A level is cut when its predicted loss exceeds level 0's
        by more than log(max_ppl_ratio) and at least two evaluated configurations reached it.
        """
        upper = ctx.space.upper.copy()
        if not ctx.settings.refine or len(X) < 8:
            return upper
        model = models[ctx.objectives.quality[0]]
        limit = math.log(ctx.settings.max_ppl_ratio)
        # One prediction over every (variable, level) substitution: per-call overhead dominates.
        blocks, index = [], []
        for i in range(ctx.space.n_var):
            for level in range(upper[i] + 1):
                Z = X.copy()
                Z[:, i] = level
                blocks.append(Z)
                index.append((i, level))
        if not blocks:
            return upper
        pred = model.predict(featurize(np.vstack(blocks))).reshape(len(blocks), len(X)).mean(axis=1)
        pd = {key: float(v) for key, v in zip(index, pred, strict=True)}
        for i in range(ctx.space.n_var):
            for level in range(1, upper[i] + 1):
                reached = int(np.sum(X[:, i] >= level))
                if pd[(i, level)] - pd[(i, 0)] > limit and reached >= 2:
                    upper[i] = level - 1
                    break
        return upper

    def round(self, ctx: SearchContext, round_: int) -> int:
        s = ctx.settings
        if ctx.budget_left() <= 0:  # the store may have been filled since the caller looked
            return 0
        X, targets = self._train(ctx)
        featurize = FeatureMap(ctx.space, ctx.backend.score())
        t0 = time.perf_counter()
        models = self._fit(ctx, featurize, X, targets)
        fit_s = time.perf_counter() - t0
        ctx.progress("phase", name=f"round {round_}: inner search")
        t0 = time.perf_counter()
        upper = self.refine_bounds(ctx, models, featurize, X)
        seed = s.seed * 1000 + round_
        seeds = np.vstack([X, intensity_sample(ctx.space, s.pop_size, seed)])
        seeds = np.minimum(seeds, upper)
        problem = SurrogatePruningProblem(
            ctx.space.lower,
            upper,
            self._objective_fn(ctx, models, featurize),
            n_obj=len(ctx.objectives.names),
            constraints=ctx.constraint_matrix,
            n_constr=1 + len(ctx.constraint_names),
        )
        res = minimize(problem, self._algorithm(ctx, seeds[: s.pop_size]), ("n_gen", s.generations), seed=seed)
        pool, rank = self._candidates(ctx, res)
        pool, rank = self._band(ctx, pool, rank, self._objective_fn(ctx, models, featurize))
        search_s = time.perf_counter() - t0
        ctx.timings["fit_s"] += fit_s
        ctx.timings["search_s"] += search_s
        narrowed = {int(i): int(u) for i, u in enumerate(upper) if u < ctx.space.upper[i]}
        ctx.store.record_round(ctx.run.id, round_, n_train=len(X), fit_s=fit_s, search_s=search_s, bounds=narrowed)
        if not len(pool):
            ctx.store.close_round(ctx.run.id, round_, eval_s=0.0, hypervolume=ctx.hypervolume())
            return 0
        k = min(s.batch, ctx.budget_left())
        front = pool[rank == 0]
        pool = front if len(front) >= k else pool
        primary = ctx.objectives.quality[0]
        mean, std = models[primary].predict(featurize(pool), return_std=True)
        pool, mean, std = self._region_of_interest(ctx, pool, mean, std, k)
        pool, mean, std = self._focus(ctx, pool, mean, std, k)
        cost = ctx.cost_objectives(pool)
        first_cost = cost[:, 0] if cost.shape[1] else ctx.space.params_matrix(pool) / ctx.dense_params
        predictions = [{primary: float(mean[i]), "std": float(std[i])} for i in range(len(pool))]
        if s.screen_tokens:
            wide = self._acquire(ctx, models, featurize, pool, mean, std, first_cost, k * s.screen_factor, seed)
            chosen = self._screened_best(ctx, round_, pool, wide, first_cost, k, predictions)
        else:
            chosen = self._acquire(ctx, models, featurize, pool, mean, std, first_cost, k, seed)
        before = len(ctx.evaluations())
        ctx.evaluate_now(pool[chosen], "acquired", round_, [predictions[i] for i in chosen])
        screened = sum(sc.duration_s or 0 for sc in ctx.store.screenings(ctx.run.id) if sc.round == round_)
        batch = [e for e in ctx.evaluations() if e.round == round_ and e.status == "ok" and e.predicted]
        tau, rmse = _prediction_quality(batch, primary)
        ctx.store.close_round(
            ctx.run.id,
            round_,
            eval_s=sum(e.duration_s or 0 for e in batch) + screened,
            hypervolume=ctx.hypervolume(),
            tau=tau,
            rmse=rmse,
        )
        return len(ctx.evaluations()) - before

    def _acquire(self, ctx: SearchContext, models, featurize, pool, mean, std, first_cost, k, seed) -> list[int]:
        """Indices of the ``k`` candidates of ``pool`` the acquisition strategy sends on."""
        s = ctx.settings
        if s.acquisition != "ehvi":
            return select_batch(s.acquisition, pool, mean, std, first_cost, k)
        primary = ctx.objectives.quality[0]
        ok = [e for e in ctx.evaluations() if e.status == "ok"]
        predicted = self._objective_fn(ctx, models, featurize)(pool)
        index = ctx.objectives.names.index(primary)
        scores = expected_hv_improvement(ctx.objective_matrix(ok), ctx.reference_point(), index, predicted, std, seed)
        return select_batch("ehvi", pool, mean, std, first_cost, k, scores=scores)

    def _screened_best(self, ctx: SearchContext, round_, pool, wide, first_cost, k, predictions) -> list[int]:
        """Multi-fidelity: screen the ``wide`` candidates on few tokens, keep the ``k`` that
        screened best (spread along the cost as acquisition does); a failed screening drops out."""
        primary = ctx.objectives.quality[0]
        results = ctx.screen(pool[wide], round_)
        for i, sc in zip(wide, results, strict=True):
            if sc.status == "ok":
                predictions[i][f"screen_{primary}"] = quality_value(primary, sc.metrics)
        passed = [i for i, sc in zip(wide, results, strict=True) if sc.status == "ok"]
        if not passed:
            return []
        values = np.array([predictions[i][f"screen_{primary}"] for i in passed])
        sub = np.array(passed)
        picked = select_batch("greedy", pool[sub], values, np.zeros(len(sub)), first_cost[sub], k)
        return [int(sub[j]) for j in picked]

    def _candidates(self, ctx: SearchContext, res) -> tuple[np.ndarray, np.ndarray]:
        """Feasible, unknown, unique configurations of the final population, predicted front first.

        Feasible means within the budget and above the parameter floor (``ctx.feasible``).
        """
        known = ctx.known_keys()
        pop = res.pop
        rank = pop.get("rank")
        rank = rank.reshape(-1) if rank is not None else np.zeros(len(pop))
        rank = np.where(np.isnan(rank.astype(float)), 1e9, rank)
        out, ranks = [], []
        for i in np.lexsort((np.arange(len(pop)), rank)):
            x = np.round(pop[i].X).astype(int)
            key = ctx.space.key(x)
            if key not in known and ctx.feasible(x[None])[0]:
                known.add(key)
                out.append(x)
                ranks.append(rank[i])
        return np.array(out, dtype=int).reshape(-1, ctx.space.n_var), np.array(ranks)

    def _band(self, ctx: SearchContext, pool, rank, objective_fn):
        """Under a budget with ``focus``, candidates inside the band just under it, ranked by
        non-dominated sorting among themselves. The final population's front spreads over every
        cost and may hold few of them, while the band is where the answer lies: when it holds
        fewer than a batch, the best-ranked candidates below it are filled up to the budget
        (``_fill``) first. Unchanged without a budget or focus."""
        slack = ctx.focus_slack(pool) if len(pool) else None
        k = max(1, min(ctx.settings.batch, ctx.budget_left()))
        if slack is None:
            return pool, rank
        band = pool[slack <= 0]
        if len(band) < k:
            known = ctx.known_keys() | {ctx.space.key(x) for x in band}
            filled = []
            for x in pool[np.argsort(rank, kind="stable")][: 4 * k]:
                y = self._fill(ctx, x, objective_fn)
                key = ctx.space.key(y)
                if key not in known and ctx.focus_slack(y[None])[0] <= 0:
                    known.add(key)
                    filled.append(y)
            band = np.array(list(band) + filled, dtype=int).reshape(-1, ctx.space.n_var)
        if len(band) < k:
            return pool, rank
        fronts = NonDominatedSorting().do(objective_fn(band))
        band_rank = np.empty(len(band))
        for r, members in enumerate(fronts):
            band_rank[members] = r
        return band, band_rank

    @staticmethod
    def _fill(ctx: SearchContext, x: np.ndarray, objective_fn) -> np.ndarray:
        """``x`` with pruning taken back one level at a time, each step the one the surrogate
        predicts best, until no step stays within the budget: a candidate that spends it."""
        q = ctx.objectives.names.index(ctx.objectives.quality[0])
        x = x.copy()
        while True:
            steps = np.flatnonzero(x > 0)
            trials = np.repeat(x[None], len(steps), axis=0)
            trials[np.arange(len(steps)), steps] -= 1
            trials = trials[ctx.feasible(trials)] if len(trials) else trials
            if not len(trials):
                return x
            x = trials[int(np.argmin(objective_fn(trials)[:, q]))]

    def _focus(self, ctx: SearchContext, pool, mean, std, k):
        """Keep the candidates inside the focus band under the budget, or the ``k`` closest to it."""
        slack = ctx.focus_slack(pool)
        if slack is None or not len(pool):
            return pool, mean, std
        keep = slack <= 0
        if keep.sum() < k:
            keep = np.zeros(len(pool), dtype=bool)
            keep[np.argsort(slack, kind="stable")[:k]] = True
        return pool[keep], mean[keep], std[keep]

    def _region_of_interest(self, ctx: SearchContext, pool, mean, std, k):
        """Drop candidates predicted far worse than the best evaluated one (collapsed models teach
        the user nothing); keep at least the ``k`` best predicted."""
        primary = ctx.objectives.quality[0]
        best = min(
            (quality_value(primary, e.metrics) for e in ctx.shared_evaluations() if e.status == "ok"),
            default=None,
        )
        if best is None or primary not in ("ppl", "kl"):
            return pool, mean, std
        keep = mean <= best + math.log(ctx.settings.max_ppl_ratio)
        if keep.sum() < k:
            keep = np.zeros(len(pool), dtype=bool)
            keep[np.argsort(mean, kind="stable")[:k]] = True
        return pool[keep], mean[keep], std[keep]


def _prediction_quality(batch: list[Evaluation], primary: str) -> tuple[float | None, float | None]:
    """Out-of-sample Kendall tau and RMSE of the predictions made before evaluating a batch."""
    pairs = [(e.predicted[primary], quality_value(primary, e.metrics)) for e in batch if primary in e.predicted]
    if not pairs:
        return None, None
    pred, true = np.array(pairs).T
    rmse = float(np.sqrt(np.mean((pred - true) ** 2)))
    tau = float(kendalltau(pred, true)[0]) if len(pairs) >= 3 else None
    return (None if tau is not None and math.isnan(tau) else tau), rmse


# Kept for the public API: the active-learning search bound to one store.
class ActiveLearningSearch:
    def __init__(self, backend, store, settings, progress=_noop, executor=None):
        self.context = SearchContext(backend, store, settings, progress, executor)

    def run(self) -> SearchResult:
        return run_strategy(self.context)


def run_strategy(ctx: SearchContext, retry_failed: bool = False) -> SearchResult:
    """Run ``ctx``'s method to its budget; ``retry_failed`` first evaluates the run's failed rows again."""
    from evoprune.baselines import STRATEGIES

    if ctx.run is None:
        ctx.open_run()
    if retry_failed:
        retried = ctx.store.retry_failed(ctx.run.id)
        ctx.progress("phase", name=f"evaluating {retried} failed rows again")
    ctx.progress("start", run=ctx.run, done=len(ctx.evaluations()), total=ctx.settings.evals)
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


def prepare_backend(model: str, data: str, settings: SearchSettings, progress: ProgressFn = _noop) -> PruningBackend:
    """Validate the search settings, then load model and data and score importance.

    Task-accuracy objectives (``acc:TASK``) attach a task evaluator on a fixed subset of
    ``task_limit`` questions, so every real evaluation also reports those accuracies.
    """
    settings.validate()
    backend = load_backend(model, data, settings.backend, progress)
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
    progress: ProgressFn = _noop,
    executor: str = "local",
    executor_options: dict | None = None,
    backend: PruningBackend | None = None,
    retry_failed: bool = False,
) -> SearchResult:
    """Run (or continue) a search: everything the ``evoprune search`` command does, as one call.

    ``retry_failed`` evaluates the run's failed rows again (after a transient fault was fixed)
    before the method goes on; they count against ``evals`` as before.

    The store file is created only after the model, data and budget have been checked, so bad
    input never leaves an empty store behind. ``executor`` names where real evaluations run
    (``local`` in this process; see ``evoprune.executors``). Pass ``backend`` to reuse a loaded
    model across searches (``compare`` does); a method that needs another level grid (the one-shot
    baselines, see ``evoprune.baselines.method_settings``) gets it on the same loaded model.
    """
    from evoprune.baselines import method_settings

    settings = method_settings(settings)
    store_dir = Path(store).expanduser().resolve().parent
    if not store_dir.is_dir():  # before the model loads: minutes of setup would be spent for nothing
        raise EvopruneError(f"--store '{store}': directory '{store_dir}' does not exist: create it first")
    if backend is None:
        backend = prepare_backend(model, data, settings, progress)
    else:
        settings.validate()
        backend = backend.with_grid(settings.backend)
    CostEvaluator(backend.space, backend.loaded.model.config, dtype=settings.backend.dtype).check_feasible(
        settings.budget
    )
    recipe = BackendRecipe(model, data, settings.backend, backend.loaded.fingerprint)
    runner = make_executor(executor, backend, recipe, **(executor_options or {}))
    try:
        # One searching process per store: a second one would redo the first one's pending rows.
        with Store(store) as st, search_lock(store):
            return run_strategy(SearchContext(backend, st, settings, progress, runner), retry_failed)
    finally:
        runner.close()
