"""The active-learning search: real evaluations in, surrogate-guided candidates out.

Flow: an initial design is evaluated for real; then each round fits the surrogate on every
successful pair, runs NSGA-II on (predicted quality, exact parameter fraction), and sends the
candidates of the predicted front that the acquisition strategy ranks highest to real
evaluation. Every evaluation is written to the store as ``pending`` before it runs and
committed the moment it finishes, so a killed search resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from evoprune.acquisition import ACQUISITIONS, select_batch
from evoprune.backend.pruner import BackendSettings, Measurement, PruningBackend, load_backend
from evoprune.design import initial_design, intensity_sample
from evoprune.errors import EvopruneError
from evoprune.executors import BackendRecipe, Executor, Job, LocalExecutor, make_executor
from evoprune.features import FeatureMap
from evoprune.pareto import hypervolume
from evoprune.store import Evaluation, Run, Store
from problems import SurrogatePruningProblem
from surrogates import available_surrogates, make_surrogate

ProgressFn = Callable[..., None]


@dataclass(frozen=True)
class SearchSettings:
    """Everything that decides which configurations a search evaluates (``evals`` only bounds it)."""

    evals: int
    seed: int = 0
    init: int = 8
    batch: int = 4
    surrogate: str = "ngboost"
    acquisition: str = "uncertainty"
    min_params: float = 0.5
    max_params: float = 1.0
    max_ppl_ratio: float = 20.0
    pop_size: int = 64
    generations: int = 40
    backend: BackendSettings = field(default_factory=BackendSettings)

    def validate(self) -> None:
        if self.evals < 1:
            raise EvopruneError(f"--evals must be at least 1, got {self.evals}")
        if self.init < 1:
            raise EvopruneError(f"--init must be at least 1, got {self.init}")
        if self.batch < 1:
            raise EvopruneError(f"--batch must be at least 1, got {self.batch}")
        if not 0 <= self.min_params < self.max_params <= 1:
            raise EvopruneError(
                f"parameter bounds must satisfy 0 <= --min-params < --max-params <= 1, "
                f"got {self.min_params} and {self.max_params}"
            )
        if self.max_ppl_ratio <= 1:
            raise EvopruneError(f"--max-ppl-ratio must be above 1, got {self.max_ppl_ratio}")
        if self.surrogate not in available_surrogates():
            raise EvopruneError(
                f"surrogate {self.surrogate!r} is unknown: use one of {', '.join(available_surrogates())}"
            )
        if self.acquisition not in ACQUISITIONS:
            raise EvopruneError(f"acquisition {self.acquisition!r} is unknown: use one of {', '.join(ACQUISITIONS)}")
        self.backend.validate()

    def identity(self) -> dict:
        """The settings that define a run (a larger ``evals`` continues the same run)."""
        d = asdict(self)
        d.pop("evals")
        return d


@dataclass
class SearchResult:
    run: Run
    evaluations: list[Evaluation]
    new_evaluations: int
    importance_cached: bool


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


class ActiveLearningSearch:
    """One search against one store; ``run()`` spends the evaluation budget."""

    def __init__(
        self,
        backend: PruningBackend,
        store: Store,
        settings: SearchSettings,
        progress: ProgressFn = _noop,
        executor: Executor | None = None,
    ):
        self.backend = backend
        self.executor = executor or LocalExecutor(backend)
        self.store = store
        self.settings = settings
        self.progress = progress
        self.space = backend.space
        self.dense_params = self.space.arch.dense_params()
        self.run_record: Run | None = None
        self.new_evaluations = 0

    # -- run bookkeeping --------------------------------------------------------------------
    def open_run(self) -> Run:
        b = self.backend
        identity = {
            "model_fingerprint": b.loaded.fingerprint,
            "data_fingerprint": b.data_fingerprint,
            "space": self.space.fingerprint(),
            "settings": self.settings.identity(),
        }
        run_key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        for other in self.store.runs():
            if other.space["arch"] != self.space.to_dict()["arch"]:
                theirs = other.space["arch"]
                raise EvopruneError(
                    f"store '{self.store.path}' holds runs of a different model ({other.model}: "
                    f"{theirs['model_type']}, {theirs['num_layers']} layers) than '{b.loaded.source.spec}' "
                    f"({self.space.arch.model_type}, {self.space.num_layers} layers): use another --store"
                )
        run, _created = self.store.get_or_create_run(
            run_key,
            model=b.loaded.source.spec,
            model_fingerprint=b.loaded.fingerprint,
            data=b.text.spec,
            data_fingerprint=b.data_fingerprint,
            dense_params=self.dense_params,
            space=self.space.to_dict(),
            settings={**asdict(self.settings), "importance_cached": b.importance_cached},
            versions=library_versions(),
        )
        self.run_record = run
        return run

    def _evaluations(self) -> list[Evaluation]:
        return self.store.evaluations(self.run_record.id)

    def _budget_left(self) -> int:
        return self.settings.evals - len(self._evaluations())

    # -- real evaluation --------------------------------------------------------------------
    def _enqueue(self, x: np.ndarray, origin: str, round_: int, predicted: dict | None = None) -> int:
        return self.store.add_pending(
            self.run_record.id,
            self.space.key(x),
            x.tolist(),
            origin,
            round_,
            self.space.params(x),
            self.space.params_fraction(x),
            predicted,
        )

    def _evaluate_pending(self) -> float:
        """Evaluate every pending row (in id order for the local executor); return the seconds spent."""
        pending = [e for e in self._evaluations() if e.status == "pending"]
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

        self.executor.evaluate([Job(e.id, tuple(e.levels)) for e in pending], commit)
        return spent

    # -- phases -----------------------------------------------------------------------------
    def _run_design(self) -> None:
        done = {e.config_key for e in self._evaluations()}
        for x in initial_design(self.space, self.settings.init, self.settings.seed):
            if self._budget_left() <= 0:
                break
            if self.space.key(x) not in done:
                self._enqueue(x, "design", 0)
                self._evaluate_pending()

    def _train_set(self) -> tuple[np.ndarray, np.ndarray]:
        ok = [e for e in self._evaluations() if e.status == "ok" and "ppl" in e.metrics]
        X = np.array([e.levels for e in ok], dtype=int)
        y = np.log(np.array([e.metrics["ppl"] for e in ok]))
        return X, y

    def _inner_search(self, surrogate, featurize, round_: int):
        s = self.settings
        X_eval, _ = self._train_set()
        seed_pop = np.vstack([X_eval, intensity_sample(self.space, s.pop_size, s.seed * 1000 + round_)])
        problem = SurrogatePruningProblem(
            surrogate,
            featurize,
            lambda X: self.space.params_matrix(X) / self.dense_params,
            self.space.lower,
            self.space.upper,
            min_cost=s.min_params,
            max_cost=s.max_params,
        )
        algorithm = NSGA2(
            pop_size=s.pop_size,
            sampling=seed_pop[: max(s.pop_size, 1)].astype(float),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        res = minimize(problem, algorithm, ("n_gen", s.generations), seed=s.seed * 1000 + round_, verbose=False)
        return res

    def _candidates(self, res) -> np.ndarray:
        """The predicted front first, then the rest of the final population; feasible, new, unique."""
        evaluated = {e.config_key for e in self._evaluations()}
        pop = res.pop
        feasible = pop.get("CV").reshape(-1) <= 0
        rank = pop.get("rank").reshape(-1) if pop.get("rank") is not None else np.zeros(len(pop))
        order = np.lexsort((np.arange(len(pop)), rank))
        out, seen = [], set(evaluated)
        for i in order:
            if not feasible[i]:
                continue
            x = np.round(pop[i].X).astype(int)
            key = self.space.key(x)
            if key not in seen:
                seen.add(key)
                out.append((x, rank[i]))
        return out

    def _run_round(self, round_: int) -> None:
        s = self.settings
        X, y = self._train_set()
        if len(X) < 2:
            raise EvopruneError(
                "fewer than 2 successful evaluations to train the surrogate on: "
                "lower the pruning intensity or check the model and data"
            )
        featurize = FeatureMap(self.space, self.backend.score())
        t0 = time.perf_counter()
        surrogate = make_surrogate(s.surrogate, random_state=s.seed).fit(featurize(X), y)
        fit_s = time.perf_counter() - t0
        self.progress("phase", name=f"round {round_}: inner search")
        t0 = time.perf_counter()
        res = self._inner_search(surrogate, featurize, round_)
        search_s = time.perf_counter() - t0
        self.store.record_round(self.run_record.id, round_, n_train=len(X), fit_s=fit_s, search_s=search_s)
        candidates = self._candidates(res)
        k = min(s.batch, self._budget_left())
        if not candidates:
            raise EvopruneError("the inner search found no new feasible configuration: widen --min-params/--max-params")
        front = [x for x, r in candidates if r == 0]
        pool = np.array(front if len(front) >= k else [x for x, _ in candidates])
        mean, std = surrogate.predict(featurize(pool), return_std=True)
        pool, mean, std = self._region_of_interest(pool, mean, std, k)
        cost = self.space.params_matrix(pool) / self.dense_params
        for i in select_batch(s.acquisition, pool, mean, std, cost, k):
            self._enqueue(pool[i], "acquired", round_, {"log_ppl": float(mean[i]), "std": float(std[i])})
        eval_s = self._evaluate_pending()
        self.store.close_round(self.run_record.id, round_, eval_s=eval_s, hypervolume=self._hypervolume())

    def _dense_ppl(self) -> float | None:
        dense = [e for e in self._evaluations() if e.status == "ok" and not any(e.levels)]
        return dense[0].metrics["ppl"] if dense else None

    def _region_of_interest(self, pool, mean, std, k):
        """Drop candidates predicted to be far worse than the dense model (collapsed models
        teach the user nothing); keep at least the ``k`` best predicted."""
        dense = self._dense_ppl()
        if dense is None:
            return pool, mean, std
        keep = mean <= np.log(dense * self.settings.max_ppl_ratio)
        if keep.sum() < k:
            keep = np.zeros(len(pool), dtype=bool)
            keep[np.argsort(mean, kind="stable")[:k]] = True
        return pool[keep], mean[keep], std[keep]

    def _hypervolume(self) -> float | None:
        dense = self._dense_ppl()
        if dense is None:
            return None
        return hypervolume(self._evaluations(), reference_ppl=self.settings.max_ppl_ratio * dense)

    def run(self) -> SearchResult:
        if self.run_record is None:
            self.open_run()
        self.progress("start", run=self.run_record, done=len(self._evaluations()), total=self.settings.evals)
        self._evaluate_pending()  # finish what a killed process left behind
        self._run_design()
        while self._budget_left() > 0:
            round_ = max(e.round for e in self._evaluations()) + 1
            self._run_round(round_)
        return SearchResult(self.run_record, self._evaluations(), self.new_evaluations, self.backend.importance_cached)


def prepare_backend(model: str, data: str, settings: SearchSettings, progress: ProgressFn = _noop) -> PruningBackend:
    """Validate the search settings, then load model and data and score importance."""
    settings.validate()
    return load_backend(model, data, settings.backend, progress)


def search(
    model: str,
    data: str,
    store: str,
    settings: SearchSettings,
    progress: ProgressFn = _noop,
    executor: str = "local",
    executor_options: dict | None = None,
) -> SearchResult:
    """Run (or continue) a search: everything the ``evoprune search`` command does, as one call.

    The store file is created only after the model and data have loaded, so bad input never
    leaves an empty store behind. ``executor`` names where real evaluations run (``local`` in
    this process; see ``evoprune.executors``).
    """
    backend = prepare_backend(model, data, settings, progress)
    recipe = BackendRecipe(model, data, settings.backend, backend.loaded.fingerprint)
    runner = make_executor(executor, backend, recipe, **(executor_options or {}))
    try:
        with Store(store) as st:
            return ActiveLearningSearch(backend, st, settings, progress, runner).run()
    finally:
        runner.close()
