"""How real evaluations scale with Ray workers on this machine, on SmolLM2-135M.

Evaluates the same configurations (1,024 tokens each) with the in-process executor and with the
``ray`` executor at 1 and 2 workers, 1 and 2 torch threads per worker, and reports evaluations per
minute once the workers have loaded (loading is timed separately), the scaling efficiency, and
whether every setup measured exactly the same metrics. Writes the "## Ray scaling" section of
``BENCHMARKS.md`` (other sections are left as they are). Usage::

    .venv/bin/python benchmarks/ray_scaling.py [--evals 12] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evoprune.backend.pruner import load_backend  # noqa: E402
from evoprune.backend.settings import BackendSettings  # noqa: E402
from evoprune.engine.design import intensity_sample  # noqa: E402
from evoprune.execution.executors import BackendRecipe, Job, LocalExecutor, make_executor  # noqa: E402

SECTION = "## Ray scaling"
# (workers, torch threads per worker); None workers = the in-process executor.
SETUPS = [(None, 2), (1, 1), (1, 2), (2, 1), (2, 2)]


def _timed_batch(executor, jobs: list[Job]) -> tuple[float, dict[int, dict], list[float]]:
    results: dict[int, dict] = {}
    durations: list[float] = []

    def on_result(job: Job, m) -> None:
        assert m.ok, m.error
        results[job.eval_id] = m.metrics
        durations.append(m.duration_s)

    start = time.perf_counter()
    executor.evaluate(jobs, on_result)
    return time.perf_counter() - start, results, durations


def run(model: str, data: str, n_evals: int, seed: int) -> tuple[list[dict], dict]:
    import ray

    settings = BackendSettings(eval_tokens=1024)
    backend = load_backend(model, data, settings)  # also fills the importance cache the workers read
    recipe = BackendRecipe(model, data, settings, backend.loaded.fingerprint)
    configs = intensity_sample(backend.space, n_evals + 2, seed)
    warmup = [Job(-1 - i, tuple(int(v) for v in x)) for i, x in enumerate(configs[:2])]
    jobs = [Job(i, tuple(int(v) for v in x)) for i, x in enumerate(configs[2:])]

    rows, reference = [], None
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        for workers, threads in SETUPS:
            print(f"setup: workers={workers} threads={threads}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            if workers is None:
                torch.set_num_threads(threads)
                executor = LocalExecutor(backend)
            else:
                executor = make_executor(
                    "ray", backend, recipe, workers=workers, threads_per_worker=threads, max_retries=0
                )
                executor.wait_for_workers()
            startup_s = time.perf_counter() - start
            try:
                # One job per worker first: the first forward pass of a process pays one-off costs.
                _timed_batch(executor, warmup[: workers or 1])
                wall, results, durations = _timed_batch(executor, jobs)
            finally:
                executor.close()
            reference = reference or results
            rows.append(
                {
                    "executor": "local" if workers is None else "ray",
                    "workers": workers or 1,
                    "threads": threads,
                    "startup_s": startup_s,
                    "wall_s": wall,
                    "per_min": 60 * len(jobs) / wall,
                    "eval_s": float(np.mean(durations)),
                    "identical": results == reference,
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    weights = sum(p.numel() * p.element_size() for p in backend.loaded.model.parameters())
    context = {"model": model, "evals": len(jobs), "weights_gb": weights / 1e9}
    return rows, context


def _rate(rows: list[dict], executor: str, workers: int, threads: int) -> float:
    key = (executor, workers, threads)
    return next(r["per_min"] for r in rows if (r["executor"], r["workers"], r["threads"]) == key)


def _row(rows: list[dict], executor: str, workers: int, threads: int) -> dict:
    return next(r for r in rows if (r["executor"], r["workers"], r["threads"]) == (executor, workers, threads))


def _contention_notes(rows: list[dict], cores: int) -> list[str]:
    """What the figures say about cores shared with other work (nothing when they do not show it)."""
    notes = []
    one, two = _row(rows, "ray", 1, 1), _row(rows, "ray", 2, 1)
    if two["eval_s"] > 1.5 * one["eval_s"]:
        notes.append(
            f"- Side by side, each of 2 single-thread workers took x{two['eval_s'] / one['eval_s']:.1f} as long per "
            "evaluation as a lone one: the two shared the slice of the cores that other work left free, so the "
            "second worker added no throughput."
        )
    if _rate(rows, "ray", 1, 2) < _rate(rows, "ray", 1, 1):
        local = _row(rows, "local", 1, 2)
        also = (
            f" (so did the in-process executor with {local['threads']} threads)"
            if local["eval_s"] > one["eval_s"]
            else ""
        )
        notes.append(
            f"- A worker with 2 torch threads ran slower than with 1{also}: with the cores partly taken by other "
            "processes, torch's threads wait for each other at every operation. Keep workers x threads at or "
            "below the cores that are really free."
        )
    return notes


def render(rows: list[dict], context: dict, load_before: tuple, load_after: tuple) -> str:
    cores = os.cpu_count()
    r11, r12 = _rate(rows, "ray", 1, 1), _rate(rows, "ray", 1, 2)
    r21, r22 = _rate(rows, "ray", 2, 1), _rate(rows, "ray", 2, 2)
    best_single = max(r["per_min"] for r in rows if r["workers"] == 1)
    best_two = max(r["per_min"] for r in rows if r["workers"] == 2)
    lines = [
        SECTION,
        "",
        f"`benchmarks/ray_scaling.py`: {context['evals']} evaluations of {context['model']} (1,024 tokens each, "
        f"4 windows of 256), the same configurations in every setup, on this machine ({cores} cores, "
        f"{platform.machine()}, torch {torch.__version__}). Ray: a local instance with {cores} CPUs, 1 CPU "
        f"reserved per worker. 'start' is the time until every worker has loaded (Ray process, model, cached "
        f"importance scores, dense reference); evaluations per minute are measured after it. Load average "
        f"(1 min) when the run started and ended: {load_before[0]:.1f} and {load_after[0]:.1f}: other work "
        f"shared the cores, so the figures are lower and noisier than on an idle machine.",
        "",
        "| executor | workers | torch threads / worker | start (s) | eval, mean (s) | evals / min | same metrics |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['executor']} | {r['workers']} | {r['threads']} | {r['startup_s']:.1f} | {r['eval_s']:.2f} "
            f"| {r['per_min']:.1f} | {'yes' if r['identical'] else 'NO'} |"
        )
    same = all(r["identical"] for r in rows)
    lines += [
        "",
        f"- Scaling efficiency, 2 workers vs 1 at 1 thread each: {r21:.1f} / (2 x {r11:.1f}) = {r21 / (2 * r11):.0%}.",
        f"- The same 2 cores as threads instead: 1 worker with 2 threads runs x{r12 / r11:.2f} the rate of 1 thread; "
        f"2 workers with 2 threads each (4 threads on {cores} cores) reach {r22:.1f} evals/min.",
        f"- Best 2-worker setup vs best single process: {best_two:.1f} vs {best_single:.1f} evals/min, "
        f"x{best_two / best_single:.2f}.",
        *_contention_notes(rows, cores),
        f"- What limits it: the {cores} cores. Workers and torch threads draw on the same cores, so no setup can "
        f"beat x{cores} over one thread, and a second worker wins only what one process leaves idle. Each worker "
        f"also loads its own float32 copy of the model ({context['weights_gb']:.2f} GB here, with 'start' seconds of "
        "loading, once per search), and the surrogate fit between batches runs in the driver while the workers wait. Workers "
        "pay off where there are more cores per worker or more machines: see docs/distributed.md.",
        "- Every setup measured bit-identical metrics for the same configurations."
        if same
        else "- WARNING: some setup measured different metrics than the first one.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of ``path`` (or append it), keeping every other section."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before = "\n".join(lines[:start]).rstrip("\n")
        after = "\n".join(lines[end:])
        new = (before + "\n\n" if before else "") + section + ("\n" + after if after else "")
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--evals", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows, context = run(args.model, args.data, args.evals, args.seed)
    section = render(rows, context, load_before, os.getloadavg())
    write_section(args.out, section)
    print(section)


if __name__ == "__main__":
    main()
