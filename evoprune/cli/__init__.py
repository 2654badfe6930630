"""The ``evoprune`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import typer
from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from evoprune.backend.pruner import BackendSettings
from evoprune.compare import DEFAULT_METHODS
from evoprune.errors import EvopruneError
from evoprune.executors import executor_factory
from evoprune.pareto import ParetoPoint, first_rung_tokens, pareto_front, top_rung
from evoprune.search import SearchSettings, search
from evoprune.store import Store

app = typer.Typer(
    name="evoprune",
    help="Decide how much to prune in each layer of a causal LM, with a surrogate-assisted multi-objective search.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
out_console = Console()
_BACKEND = BackendSettings()  # the defaults the options show


def _fail(message: str, code: int = 2) -> None:
    # Plain echo, not rich: a rich console would wrap a long message over several lines.
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _use_task_data(task_data: str | None) -> None:
    """Point shipped tasks at ``--task-data`` (checked: EvopruneError when it is not a folder).

    Through the environment, so every evaluator of the command, and Ray workers (which forward
    it), read the same folder.
    """
    if task_data is not None:
        from evoprune.tasks.spec import TASK_DATA_ENV, task_data_dir

        os.environ[TASK_DATA_ENV] = str(task_data_dir(task_data))


def _figure_text(metrics: dict | None, name: str = "ppl") -> str:
    """``17.47 ±0.31`` (standard error when recorded), or ``-``."""
    if not metrics or name not in metrics:
        return "-"
    se = metrics.get(f"{name}_se")
    return f"{metrics[name]:.2f}" + (f" ±{se:.2f}" if se is not None else "")


def _tokens_text(tokens: int | None) -> str:
    if tokens is None:
        return "-"
    return f"{tokens / 1024:g}k" if tokens % 256 == 0 and tokens >= 1024 else str(tokens)


class FoldingTable(Table):
    """A rich table whose cells and headers wrap onto more lines instead of being cut with an
    ellipsis: a narrow terminal must never hide a figure or a level."""

    def add_column(self, *args, overflow: str = "fold", **kwargs) -> None:
        super().add_column(*args, overflow=overflow, **kwargs)


LAYERS_PER_BLOCK = 10
_LEVEL_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _level_tokens(levels: list[int], top: int) -> list[str]:
    """One token per layer: one character (0-9, then a-z for 10-35) when ``top`` allows, else the
    number right-aligned to the width of ``top``."""
    if top < len(_LEVEL_SYMBOLS):
        return [_LEVEL_SYMBOLS[v] for v in levels]
    return [str(v).rjust(len(str(top))) for v in levels]


def _allocation_lines(levels: list[int], top: int, blocks_per_line: int) -> list[str]:
    """``levels`` (one per layer, layer 0 first) in blocks of ``LAYERS_PER_BLOCK`` layers,
    ``blocks_per_line`` blocks a line; every level is there, whatever the depth."""
    tokens = _level_tokens(levels, top)
    inner, outer = ("", " ") if len(tokens[0] if tokens else "0") == 1 else (" ", "  ")
    blocks = [inner.join(tokens[i : i + LAYERS_PER_BLOCK]) for i in range(0, len(tokens), LAYERS_PER_BLOCK)]
    return [outer.join(blocks[i : i + blocks_per_line]) for i in range(0, len(blocks), blocks_per_line)] or [""]


def _allocation_ruler(num_layers: int, top: int, blocks_per_line: int) -> list[str]:
    """The header over :func:`_allocation_lines`: the first layer of each block, over that block."""
    token = len(_level_tokens([0], top)[0])
    inner, outer = ("", " ") if token == 1 else (" ", "  ")
    width = LAYERS_PER_BLOCK * token + (LAYERS_PER_BLOCK - 1) * len(inner)
    starts = [str(s).ljust(width) for s in range(0, num_layers, LAYERS_PER_BLOCK)]
    return [outer.join(starts[i : i + blocks_per_line]).rstrip() for i in range(0, len(starts), blocks_per_line)]


def _allocation_table(points: list[ParetoPoint], width: int, space: dict | None = None) -> Table:
    """Every front member's whole per-layer allocation: attention over MLP, so one layer's two
    levels sit in one column, in blocks of ten layers wrapped to fit ``width`` columns."""
    num_layers = max((len(p.levels["attn"]) for p in points), default=0)
    top = max((max(p.levels["attn"] + p.levels["mlp"], default=0) for p in points), default=0)
    if space:
        top = max(top, space.get("attn_levels", 0), space.get("mlp_levels", 0))
    token = len(_level_tokens([0], top)[0])
    block = LAYERS_PER_BLOCK * token + (LAYERS_PER_BLOCK - 1) * (token > 1)
    gap = 1 if token == 1 else 2
    id_width = max((len(str(p.id)) for p in points), default=2)
    # Columns id and sub-layer, their padding and separators; what is left holds the levels.
    room = width - max(id_width, 2) - len("attention") - 8
    per_line = max(1, (room + gap) // (block + gap))
    table = FoldingTable(box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", caption_justify="left")
    table.title = "Per-layer levels of the front"
    table.add_column("id", justify="right")
    table.add_column("sub-layer")
    table.add_column("\n".join(_allocation_ruler(num_layers, top, per_line)))
    for p in points:
        table.add_row(str(p.id), "attention", "\n".join(_allocation_lines(p.levels["attn"], top, per_line)))
        table.add_row("", "MLP", "\n".join(_allocation_lines(p.levels["mlp"], top, per_line)))
    what = "one character per layer" if token == 1 else "one number per layer"
    legend = "; 10-35 are a-z" if token == 1 and top >= 10 else ""
    removed = (
        f", attention {space['attn_levels']} and MLP {space['mlp_levels']} remove it"
        if space and "attn_levels" in space and "mlp_levels" in space
        else ", the top level removes it"
    )
    table.caption = (
        f"{what}, layer 0 first, in blocks of {LAYERS_PER_BLOCK} under the number of their first layer{legend}; "
        f"level 0 leaves a sub-layer untouched{removed}"
    )
    return table


def _pareto_table(points: list[ParetoPoint], title: str) -> Table:
    """The front's figures, one row per member (its allocation is :func:`_allocation_table`)."""
    table = FoldingTable(title=title, title_justify="left")
    for col, justify in (
        ("id", "right"),
        ("params", "right"),
        ("kept", "right"),
        ("ppl", "right"),
        ("tokens", "right"),
        ("valid ppl", "right"),
        ("found", "left"),
    ):
        table.add_column(col, justify=justify)
    for p in points:
        fidelity = p.fidelity or {"tokens": None, "metrics": p.metrics}
        table.add_row(
            str(p.id),
            f"{p.params / 1e6:.2f}M",
            f"{100 * p.params_fraction:.1f}%",
            _figure_text(fidelity["metrics"]),
            _tokens_text(fidelity["tokens"]),
            _figure_text(p.validation["metrics"]) if p.validation else "-",
            "design" if p.origin == "design" else f"round {p.round}",
        )
    table.caption = (
        "ppl: on the highest rung of the fidelity ladder each configuration reached (tokens), ± standard error; "
        "valid ppl: on the validation split, never used to choose"
    )
    table.caption_justify = "left"
    return table


def _front_view(run, points: list[ParetoPoint], width: int) -> Group:
    """What ``pareto`` and ``search`` print: the front's figures, then every member's whole
    per-layer allocation, laid out for a terminal ``width`` columns wide."""
    title = f"Pareto front of run {run.id} ({run.model})"
    return Group(_pareto_table(points, title), Text(""), _allocation_table(points, width, run.space))


class _SearchProgress:
    """Renders engine events as a rich progress display on stderr."""

    def __init__(self, console: Console):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
        )
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.task is not None:
            self.progress.stop()

    def __call__(self, event: str, **info) -> None:
        # Started on the first event, so input rejected up front never draws a progress bar.
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("preparing", total=None, status="")
        if event == "phase":
            self.progress.update(self.task, description=info["name"])
        elif event == "start":
            self.progress.update(self.task, description="evaluating", total=info["total"], completed=info["done"])
        elif event == "batch":
            where = "initial design" if info["origin"] == "design" else f"round {info['round']}"
            self.progress.update(self.task, description=f"evaluating {info['size']} ({where})")
        elif event == "eval_done":
            ev = info["evaluation"]
            if ev.status == "ok":
                status = f"#{ev.id}: {100 * ev.params_fraction:.1f}% params, ppl {ev.metrics['ppl']:.2f}"
            else:
                status = f"[red]#{ev.id} failed: {ev.error}"
            self.progress.update(self.task, advance=1, status=status)


@app.command("search")
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
    config: Path = typer.Option(None, "--config", help="TOML file with any of these options; flags override it."),
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
        None, "--max-latency-ms", help="Latency budget per forward pass, from the measured latency table."
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
        20.0, "--max-ppl-ratio", help="Only spend evaluations on candidates predicted within this factor of the best."
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
    criterion: str = typer.Option(
        _BACKEND.criterion, "--importance", help="Importance criterion: wanda, wanda-sp, flap, magnitude or taylor."
    ),
    compensation: str = typer.Option(
        _BACKEND.compensation, "--compensation", help="Replace removed units' mean contribution: none or bias (FLAP)."
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
        help="Number of MLP pruning steps (the top one removes the MLP); 0: one per --mlp-multiple channels.",
    ),
    mlp_multiple: int = typer.Option(1, "--mlp-multiple", help="Round kept MLP widths to a multiple (e.g. 64)."),
    executor: str = typer.Option(
        "local", "--executor", help="Where real evaluations run: local (this process) or ray (parallel workers)."
    ),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Ray cluster to join: auto or ray://HOST:10001 (default: start a local one)."
    ),
    workers: int = typer.Option(
        None, "--workers", help="Ray workers, each with a copy of the model (default: as many as CPUs and memory hold)."
    ),
    gpus_per_worker: float = typer.Option(None, "--gpus-per-worker", help="GPUs each Ray worker reserves."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Evaluate the run's failed rows again before going on (after fixing a fault)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the resulting front as JSON instead of a table."),
) -> None:
    """Search per-layer pruning levels for --model, spending --evals real evaluations; the same command continues it."""
    from evoprune.config import merge_options, read_config, settings_from_options

    cli_values = dict(ctx.params)
    explicit = {k for k in cli_values if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    try:
        options = merge_options(cli_values, explicit, read_config(config) if config else {})
        if not options.get("model") or not options.get("store"):
            raise EvopruneError("--model and --store are required (on the command line or in --config)")
        settings = settings_from_options(options)
        model, data, store = options["model"], options["data"], Path(options["store"])
        executor = options.get("executor") or "local"
        ray_options = {"address": "ray_address", "workers": "workers", "gpus_per_worker": "gpus_per_worker"}
        executor_options = {k: options[o] for k, o in ray_options.items() if options.get(o) is not None}
        if executor != "ray" and executor_options:
            raise EvopruneError("--ray-address, --workers and --gpus-per-worker need --executor ray")
        executor_factory(executor)  # a missing Ray or an unknown name fails here, before the model loads
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
        _fail(f"interrupted: every finished evaluation is in '{store}'; run the same command to continue", 130)
    _print_search_result(result, store, as_json)


@app.command("resume")
def resume_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    evals: int | None = typer.Option(None, "--evals", "-n", help="New total budget (default: the run's own)."),
    task_data: str | None = typer.Option(
        None,
        "--task-data",
        help="Folder of the shipped tasks' data (arc_easy/, mmlu/dev/; default: $EVOPRUNE_TASK_DATA, else the hub).",
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Evaluate the run's failed rows again before going on (after fixing a fault)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the resulting front as JSON."),
) -> None:
    """Continue a stored run with its recorded settings; nothing but the store is needed."""
    from dataclasses import replace

    from evoprune.config import settings_from_run

    try:
        with Store.open_existing(store, readonly=True) as st:
            r = st.get_run(run)
        settings = settings_from_run(r.settings)
        if evals is not None:
            settings = replace(settings, evals=evals)
        _use_task_data(task_data)
        with _SearchProgress(err_console) as progress:
            result = search(r.model, r.data, str(store), settings, progress=progress, retry_failed=retry_failed)
    except EvopruneError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail(f"interrupted: every finished evaluation is in '{store}'; run 'evoprune resume' to continue", 130)
    _print_search_result(result, store, as_json)


def _print_search_result(result, store: Path, as_json: bool) -> None:
    with Store.open_existing(store, readonly=True) as st:
        points = pareto_front(st, result.run)
    if as_json:
        extra = {"stop_reason": result.stop_reason, "notes": list(result.notes)}
        typer.echo(json.dumps({**_front_json(result.run, points), **extra}, indent=2))
        return
    ok = sum(e.status == "ok" for e in result.evaluations)
    failed = sum(e.status == "failed" for e in result.evaluations)
    err_console.print(
        f"run {result.run.id}: {ok} ok and {failed} failed evaluations in '{store}' "
        f"({result.new_evaluations} new in this call)"
    )
    for note in (*result.notes, result.stop_reason):
        if note:
            err_console.print(f"note: {note}", soft_wrap=True)
    out_console.print(_front_view(result.run, points, out_console.width))


def _front_json(run, points: list[ParetoPoint]) -> dict:
    return {
        "run": run.id,
        "model": run.model,
        "data": run.data,
        "dense_params": run.dense_params,
        "points": [p.to_dict() for p in points],
    }


@app.command("pareto")
def pareto_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: {run, model, data, dense_params, points: [{id, params, params_fraction, metrics, "
        "fidelity, validation, levels, origin, round}]}.",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the front (PNG): evaluated points, knee, budget."),
    budget: float | None = typer.Option(
        None, "--max-params", help="With --plot: draw a budget line there (kept fraction or count)."
    ),
) -> None:
    """Show the non-dominated, really evaluated configurations (perplexity vs parameters)."""
    try:
        if plot is not None and not plot.parent.is_dir():
            raise EvopruneError(f"--plot '{plot}': directory '{plot.parent}' does not exist")
        with Store.open_existing(store, readonly=True) as st:
            r = st.get_run(run)
            points = pareto_front(st, r)
            if plot is not None:
                from evoprune.plots import plot_front

                lines = [budget if budget <= 1 else budget / r.dense_params] if budget else None
                plot_front(st, r, plot, budget_lines=lines)
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(_front_json(r, points), indent=2))
    else:
        out_console.print(_front_view(r, points, out_console.width))


_EXPORT_HELP = (
    "Write a configuration as a physically pruned model that plain transformers loads: one a search "
    "evaluated (--store, --pick), or one you give (--model, --config).\n\n"
    "--config is an evaluation id of --store, a plan.json (or the export directory holding it), "
    "levels:ATTN/MLP (one attention and one MLP level per layer, e.g. levels:0,1,1,0/2,2,3,0, or one digit "
    "per layer as 'evoprune pareto' prints them: levels:0110/2230) or uniform:R. An evaluation or a plan "
    "brings the importance settings it was found with; levels: and uniform:R take them from the options "
    "below, else from the latest run of the model in --store, else the defaults on --data."
)


@app.command("export", help=_EXPORT_HELP)
def export_command(
    store: Path | None = typer.Option(None, "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the pruned model to."),
    pick: str | None = typer.Option(
        None, "--pick", help="Evaluation id, knee (default), or best (under --max-params)."
    ),
    max_params: float | None = typer.Option(
        None, "--max-params", help="Budget for --pick best (kept fraction or count)."
    ),
    run: int | None = typer.Option(None, "--run", help="Run id for --pick (default: the latest run)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model --config prunes (as for 'search')."),
    config: str | None = typer.Option(
        None, "--config", "-c", help="Evaluation id, plan.json, levels:ATTN/MLP or uniform:R (with --model)."
    ),
    data: str | None = typer.Option(None, "--data", "-d", help="Text searched on (levels:, uniform:R, old plans)."),
    criterion: str | None = typer.Option(None, "--importance", help="levels:/uniform:R: importance criterion."),
    compensation: str | None = typer.Option(None, "--compensation", help="levels:/uniform:R: none or bias."),
    calib_data: str | None = typer.Option(None, "--calib-data", help="levels:/uniform:R: other text for importance."),
    calib_tokens: int | None = typer.Option(None, "--calib-tokens", help="levels:/uniform:R: importance tokens."),
    eval_tokens: int | None = typer.Option(None, "--eval-tokens", help="levels:/uniform:R: the search's first rung."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="levels:/uniform:R: tokens per window."),
    head_unit: str | None = typer.Option(None, "--head-unit", help="levels:/uniform:R: query_head or kv_group."),
    mlp_levels: int | None = typer.Option(None, "--mlp-levels", help="levels:/uniform:R: MLP levels of the grid."),
    mlp_multiple: int | None = typer.Option(None, "--mlp-multiple", help="levels:/uniform:R: MLP width multiple."),
    dtype: str | None = typer.Option(None, "--dtype", help="With --model: float32, bfloat16 or float16."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out directory."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    from dataclasses import replace

    from evoprune.export import export_config, export_from_store

    given = {
        "criterion": criterion, "compensation": compensation, "calib_data": calib_data, "calib_tokens": calib_tokens,
        "eval_tokens": eval_tokens, "seq_len": seq_len, "head_unit": head_unit, "mlp_levels": mlp_levels,
        "mlp_multiple": mlp_multiple,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    try:
        if config is not None or model is not None:
            if model is None or config is None:
                raise EvopruneError(
                    "--model and --config go together: the base model and the configuration to cut out of it"
                )
            if pick is not None or max_params is not None or run is not None:
                raise EvopruneError(
                    "--pick, --max-params and --run choose from a store's run; --config names the configuration "
                    "itself: pass one or the other"
                )
            settings = replace(_BACKEND, **given) if given else None
            with _SearchProgress(err_console) as progress:
                result = export_config(
                    model, config, out, store=store, data=data, settings=settings, dtype=dtype, force=force,
                    progress=progress,
                )  # fmt: skip
            what = f"--config {config}"
        else:
            if store is None:
                raise EvopruneError(
                    "pass --store (and --pick) to export a searched configuration, "
                    "or --model and --config to export a given one"
                )
            if given or data is not None or dtype is not None:
                raise EvopruneError(
                    "--data, --dtype and the importance and grid options go with --model and --config; "
                    "an export from --store uses its run's"
                )
            with _SearchProgress(err_console) as progress:
                result = export_from_store(
                    store, out, pick or "knee", max_params=max_params, run=run, force=force, progress=progress
                )
            what = f"evaluation {result.evaluation}"
    except EvopruneError as exc:
        _fail(str(exc))
    summary = {
        "out": str(result.path),
        "evaluation": result.evaluation,
        "config": config,
        "params": result.params,
        "params_fraction": result.params_fraction,
        "metrics": result.metrics,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        ppl = f", first-rung ppl {result.metrics['ppl']:.2f}" if result.metrics and "ppl" in result.metrics else ""
        out_console.print(
            f"wrote {what} ({result.params / 1e6:.2f}M parameters, "
            f"{100 * result.params_fraction:.1f}% kept{ppl}) to {out}\n"
            f"load it with AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True) "
            f"or evoprune.load_pruned('{out}')"
        )


@app.command("measure")
def measure_command(
    model: str = typer.Option(..., "--model", "-m", help="An 'evoprune export' directory, or any supported model."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per forward pass."),
    batch: int = typer.Option(1, "--batch", help="Sequences per forward pass."),
    repeats: int = typer.Option(15, "--repeats", help="Timed forward passes (the median is reported)."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, bfloat16 or float16 (default: the export's own, else float32)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Time a real model's forward pass and weigh it; for exports, next to the cost model's prediction."""
    from evoprune.measure import measure

    if min(seq_len, batch, repeats) < 1:
        _fail("--seq-len, --batch and --repeats must be at least 1")
    try:
        with _SearchProgress(err_console) as progress:
            progress("phase", name=f"measuring {model}")
            report = measure(model, seq_len=seq_len, batch=batch, repeats=repeats, dtype=dtype)
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = FoldingTable(title=f"{model}: forward of {batch} x {seq_len} tokens", title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("predicted", justify="right")
    pred = report.get("predicted", {})
    table.add_row("parameters", f"{report['params'] / 1e6:.2f}M", _fmt_scaled(pred.get("params"), 1e6, "M"))
    table.add_row("weight memory", f"{report['weight_bytes'] / 2**20:.1f} MiB",
                  _fmt_scaled(pred.get("weight_bytes"), 2**20, " MiB", 1))  # fmt: skip
    table.add_row("latency", f"{report['latency_ms']:.1f} ms", _fmt_scaled(pred.get("latency_ms"), 1, " ms", 1))
    out_console.print(table)


def _fmt_scaled(value, scale: float, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}{unit}"


@app.command("compare")
def compare_command(
    model: str = typer.Option(..., "--model", "-m", help="Model spec, as for 'evoprune search'."),
    data: str = typer.Option("builtin", "--data", "-d", help="Evaluation text, as for 'evoprune search'."),
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store (one run per method)."),
    evals: int = typer.Option(..., "--evals", "-n", help="Real evaluations per method."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods", help="Comma-separated methods to run."),
    max_params: float = typer.Option(None, "--max-params", help="Parameter budget (kept fraction or count)."),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory budget, e.g. 2GB."),
    max_latency_ms: float = typer.Option(None, "--max-latency-ms", help="Latency budget (ms per forward)."),
    min_params: float = typer.Option(0.5, "--min-params", help="Smallest kept parameter fraction to search."),
    seed: int = typer.Option(0, "--seed", help="Random seed shared by every method."),
    baseline_skip_first: int = typer.Option(
        None, "--baseline-skip-first", help="uniform: first layers left dense (default: 4 of 32, scaled)."
    ),
    baseline_skip_last: int = typer.Option(
        None, "--baseline-skip-last", help="uniform: last layers left dense (default: 2 of 32, scaled)."
    ),
    eval_tokens: int = typer.Option(_BACKEND.eval_tokens, "--eval-tokens", help="Tokens per real evaluation."),
    calib_tokens: int = typer.Option(_BACKEND.calib_tokens, "--calib-tokens", help="Tokens for importance scoring."),
    seq_len: int = typer.Option(_BACKEND.seq_len, "--seq-len", help="Tokens per window."),
    mlp_levels: int = typer.Option(8, "--mlp-levels", help="Number of MLP pruning steps."),
    device: str = typer.Option("cpu", "--device", help="Where evaluation runs: cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights and activations: float32, bfloat16 or float16."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Run evoprune and the baselines at the same budget of real evaluations; print one table."""
    from evoprune.compare import compare

    settings = SearchSettings(
        evals=evals, seed=seed, max_params=max_params, max_memory=max_memory, max_latency_ms=max_latency_ms,
        min_params=min_params, baseline_skip_first=baseline_skip_first, baseline_skip_last=baseline_skip_last,
        backend=BackendSettings(eval_tokens=eval_tokens, calib_tokens=calib_tokens, seq_len=seq_len,
                                mlp_levels=mlp_levels, device=device, dtype=dtype),
    )  # fmt: skip
    try:
        with _SearchProgress(err_console) as progress:
            rows = compare(model, data, str(store), settings, [m.strip() for m in methods.split(",")], progress)
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    table = FoldingTable(
        title=f"methods at {evals} real evaluations (budget: {max_params or 'none'})", title_justify="left"
    )
    for col in ("method", "run", "evaluations", "best ppl", "kept params", "eval s", "wall s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in sorted(rows, key=lambda r: r.best_value if r.best_value is not None else float("inf")):
        table.add_row(
            r.method, str(r.run_id), str(r.evaluations),
            "-" if r.best_value is None else f"{r.best_value:.2f}",
            "-" if r.best_params_fraction is None else f"{r.best_params_fraction:.3f}",
            f"{r.eval_s:.0f}", "-" if r.wall_s is None else f"{r.wall_s:.0f}",
        )  # fmt: skip
    out_console.print(table)


@app.command("plan")
def plan_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    max_params: float = typer.Option(None, "--max-params", help="Parameter budget (kept fraction or count)."),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory budget (weights + KV cache), e.g. 2GB."),
    max_latency_ms: float = typer.Option(None, "--max-latency-ms", help="Latency budget (ms per forward)."),
    spend: int = typer.Option(0, "--spend", help="First spend this many more evaluations focused on the budget."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The best really evaluated configuration under a budget, with its per-layer allocation."""
    from evoprune.objectives import Budget
    from evoprune.plan import plan

    if spend < 0:
        _fail(f"--spend must be 0 or more, got {spend}")
    try:
        with _SearchProgress(err_console) as progress:
            result = plan(str(store), Budget(max_params, max_memory, max_latency_ms), spend, run, progress)
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    e = result.evaluation
    pred = e.predicted or {}
    predicted_ppl = f"{math.exp(pred['ppl']):.2f}" if "ppl" in pred else "-"
    tokens, top = top_rung(e)
    measured = f"measured ppl {_figure_text(top)} on {_tokens_text(tokens or first_rung_tokens(result.run))} tokens"
    if e.validation:
        measured += f", {_figure_text(e.validation['metrics'])} on the validation split"
    out_console.print(
        f"evaluation #{e.id}: {e.params / 1e6:.2f}M parameters ({e.params_fraction:.1%} kept), "
        f"{measured} (predicted before evaluation: {predicted_ppl}), "
        f"memory {result.cost['memory_bytes'] / 2**20:.0f} MiB at 2048 tokens of KV cache; "
        f"best of {result.candidates} evaluated configurations under the budget"
        + (f", {result.spent} evaluated now" if result.spent else "")
    )
    for r in result.recoveries:
        out_console.print(
            f"recovered ({r.method}, {r.steps} steps) into {r.out}: perplexity {_figure_text(r.before)} before, "
            f"{_figure_text(r.after)} after, KL to the dense model {_kl_text(r.before)} -> {_kl_text(r.after)}, "
            f"on the first {_tokens_text(r.details.get('heldout_tokens'))} tokens of {r.data} (held out from training)"
        )
    table = FoldingTable(title="per-layer allocation", title_justify="left")
    for col in ("layer", "query heads", "KV heads", "MLP channels"):
        table.add_column(col, justify="right")
    for layer in result.layers:
        table.add_row(*(str(layer[k]) for k in ("layer", "q_heads", "kv_heads", "mlp")))
    out_console.print(table)


@app.command("report")
def report_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for index.html."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
) -> None:
    """Write a self-contained HTML report: front, per-layer levels, predictions vs measurements, rounds, comparison."""
    from evoprune.report import write_report

    try:
        if out.exists() and not out.is_dir():
            raise EvopruneError(f"--out '{out}' is a file: pass a directory for index.html")
        with Store.open_existing(store, readonly=True) as st:
            path = write_report(st, out, run)
    except EvopruneError as exc:
        _fail(str(exc))
    out_console.print(f"wrote {path}")


@app.command("runs")
def runs_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON: [{run, model, data, ok, failed, pending, created}]."
    ),
) -> None:
    """List the runs in a store with their evaluation counts."""
    rows = []
    try:
        with Store.open_existing(store, readonly=True) as st:
            for r in st.runs():
                evs = st.evaluations(r.id)
                counts = {s: sum(e.status == s for e in evs) for s in ("ok", "failed", "pending")}
                rows.append({"run": r.id, "model": r.model, "data": r.data, **counts, "created": r.created_at})
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = FoldingTable(title=f"runs in {store}", title_justify="left")
    for col in ("run", "model", "data", "ok", "failed", "pending", "created"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out_console.print(table)


surrogate_app = typer.Typer(help="Judge the surrogate models on the real evaluations in a store.", no_args_is_help=True)
app.add_typer(surrogate_app, name="surrogate")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or value != value else format(value, spec)


_SURROGATE_REPORT_HELP = (
    "Cross-validate every surrogate on a run's successful evaluations (target: log perplexity).\n\n"
    "Per surrogate: Kendall tau over all pairs and within equal-cost groups (pairs binned by kept parameter "
    "fraction, bins 5% wide; the mean over bins with at least 3 pairs, weighted by their pairs), Spearman rho, "
    "RMSE, Gaussian negative log-likelihood, coverage of the 90% interval and seconds per fit. The last row "
    "scores the predictions the search recorded for each candidate before evaluating it.\n\n"
    "Features: the search's own (levels, importance removed per sub-layer, kept fraction) when the run's "
    "importance scores are in the cache ($EVOPRUNE_CACHE_DIR or ~/.cache/evoprune, as on the machine that ran "
    "the search); otherwise the levels and the exact kept parameter fraction, which the store alone gives. "
    "The report names the features it used."
)


@surrogate_app.command("report", help=_SURROGATE_REPORT_HELP)
def surrogate_report_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    folds: int = typer.Option(5, "--folds", "-k", help="Cross-validation folds."),
    names: str | None = typer.Option(
        None, "--surrogates", help="Comma-separated surrogate names (default: every registered surrogate)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold split and of the surrogates."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from evoprune.surrogate_report import cached_feature_map, surrogate_report

    try:
        with Store.open_existing(store, readonly=True) as st:
            r = st.get_run(run)
            chosen = [n.strip() for n in names.split(",") if n.strip()] if names is not None else None
            report = surrogate_report(st, r, chosen, folds=folds, seed=seed, featurize=cached_feature_map(r))
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = FoldingTable(
        title=f"Surrogates on run {report.run_id} ({report.model}): {report.n_pairs} pairs, {report.folds}-fold CV",
        title_justify="left",
        caption=f"features: {report.features}",
        caption_justify="left",
    )
    for col in ("surrogate", "tau", "tau in cost bins", "bins", "rho", "RMSE", "NLL", "90% cover", "fit s"):
        table.add_column(col, justify="left" if col == "surrogate" else "right")
    rows = [(s.name, s) for s in report.scores]
    if report.recorded:
        rows.append((f"search's own ({report.recorded_surrogate}, {report.recorded['n']} acquired)", None))
    for label, s in rows:
        if s is not None and s.error:
            table.add_row(label, f"[red]failed: {s.error}", *[""] * 7)
            continue
        d = vars(s) if s is not None else {**report.recorded, "fit_s": None}
        table.add_row(
            label,
            _fmt(d["kendall_tau"]),
            _fmt(d["within_cost_tau"]),
            str(d["cost_bins"]),
            _fmt(d["spearman_rho"]),
            _fmt(d["rmse"]),
            _fmt(d["nll"], ".2f"),
            _fmt(d["coverage90"], ".0%"),
            _fmt(d["fit_s"], ".2f"),
        )
    out_console.print(table)
    if report.search_predictions:
        own = report.search_predictions
        p, level = own["pooled"], own["level"]
        out_console.print(
            f"search's own predictions over {p['n']} acquired evaluations: Kendall tau {_fmt(p['kendall_tau'], '.2f')} "
            f"[{_fmt(p['tau_low'], '.2f')}, {_fmt(p['tau_high'], '.2f')}] ({level:.0%} bootstrap interval); "
            f"{p['inside']} of {p['n']} inside their {level:.0%} interval "
            f"[{_fmt(p['coverage_low'], '.0%')}, {_fmt(p['coverage_high'], '.0%')}]"
        )
    for note in report.notes:
        err_console.print(f"note: {note}")


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="An 'evoprune export' directory, or a model: smollm2-135m, a directory, a .gguf file, a hub id.",
    ),
    tasks: str = typer.Option(
        ...,
        "--tasks",
        "-t",
        help="Comma-separated: arc_easy, arc_challenge, mmlu, NAME=DATA_PATH, a task .yaml file, or lm_eval:NAME.",
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="With a model (not an export): an evaluation id in --store, an export's plan.json, levels:ATTN/MLP "
        "(e.g. levels:0,1,1,0/2,2,3,0) or uniform:R.",
    ),
    store: Path | None = typer.Option(
        None, "--store", "-s", help="Pair store: resolves evaluation ids and keeps the results with the configuration."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Score a fixed random subset of N questions per task."),
    shots: int | None = typer.Option(None, "--shots", help="In-context examples (default: the task's own, 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit subset and of the few-shot examples."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, bfloat16 or float16 (default: the run's or export's own, else float32)."
    ),
    task_data: str | None = typer.Option(
        None,
        "--task-data",
        help="Folder of the shipped tasks' data (arc_easy/, mmlu/dev/; default: $EVOPRUNE_TASK_DATA, else the hub).",
    ),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Importance text for uniform:R or a plan.json that names none (default: builtin)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write the results, with per-question scores, to this JSON file."
    ),
) -> None:
    """Task accuracy (acc, acc_norm) of a model, an export, or a configuration applied through the masks."""
    from evoprune.tasks.command import parse_tasks, run_evaluate, write_report

    try:
        if out is not None and not out.parent.is_dir():
            raise EvopruneError(f"--out '{out}': directory '{out.parent}' does not exist")
        with _SearchProgress(err_console) as progress:
            report = run_evaluate(
                model,
                parse_tasks(tasks),
                config=config,
                store_path=store,
                data=data,
                limit=limit,
                shots=shots,
                seed=seed,
                progress=progress,
                task_data=task_data,
                dtype=dtype,
            )
    except EvopruneError as exc:
        _fail(str(exc))
    if out is not None:
        write_report(report, out)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    t = report.target
    kept = f", {100 * t.params_fraction:.1f}% kept" if t.params_fraction is not None else ""
    table = FoldingTable(
        title=f"Task accuracy of {t.label}: {t.params / 1e6:.2f}M parameters{kept}", title_justify="left"
    )
    for col in ("task", "shots", "questions", "acc", "acc_norm", "seconds"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in report.results:
        cells = [
            "-" if m not in r.metrics else f"{r.metrics[m]:.4f} ± {r.stderr.get(m, math.nan):.4f}"
            for m in ("acc", "acc_norm")
        ]
        table.add_row(r.task, str(r.shots), str(r.n), *cells, f"{r.duration_s:.1f}")
    out_console.print(table)
    if report.stored:
        where = f"evaluation {t.eval_id}" if t.eval_id is not None else "no stored evaluation (kept by configuration)"
        err_console.print(f"stored {len(report.stored)} task results in '{store}' with {where}")


from evoprune.recovery import RecoverySettings as _RecoverySettings  # noqa: E402

_RECOVERY = _RecoverySettings()  # the defaults the options show


def _kl_text(metrics: dict) -> str:
    """``0.0123 ±0.0004`` (KL in nats per token is small), or ``-``."""
    if "kl" not in metrics:
        return "-"
    return f"{metrics['kl']:.4f}" + (f" ±{metrics['kl_se']:.4f}" if "kl_se" in metrics else "")


class _RecoveryProgress(_SearchProgress):
    """Renders ``recover`` events on stderr: phases, then training steps with the running loss."""

    def __call__(self, event: str, **info) -> None:
        if event not in ("train", "step"):
            if event == "phase" and self.task is not None:
                self.progress.update(self.task, total=None, status="")
            super().__call__(event, **info)
            return
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("preparing", total=None, status="")
        if event == "train":
            self.progress.update(self.task, description="training", total=info["total"], completed=info["done"])
        else:
            status = (
                f"loss {info['running_loss']:.4f} (mean of the last steps; this step: KL {info['kl']:.4f}, "
                f"CE {info['ce']:.3f}), lr {info['lr']:.2e}"
            )
            self.progress.update(self.task, completed=info["step"], status=status)


@app.command("recover")
def recover_command(
    model: Path = typer.Option(..., "--model", "-m", help="An 'evoprune export' directory (only read, never changed)."),
    data: str = typer.Option(
        ..., "--data", "-d", help="Training text, as for 'evoprune search'; its first --heldout-tokens are held out."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the recovered export (and the checkpoints)."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Dense model to distill from (default: the one the export's plan.json names)."
    ),
    method: str = typer.Option(_RECOVERY.method, "--method", help="lora (adapters, merged at the end) or full."),
    steps: int = typer.Option(_RECOVERY.steps, "--steps", help="Optimizer steps."),
    seq_len: int = typer.Option(_RECOVERY.seq_len, "--seq-len", help="Tokens per window."),
    batch: int = typer.Option(_RECOVERY.batch, "--batch", help="Windows per step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: 2e-4 for lora, 2e-5 for full)."),
    lm_weight: float = typer.Option(
        _RECOVERY.lm_weight, "--lm-weight", help="Weight of the plain LM loss: loss = (1 - w) KL + w CE."
    ),
    warmup: float = typer.Option(_RECOVERY.warmup, "--warmup", help="Fraction of the steps of linear warm-up."),
    weight_decay: float = typer.Option(_RECOVERY.weight_decay, "--weight-decay", help="AdamW weight decay."),
    lora_rank: int = typer.Option(_RECOVERY.lora_rank, "--lora-rank", help="LoRA rank."),
    lora_alpha: float = typer.Option(_RECOVERY.lora_alpha, "--lora-alpha", help="LoRA alpha (scale alpha / rank)."),
    lora_dropout: float = typer.Option(_RECOVERY.lora_dropout, "--lora-dropout", help="Dropout on LoRA's input."),
    heldout_tokens: int = typer.Option(
        _RECOVERY.heldout_tokens, "--heldout-tokens", help="Tokens at the start of --data held out from training."
    ),
    train_tokens: int | None = typer.Option(
        None, "--train-tokens", help="Training tokens after the held-out ones (default: what the steps read)."
    ),
    checkpoint_every: int = typer.Option(
        _RECOVERY.checkpoint_every, "--checkpoint-every", help="Steps between checkpoints (0: none)."
    ),
    seed: int = typer.Option(_RECOVERY.seed, "--seed", help="Seed of the data order, LoRA's init and dropout."),
    device: str = typer.Option(_RECOVERY.device, "--device", help="Where training runs: cpu, cuda, cuda:N or mps."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: the export's own)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out directory."),
    restart: bool = typer.Option(False, "--restart", help="Discard a checkpoint in --out and start again."),
    store: str = typer.Option(
        "auto",
        "--store",
        "-s",
        help="Record the result against the export's evaluation in this store, for 'evoprune plan' "
        "(auto: the store plan.json names, when it holds that evaluation; none: nowhere).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Distill an export from its dense model (KL, optionally mixed with the LM loss); write an export again.

    Rerun with the same arguments to continue from the last checkpoint after a crash or kill.
    """
    from evoprune.recovery import recover

    settings = _RecoverySettings(
        method=method, steps=steps, seq_len=seq_len, batch=batch, lr=lr, warmup=warmup, weight_decay=weight_decay,
        lm_weight=lm_weight, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        heldout_tokens=heldout_tokens, train_tokens=train_tokens, teacher=teacher, seed=seed, dtype=dtype,
        device=device, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    try:
        with _RecoveryProgress(err_console) as progress:
            result = recover(
                model, data, out, settings, progress, force=force, restart=restart,
                store=None if store.lower() == "none" else store,
            )  # fmt: skip
    except EvopruneError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail(f"interrupted: run the same command to continue from the last checkpoint in '{out}'", 130)
    for note in result.notes:
        err_console.print(f"note: {note}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    b, a, t = result.heldout_before, result.heldout_after, result.teacher_heldout
    table = FoldingTable(
        title=f"{model} recovered ({result.method}, {result.steps} steps) on held-out text: the first "
        f"{result.heldout_windows * seq_len} tokens of {data}",
        title_justify="left",
    )
    for col in ("figure", "before", "after", "teacher"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    table.add_row("perplexity", _figure_text(b), _figure_text(a), _figure_text(t))
    table.add_row("KL to the teacher (nats/token)", _kl_text(b), _kl_text(a), "0")
    out_console.print(table)
    resumed = f", continued from step {', '.join(map(str, result.resumed_from))}" if result.resumed_from else ""
    out_console.print(
        f"training loss {result.losses[0]:.4f} at the first step, {result.losses[-1]:.4f} at the last"
        f" ({result.train_windows} training windows{resumed}); wrote {out}, which loads like the export it came "
        f"from (evoprune.load_pruned or trust_remote_code)"
    )
    if result.stored:
        where = result.stored
        out_console.print(f"recorded against evaluation {where['evaluation']} in '{where['store']}'")


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `evoprune pareto --json | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
