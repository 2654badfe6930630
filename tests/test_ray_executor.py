"""The ray executor on a real local Ray instance: same search as in-process, worker deaths survived
and recorded, setup problems refused before a store exists, and a clear error without Ray."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

import evoprune
from evoprune.backend.settings import BackendSettings
from evoprune.errors import EvopruneError
from evoprune.execution.executors import EXECUTORS, BackendRecipe, register_executor
from evoprune.store import Store

BACKEND = BackendSettings(eval_tokens=512, calib_tokens=256, seq_len=128, mlp_levels=4)
# The surrogate does not matter here; a small GP keeps the rounds between batches short.
SETTINGS = evoprune.SearchSettings(
    evals=8, init=4, batch=4, surrogate="gp", pop_size=16, generations=5, backend=BACKEND
)


def _keys_and_metrics(result: evoprune.SearchResult) -> list[tuple[str, str, dict]]:
    return [(e.config_key, e.status, e.metrics) for e in result.evaluations]


@pytest.fixture(scope="module")
def local_result(tmp_path_factory, tiny_model_dir, text_file):
    """The reference: the same search evaluated in this process (it also fills the importance cache)."""
    # The module fixture runs before conftest's per-test cache isolation, so set it up here too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOPRUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "evoprune-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        store = tmp_path_factory.mktemp("local") / "local.db"
        return evoprune.search(str(tiny_model_dir), str(text_file), str(store), SETTINGS)


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray instance for the module (2 CPUs: this machine's size).

    Ray's processes inherit the environment of ``ray.init``; there it names an empty cache, so
    workers find the driver's importance scores only if the executor passes the driver's on.
    """
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("not-the-drivers-cache")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def recorded_executors():
    """A ``ray`` executor registered under another name that keeps each instance for the test."""
    from evoprune.execution.ray_executor import RayExecutor

    made: list[RayExecutor] = []

    @register_executor("ray-recorded")
    def _recorded(backend, recipe=None, **options):
        made.append(RayExecutor(recipe, backend.data_fingerprint, **options))
        # On 2 busy cores a second worker can take longer to load than the whole search; wait,
        # so that every test sees both workers at work.
        made[-1].wait_for_workers()
        return made[-1]

    try:
        yield made
    finally:
        EXECUTORS.pop("ray-recorded", None)


# Runs first, before the module's shared Ray session starts: it checks that the executor starts a
# private instance by itself and stops it again when it gives up.
def test_workers_that_cannot_load_the_model_fail_before_a_store_exists(tmp_path, tiny_model_dir, text_file):
    ray = pytest.importorskip("ray")
    from evoprune.execution.ray_executor import RayExecutor

    assert not ray.is_initialized(), "run this test before the ones that share a Ray session"
    # A worker that ends up with other weights than the driver must not evaluate anything.
    recipe = BackendRecipe(str(tiny_model_dir), str(text_file), BACKEND, model_fingerprint="not-the-drivers")
    with pytest.raises(EvopruneError) as info:
        RayExecutor(recipe, "any", workers=1)
    message = str(info.value)
    assert "\n" not in message
    assert "no Ray worker could load the model" in message and "different model than the driver" in message
    assert not ray.is_initialized(), "the executor left its private Ray instance running"


def test_ray_search_equals_the_in_process_search(
    ray_session, recorded_executors, local_result, tmp_path, tiny_model_dir, text_file
):
    store = tmp_path / "ray.db"
    phases = []
    result = evoprune.search(
        str(tiny_model_dir),
        str(text_file),
        str(store),
        SETTINGS,
        progress=lambda kind, **kw: phases.append(kw.get("name")) if kind == "phase" else None,
        executor="ray-recorded",
        executor_options={"workers": 2},
    )
    assert _keys_and_metrics(result) == _keys_and_metrics(local_result)
    # the pool's start, silent for tens of seconds before, is a phase of the progress display
    assert any(p and p.startswith("starting the ray-recorded workers") for p in phases), phases
    assert all(e.status == "ok" for e in result.evaluations)
    (executor,) = recorded_executors
    assert len(executor.loaded) == 2 and len({w["pid"] for w in executor.loaded}) == 2
    # The driver filled the importance cache; the workers read it instead of scoring again.
    assert all(w["importance_cached"] for w in executor.loaded)
    with Store(store) as st:
        assert st.failures(result.run.id) == []
    assert executor.workers == [], "close() leaves no worker behind"


def test_resume_continues_a_run_on_ray(
    ray_session, recorded_executors, local_result, tmp_path, tiny_model_dir, text_file
):
    """Where evaluations run is not a setting of the run: ``resume --executor`` picks it again
    (resume had no such option and went on in process)."""
    from dataclasses import replace

    from typer.testing import CliRunner

    from evoprune.cli import app

    store = tmp_path / "r.db"
    evoprune.search(str(tiny_model_dir), str(text_file), str(store), replace(SETTINGS, evals=4))  # the design
    out = CliRunner().invoke(app, ["resume", "--store", str(store), "--evals", "8", "--executor", "ray-recorded"])
    assert out.exit_code == 0, out.output
    (executor,) = recorded_executors
    assert len(executor.loaded) == 2  # the rest of the run went to the Ray workers
    with Store.open_existing(store, readonly=True) as st:
        resumed = st.evaluations(st.get_run().id)
    assert [(e.config_key, e.status, e.metrics) for e in resumed] == _keys_and_metrics(local_result)


@pytest.mark.parametrize("max_retries", [2, 0])
def test_a_worker_killed_mid_batch_is_replaced_and_recorded(
    max_retries, ray_session, recorded_executors, local_result, tmp_path, tiny_model_dir, text_file
):
    ray = ray_session
    killed: list[str] = []

    def kill_one_worker_mid_batch(event: str, **info) -> None:
        # Called by the search in the driver as each result arrives, while the other worker still
        # holds a job: kill the worker that just finished, which the next job of the batch goes to.
        if event != "eval_done" or killed or not recorded_executors:
            return
        workers = recorded_executors[-1].workers
        idle = [w for w in workers if w.ready and w.job is None]
        if not idle or not any(w.job is not None for w in workers):
            return
        victim = idle[0]
        ray.kill(victim.handle, no_restart=True)
        deadline = time.time() + 30
        while time.time() < deadline:  # until Ray itself reports it dead
            try:
                ray.get(victim.handle.ready.remote(), timeout=5)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError:
                break
        killed.append(victim.name)

    store = tmp_path / "killed.db"
    result = evoprune.search(
        str(tiny_model_dir),
        str(text_file),
        str(store),
        SETTINGS,
        progress=kill_one_worker_mid_batch,
        executor="ray-recorded",
        executor_options={"workers": 2, "max_retries": max_retries},
    )
    assert len(killed) == 1, "no moment with one idle and one busy worker came up"
    evals = result.evaluations
    assert len(evals) == SETTINGS.evals and len({e.config_key for e in evals}) == len(evals)
    assert all(e.status in ("ok", "failed") for e in evals), "a candidate was left without a result"
    with Store(store) as st:
        failures = st.failures(result.run.id)
    assert len(failures) == 1
    (failure,) = failures
    assert failure.worker.startswith(killed[0]) and "ActorDiedError" in failure.error
    assert failure.attempt == 1 and failure.retried == (max_retries > 0)
    hit = next(e for e in evals if e.id == failure.eval_id)
    if max_retries > 0:
        # Retried on another worker: the search is exactly the one without the death.
        assert _keys_and_metrics(result) == _keys_and_metrics(local_result)
    else:
        assert hit.status == "failed" and "failed on 1 workers" in hit.error and "ActorDiedError" in hit.error
        assert [e for e in evals if e.status == "failed"] == [hit]
    assert recorded_executors[-1].started == 3, "the dead worker was not replaced"


@pytest.mark.parametrize(
    "asks, needle",
    [
        ({"gpus_per_worker": 1}, "1 GPUs: lower --gpus-per-worker or"),
        ({"memory_per_worker": 2**50}, "1048576.0 GiB memory: lower memory_per_worker or"),
        ({"cpus_per_worker": 8}, "8 CPUs, 0 GPUs: lower cpus_per_worker or"),
    ],
)
def test_workers_that_fit_nowhere_are_refused_at_once(asks, needle, ray_session, tiny_model_dir, text_file):
    from evoprune.execution.ray_executor import RayExecutor

    recipe = BackendRecipe(str(tiny_model_dir), str(text_file), BACKEND, model_fingerprint="unused")
    with pytest.raises(EvopruneError, match=r"the Ray cluster has 2 CPUs, 0 GPUs and .* too few for one worker") as e:
        RayExecutor(recipe, "unused", **asks)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["ray-missing", "ray-flags-without-ray"])
def test_cli_refuses_in_one_line_before_loading_anything(case, tmp_path, tiny_model_dir):
    store = tmp_path / "never.db"
    args = ["search", "--model", str(tiny_model_dir), "--store", str(store), "--evals", "4"]
    if case == "ray-missing":
        # Blocks `import ray` as if it were not installed.
        prelude = "import sys; sys.modules['ray'] = None"
        args += ["--executor", "ray"]
        needle = "pip install 'evoprune[ray]'"
    else:
        prelude = "pass"
        args += ["--workers", "2"]
        needle = "--workers and --gpus-per-worker need --executor ray"
    code = f"{prelude}; import sys; from evoprune.cli import main; sys.argv = ['evoprune', *{args!r}]; main()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not store.exists()
