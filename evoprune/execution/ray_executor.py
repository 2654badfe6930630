"""Evaluate candidates in parallel on a Ray cluster: ``evoprune search --executor ray``.

Each worker is a Ray actor that loads the model, its importance scores (from the on-disk cache
the driver already filled) and the dense reference once, then evaluates the configurations sent
to it, one at a time. The driver stays the store's single writer: results come back through
``ray.wait`` and ``on_result`` runs in the driver, in completion order.

A worker that dies or raises is killed and replaced, and the job it held goes to the next free
worker, up to ``max_retries`` more times; after that the job is reported as a failed
Measurement and the search goes on. Every failure is reported through ``on_failure``.

Options (``executor_options`` of ``search()``):

- ``address``: None starts a private local Ray instance (stopped again by ``close``); ``"auto"``
  joins the cluster that ``ray start`` runs on this machine; ``"ray://HOST:10001"`` joins a
  remote cluster through Ray Client.
- ``workers``: how many actors; None starts as many as the cluster's CPUs, GPUs and memory hold.
- ``cpus_per_worker`` (1), ``gpus_per_worker`` (0): the Ray resources each actor reserves.
- ``memory_per_worker``: bytes of Ray memory each actor reserves; by default an estimate from the
  driver's model (weights, logits of one batch, interpreter), so Ray never starts more copies of
  the model on a node than its memory holds.
- ``threads_per_worker``: torch threads in each actor (default: ``cpus_per_worker``).
- ``max_retries`` (2): how many other workers a job is tried on after its first worker failed.
- ``start_timeout_s`` (600): how long to wait for a worker to load when none is free.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections import deque
from dataclasses import replace

from evoprune.backend.loading import absolute_if_local
from evoprune.backend.pruner import Measurement, PruningBackend
from evoprune.errors import EvopruneError
from evoprune.execution.executors import (
    BackendRecipe,
    Executor,
    FailureFn,
    Job,
    ResultFn,
    WorkerFailure,
    register_executor,
)
from evoprune.execution.ray_workers import (
    FORWARDED_ENV,
    RayWorker,
    _EvalWorker,
    _one_line,
    worker_memory_estimate,
)

try:
    import ray
    from ray.exceptions import RayError
except ImportError:
    raise EvopruneError("the ray executor needs Ray, which is not installed: pip install 'evoprune[ray]'") from None

log = logging.getLogger(__name__)


class RayExecutor(Executor):
    """Evaluates jobs on Ray actors, one job per actor at a time, results in completion order."""

    name = "ray"

    def __init__(
        self,
        recipe: BackendRecipe,
        data_fingerprint: str,
        *,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 0,
        memory_per_worker: int | None = None,
        threads_per_worker: int | None = None,
        max_retries: int = 2,
        start_timeout_s: float = 600,
    ):
        if workers is not None and workers < 1:
            raise EvopruneError(f"--workers must be at least 1, got {workers}")
        if not cpus_per_worker > 0:
            raise EvopruneError(f"cpus_per_worker must be above 0, got {cpus_per_worker}")
        if gpus_per_worker < 0:
            raise EvopruneError(f"--gpus-per-worker must be at least 0, got {gpus_per_worker}")
        if memory_per_worker is not None and memory_per_worker < 1:
            raise EvopruneError(f"memory_per_worker must be a positive number of bytes, got {memory_per_worker}")
        if max_retries < 0:
            raise EvopruneError(f"max_retries must be at least 0, got {max_retries}")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise EvopruneError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.recipe = replace(
            recipe,
            model=absolute_if_local(recipe.model),
            data=absolute_if_local(recipe.data),
            settings=replace(recipe.settings, calib_data=absolute_if_local(recipe.settings.calib_data)),
        )
        self.data_fingerprint = data_fingerprint
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.memory_per_worker = int(memory_per_worker) if memory_per_worker else None
        self.threads = threads_per_worker or max(1, math.ceil(cpus_per_worker))
        self.max_retries = max_retries
        self.start_timeout_s = start_timeout_s
        self._owns_ray = False
        self._workers: dict[str, RayWorker] = {}
        self._refs: dict[object, tuple[str, str]] = {}  # ObjectRef -> ("ready" | "eval", worker name)
        self._queue: deque[tuple[Job, int]] = deque()
        self._unreported: list[tuple[Job | None, WorkerFailure]] = []
        self._on_failure: FailureFn | None = None
        self._spawned = 0
        self._loaded_once = False
        self._load_failures_in_row = 0
        self._first_load_error: str | None = None
        self._last_error: str | None = None
        self.loaded: list[dict] = []  # what each worker reported once loaded: host, pid, load_s, ...
        self._actor_class = None
        try:
            self._connect()
            self.size = self._pool_size(workers)
            for _ in range(self.size):
                self._spawn()
            # Wait for one worker now, so that a setup that cannot work fails before the store is made.
            while not any(w.ready for w in self._workers.values()):
                self._pump(on_result=None)
        except BaseException:
            self.close()
            raise

    # -- cluster ----------------------------------------------------------------------------
    def _connect(self) -> None:
        if ray.is_initialized():
            return  # the caller's Ray session (a test, a notebook): use it, leave it running
        where = "start a local Ray instance" if self.address is None else f"connect to Ray at '{self.address}'"
        try:
            # "local" always starts a private instance: plain ray.init() would join any cluster
            # that `ray start` left running on this machine.
            with warnings.catch_warnings():
                # Ray Client warns of a timeout before raising it: the error below says it once.
                warnings.filterwarnings("ignore", message="Ray Client connection timed out")
                ray.init(
                    address=self.address or "local",
                    include_dashboard=False if self.address is None else None,
                    log_to_driver=False,
                    # A private instance's startup notices are noise in the search's progress display.
                    logging_level=logging.ERROR if self.address is None else logging.WARNING,
                )
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here; all mean "no cluster"
            raise EvopruneError(
                f"could not {where} ({_one_line(exc)}): start a cluster with 'ray start --head' and pass "
                f"--ray-address auto on its head node, or pass the ray://HOST:10001 address of a running one"
            ) from None
        self._owns_ray = True

    def _asks(self) -> str:
        memory = f", {self.memory_per_worker / 2**30:.1f} GiB memory" if self.memory_per_worker else ""
        return f"{self.cpus_per_worker:g} CPUs, {self.gpus_per_worker:g} GPUs{memory}"

    def _pool_size(self, workers: int | None) -> int:
        resources = ray.cluster_resources()
        # Workers that fit, per resource asked for, under the name that sets it (a flag or an executor option).
        fit = {"cpus_per_worker": int(resources.get("CPU", 0) // self.cpus_per_worker)}
        if self.gpus_per_worker > 0:
            fit["--gpus-per-worker"] = int(resources.get("GPU", 0) // self.gpus_per_worker)
        if self.memory_per_worker:
            fit["memory_per_worker"] = int(resources.get("memory", 0) // self.memory_per_worker)
        fits = min(fit.values())
        if fits < 1:
            short = " and ".join(name for name, n in fit.items() if n < 1)
            raise EvopruneError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs and "
                f"{resources.get('memory', 0) / 2**30:.1f} GiB memory, too few for one worker with {self._asks()}: "
                f"lower {short} or add nodes"
            )
        if workers is None:
            return fits
        if workers > fits:
            log.warning("only %d of %d ray workers fit the cluster now; the rest start when resources free up",
                        fits, workers)  # fmt: skip
        return workers

    def _spawn(self) -> None:
        if self._actor_class is None:
            self._actor_class = ray.remote(_EvalWorker)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        handle = self._actor_class.options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            memory=self.memory_per_worker,
            max_restarts=0,  # this executor replaces dead workers itself and counts the retries
            max_task_retries=0,
            runtime_env={"env_vars": env} if env else None,
        ).remote(self.recipe, self.data_fingerprint, self.threads)
        self._spawned += 1
        worker = RayWorker(f"worker-{self._spawned}", handle)
        self._workers[worker.name] = worker
        self._refs[handle.ready.remote()] = ("ready", worker.name)

    def _retire(self, worker: RayWorker) -> None:
        self._workers.pop(worker.name, None)
        for ref in [r for r, (_, name) in self._refs.items() if name == worker.name]:
            del self._refs[ref]
        # It may be gone already (and a dying cluster may refuse the call); either way it is done.
        with contextlib.suppress(Exception):
            ray.kill(worker.handle, no_restart=True)

    @property
    def workers(self) -> list[RayWorker]:
        """The live workers (ready or still loading)."""
        return list(self._workers.values())

    @property
    def started(self) -> int:
        """How many workers this executor has started, replacements included."""
        return self._spawned

    def wait_for_workers(self) -> None:
        """Block until every started worker has loaded or failed (so a measurement excludes loading)."""
        while any(not w.ready for w in self._workers.values()):
            self._pump(on_result=None)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, jobs: list[Job], on_result: ResultFn, on_failure: FailureFn | None = None) -> None:
        self._on_failure = on_failure
        self._report_failures()
        self._queue.extend((job, 1) for job in jobs)
        while self._queue or any(w.job is not None for w in self._workers.values()):
            self._dispatch()
            self._pump(on_result)

    def _dispatch(self) -> None:
        for worker in list(self._workers.values()):
            if not self._queue:
                return
            if worker.ready and worker.job is None:
                job, attempt = self._queue.popleft()
                worker.job = (job, attempt)
                self._refs[worker.handle.evaluate.remote(job.levels, job.tokens, job.split)] = ("eval", worker.name)

    def _pump(self, on_result: ResultFn | None) -> None:
        """Wait for the next ready or finished worker and handle it."""
        if not self._workers and not self._loaded_once:
            raise EvopruneError(
                f"no Ray worker could load the model ({self._first_load_error}): make --model and --data "
                f"reachable by the same spec on every node (a shared path or a hub id), then run again"
            )
        if not self._workers:
            raise EvopruneError(
                f"every Ray worker failed and none could be replaced (last: {self._last_error}): check the "
                f"cluster, then run the same command again to finish the pending evaluations"
            )
        busy = any(kind == "eval" for kind, _ in self._refs.values())
        done, _ = ray.wait(list(self._refs), num_returns=1, timeout=None if busy else self.start_timeout_s)
        if not done:
            raise EvopruneError(
                f"no Ray worker became ready within {self.start_timeout_s:g} s: the cluster lacks free resources "
                f"for a worker with {self._asks()}; lower --workers or --gpus-per-worker, or add nodes"
            )
        kind, name = self._refs.pop(done[0])
        worker = self._workers[name]
        try:
            value = ray.get(done[0])
        except RayError as exc:
            self._worker_failed(worker, _one_line(exc), on_result)
            return
        if kind == "ready":
            if value["error"]:
                self._worker_failed(worker, value["error"], on_result)
                return
            worker.ready, worker.info = True, value
            self.loaded.append({"worker": worker.name, **value})
            self._loaded_once, self._load_failures_in_row = True, 0
            return
        job, _attempt = worker.job
        worker.job = None
        on_result(job, value)

    def _worker_failed(self, worker: RayWorker, error: str, on_result: ResultFn | None) -> None:
        self._retire(worker)
        self._last_error = error
        log.warning("ray %s failed: %s", worker.label, error)
        if worker.job is None:  # failed while loading
            self._first_load_error = self._first_load_error or error
            self._unreported.append((None, WorkerFailure(worker.label, error, 0, False)))
            self._report_failures()
            self._load_failures_in_row += 1
            # A load that never worked anywhere is a setup problem: a replacement would fail again.
            if self._loaded_once and self._load_failures_in_row <= self.max_retries:
                self._spawn()
            return
        job, attempt = worker.job
        retried = attempt <= self.max_retries
        self._unreported.append((job, WorkerFailure(worker.label, error, attempt, retried)))
        self._report_failures()
        self._spawn()
        if retried:
            self._queue.appendleft((job, attempt + 1))
        elif on_result is not None:
            message = f"failed on {attempt} workers, the last {worker.label}: {error}"
            on_result(job, Measurement(metrics={}, ok=False, error=message, duration_s=0.0))

    def _report_failures(self) -> None:
        """Hand failures to the caller; those from before the first ``evaluate`` wait for it."""
        while self._unreported and self._on_failure is not None:
            self._on_failure(*self._unreported.pop(0))

    def close(self) -> None:
        for worker in list(self._workers.values()):
            self._retire(worker)
        self._refs.clear()
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()


@register_executor("ray")
def _make_ray(backend: PruningBackend, recipe: BackendRecipe | None = None, **options) -> RayExecutor:
    if recipe is None:
        raise EvopruneError("the ray executor needs a BackendRecipe to build its workers' backends")
    options.setdefault("memory_per_worker", worker_memory_estimate(backend))
    return RayExecutor(recipe, backend.data_fingerprint, **options)
