"""``search`` and ``resume``: a search run, started or continued, and the front it leaves."""

from __future__ import annotations

from pathlib import Path

import typer

from evoprune.cli.common import (
    _BACKEND,
    _echo_json,
    _fail,
    _SearchProgress,
    _use_task_data,
    err_console,
    out_console,
)
from evoprune.cli.views import _front_json, _front_view
from evoprune.engine.run import search
from evoprune.errors import EvopruneError
from evoprune.execution.executors import executor_factory
from evoprune.objectives.pareto import pareto_front
from evoprune.store import Store

# Where evaluations run: options of both `search` and `resume` (not part of a run's settings).
_RETRY_FAILED = typer.Option(
    False, "--retry-failed", help="Evaluate the run's failed rows, and rows lacking an objective, again first."
)
_EXECUTOR = typer.Option(
    "local", "--executor", help="Where real evaluations run: local (this process) or ray (parallel workers)."
)
_RAY_ADDRESS = typer.Option(
    None, "--ray-address", help="Ray cluster to join: auto or ray://HOST:10001 (default: start a local one)."
)
_WORKERS = typer.Option(
    None, "--workers", help="Ray workers, each with a copy of the model (default: as many as CPUs and memory hold)."
)
_GPUS_PER_WORKER = typer.Option(None, "--gpus-per-worker", help="GPUs each Ray worker reserves.")


def search_command(
    ctx: typer.Context,
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Model: smollm2-135m, a local directory, a .gguf file, or a hub id (required, here or in --config).",
    ),
    data: str = typer.Option(
        "builtin",
        "--data",
        "-d",
        help="Evaluation text: builtin, a .txt/.jsonl/.parquet file, wikitext2, ptb, c4 or hf:NAME[:CONFIG[:SPLIT]].",
    ),
    store: Path = typer.Option(
        None,
        "--store",
        "-s",
        help="SQLite pair store; re-running continues the search in it (required, here or in --config).",
    ),
    evals: int = typer.Option(
        None,
        "--evals",
        "-n",
        help="Total real evaluations for this search, initial design included (required, here or in --config).",
    ),
    config: Path = typer.Option(
        None,
        "--config",
        help="TOML file with any of these options (json = true for --json), and the settings without a flag: "
        "pop_size and generations (the inner search), batch_size (windows per forward pass), attn_levels (0: "
        "one per head), kl_top_k (KL's top tokens), ladder_windows (disjoint or nested); flags override it.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed and store contents give the same search."),
    method: str = typer.Option(
        "evoprune",
        "--method",
        help="evoprune, or a baseline: uniform, mlp-only, flap, owl, random, predictor-rank, ga.",
    ),
    objectives: str = typer.Option(
        "ppl,params",
        "--objectives",
        help="Two or three of ppl, kl, acc:TASK, acc_norm:TASK, params, flops, memory, latency.",
    ),
    max_params: float = typer.Option(
        None, "--max-params", help="Parameter budget: a kept fraction (0.7) or a count (90e6)."
    ),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory budget (weights + KV cache), e.g. 2GB."),
    max_latency_ms: float = typer.Option(
        None,
        "--max-latency-ms",
        help="Latency budget (ms): a forward pass of 256 tokens, batch 1, on this machine (its latency table).",
    ),
    min_params: float = typer.Option(0.5, "--min-params", help="Smallest kept parameter fraction to search."),
    init: int = typer.Option(8, "--init", help="Size of the initial design (dense, structured and space-filling)."),
    batch: int = typer.Option(4, "--batch", help="Real evaluations per active-learning round."),
    surrogate: str = typer.Option(
        "additive", "--surrogate", help="Surrogate by registered name, options as NAME:key=value (additive:link=auto)."
    ),
    acquisition: str = typer.Option("uncertainty", "--acquisition", help="uncertainty, lcb, ehvi or greedy."),
    algorithm: str = typer.Option("nsga2", "--algorithm", help="Inner search: nsga2, nsga3, agemoea or smsemoa."),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Narrow level ranges the surrogate finds harmful."),
    focus: float = typer.Option(
        0.05, "--focus", help="With a budget, acquire only within this relative distance under it (0: whole front)."
    ),
    local_share: float = typer.Option(
        0.5,
        "--local-share",
        help="With a budget, share of each batch spent on level swaps around the best configurations (0: off).",
    ),
    screen_tokens: int = typer.Option(
        0, "--screen-tokens", help="Multi-fidelity: screen candidates on this many tokens first (0: off)."
    ),
    screen_factor: int = typer.Option(
        3, "--screen-factor", help="Candidates screened per full evaluation when --screen-tokens is on."
    ),
    warm_start: bool = typer.Option(
        True, "--warm-start/--no-warm-start", help="Reuse pairs of earlier runs of the same problem in the store."
    ),
    max_ppl_ratio: float = typer.Option(
        20.0,
        "--max-ppl-ratio",
        help="Only spend evaluations on candidates predicted within this factor of the best perplexity; for kl, "
        "within log(factor) nats/token of the best KL (the same cross-entropy increase); acc objectives: no filter.",
    ),
    task_limit: int = typer.Option(100, "--task-limit", help="Questions per task for acc:TASK objectives."),
    task_data: str | None = typer.Option(
        None,
        "--task-data",
        help="Folder of the shipped tasks' data (arc_easy/, mmlu/dev/; default: $EVOPRUNE_TASK_DATA, else the hub).",
    ),
    baseline_skip_first: int = typer.Option(
        None, "--baseline-skip-first", help="uniform: first layers left dense (default: 4 of 32, scaled to depth)."
    ),
    baseline_skip_last: int = typer.Option(
        None, "--baseline-skip-last", help="uniform: last layers left dense (default: 2 of 32, scaled to depth)."
    ),
    baseline_grid: str | None = typer.Option(
        None,
        "--baseline-grid",
        help="uniform, mlp-only, flap: level grid, fine (one channel and one head a level, so they land within 1% "
        "under a budget) or given (--mlp-levels, attn_levels); default: fine unless a grid option is given.",
    ),
    criterion: str = typer.Option(
        _BACKEND.criterion,
        "--importance",
        help="Importance criterion: wanda, wanda-sp, flap, magnitude, taylor or obs.",
    ),
    compensation: str = typer.Option(
        _BACKEND.compensation,
        "--compensation",
        help="Make up for removed units: none, bias (FLAP: their mean contribution) or refit (least squares).",
    ),
    calib_data: str = typer.Option(
        None, "--calib-data", help="Text for importance scoring (default: --data, windows disjoint from evaluation)."
    ),
    eval_tokens: int = typer.Option(
        _BACKEND.eval_tokens, "--eval-tokens", help="Tokens of the first rung: every real evaluation."
    ),
    ladder: str = typer.Option(
        _BACKEND.ladder,
        "--ladder",
        help="Higher rungs (token counts, e.g. 8192 or 4096,16384; auto: 4 x --eval-tokens; none) for promising ones.",
    ),
    validation_tokens: int = typer.Option(
        None,
        "--validation-tokens",
        help="Tokens of the validation split the picks are reported on (default: 2 x --eval-tokens; 0: none).",
    ),
    calib_tokens: int = typer.Option(_BACKEND.calib_tokens, "--calib-tokens", help="Tokens for importance scoring."),
    seq_len: int = typer.Option(_BACKEND.seq_len, "--seq-len", help="Tokens per window."),
    device: str = typer.Option("cpu", "--device", help="Where evaluation runs: cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights and activations: float32, bfloat16 or float16."),
    head_unit: str = typer.Option(
        "query_head", "--head-unit", help="Attention pruning unit under GQA: query_head or kv_group."
    ),
    mlp_levels: int = typer.Option(
        8,
        "--mlp-levels",
        help="Number of MLP pruning steps (the top one removes the MLP); 0: one per --mlp-multiple channels. "
        "Given, the one-shot baselines use it too (see --baseline-grid).",
    ),
    mlp_multiple: int = typer.Option(1, "--mlp-multiple", help="Round kept MLP widths to a multiple (e.g. 64)."),
    executor: str = _EXECUTOR,
    ray_address: str = _RAY_ADDRESS,
    workers: int = _WORKERS,
    gpus_per_worker: float = _GPUS_PER_WORKER,
    retry_failed: bool = _RETRY_FAILED,
    as_json: bool = typer.Option(False, "--json", help="Print the resulting front as JSON instead of a table."),
) -> None:
    """Search per-layer pruning levels for --model, spending --evals real evaluations; the same command continues it."""
    from evoprune.engine.config import keep_given_grid, merge_options, read_config, settings_from_options

    cli_values = dict(ctx.params)
    explicit = {k for k in cli_values if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    try:
        from_config = read_config(config) if config else {}
        options = keep_given_grid(merge_options(cli_values, explicit, from_config), explicit | set(from_config))
        if not options.get("model") or not options.get("store"):
            raise EvopruneError("--model and --store are required (on the command line or in --config)")
        settings = settings_from_options(options)
        model, data, store = options["model"], options["data"], Path(options["store"])
        executor, executor_options = _executor_choice(options)
        _use_task_data(options.get("task_data"))
        with _SearchProgress(err_console) as progress:
            result = search(
                model,
                data,
                str(store),
                settings,
                progress=progress,
                executor=executor,
                executor_options=executor_options,
                retry_failed=bool(options.get("retry_failed")),
            )
    except EvopruneError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(store, "run the same command to continue")
    _print_search_result(result, store, bool(options.get("as_json")))


def resume_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    evals: int | None = typer.Option(None, "--evals", "-n", help="New total budget (default: the run's own)."),
    device: str | None = typer.Option(
        None,
        "--device",
        help="Where evaluations run now: cpu, cuda, cuda:N or mps (default: the run's; not part of what it measures).",
    ),
    task_data: str | None = typer.Option(
        None,
        "--task-data",
        help="Folder of the shipped tasks' data (arc_easy/, mmlu/dev/; default: $EVOPRUNE_TASK_DATA, else the hub).",
    ),
    retry_failed: bool = _RETRY_FAILED,
    executor: str = _EXECUTOR,
    ray_address: str = _RAY_ADDRESS,
    workers: int = _WORKERS,
    gpus_per_worker: float = _GPUS_PER_WORKER,
    as_json: bool = typer.Option(False, "--json", help="Print the resulting front as JSON."),
) -> None:
    """Continue a stored run with its recorded settings: nothing but the store is needed.

    Where its evaluations run is not a setting of the run: pass --device to continue on another
    device, --executor ray to continue on Ray."""
    from dataclasses import replace

    from evoprune.engine.config import settings_from_run

    r = None  # the run, once the store has given it: an error before that has no path of it to hint at
    try:
        with Store.open_existing(store, readonly=True) as st:
            r = st.get_run(run)
            done = len(st.evaluations(r.id))
        settings = settings_from_run(r.settings)
        if evals is not None:
            if 0 < evals < done:  # a total, not a count of more: 5 on a run of 10 would do nothing
                raise EvopruneError(
                    f"--evals is the new total and run {r.id} already has {done} evaluations: "
                    f"pass a larger total to continue it (e.g. --evals {done + evals} for {evals} more)"
                )
            settings = replace(settings, evals=evals)
        if device is not None:  # excluded from identity(): the same run, measured the same way
            settings = replace(settings, backend=replace(settings.backend, device=device))
        runner, runner_options = _executor_choice(
            dict(executor=executor, ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
        )
        _use_task_data(task_data)
        with _SearchProgress(err_console) as progress:
            result = search(r.model, r.data, str(store), settings, progress=progress, retry_failed=retry_failed,
                            executor=runner, executor_options=runner_options)  # fmt: skip
    except EvopruneError as exc:
        _fail(_with_relative_path_hint(str(exc), r))
    except KeyboardInterrupt:
        _interrupted(store, "run 'evoprune resume' to continue")
    _print_search_result(result, store, as_json)


def _with_relative_path_hint(message: str, run) -> str:
    """``message``, and where it names a relative ``--model`` / ``--data`` of ``run``, where to
    resume it from: runs stored before 2026-12-02 kept local paths as given."""
    if run is None:
        return message
    for spec in (run.model, run.data):
        if spec and f"'{spec}'" in message and not Path(spec).expanduser().is_absolute():
            return (
                f"{message} (if '{spec}' is a path, run {run.id} recorded it relative to the folder its search "
                "was started in: run 'evoprune resume' from there)"
            )
    return message


def _executor_choice(options: dict) -> tuple[str, dict]:
    """``(executor name, executor options)`` from the command's options; raises EvopruneError for
    Ray options without ``--executor ray``, an unknown executor or a missing Ray (before any
    model loads)."""
    executor = options.get("executor") or "local"
    ray_options = {"address": "ray_address", "workers": "workers", "gpus_per_worker": "gpus_per_worker"}
    executor_options = {k: options[o] for k, o in ray_options.items() if options.get(o) is not None}
    if executor != "ray" and executor_options:
        raise EvopruneError("--ray-address, --workers and --gpus-per-worker need --executor ray")
    executor_factory(executor)
    return executor, executor_options


def _interrupted(store: Path | None, again: str) -> None:
    """Exit 130 after Ctrl-C, saying what the store holds: the search creates it only once the
    model, data and budget are checked, so an early Ctrl-C leaves none behind."""
    if store is not None and Path(store).expanduser().exists():
        _fail(f"interrupted: every finished evaluation is in '{store}'; {again}", 130)
    where = f": '{store}' was not created" if store is not None else ""
    _fail(f"interrupted before anything was stored{where}; run the same command to start the search", 130)


def _print_search_result(result, store: Path, as_json: bool) -> None:
    with Store.open_existing(store, readonly=True) as st:
        points = pareto_front(st, result.run)
    if as_json:
        extra = {"stop_reason": result.stop_reason, "notes": list(result.notes)}
        _echo_json({**_front_json(result.run, points), **extra})
        return
    ok = sum(e.status == "ok" for e in result.evaluations)
    failed = sum(e.status == "failed" for e in result.evaluations)
    err_console.print(
        f"run {result.run.id}: {ok} ok and {failed} failed evaluations in '{store}' "
        f"({result.new_evaluations} new in this call)"
    )
    for note in (*result.notes, result.stop_reason):
        if note:
            err_console.print(f"note: {note}")
    out_console.print(_front_view(result.run, points, out_console.width))
