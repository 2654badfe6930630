"""Commands on a model or an export: ``export`` (write a configuration as a pruned model),
``measure`` (time and weigh it) and ``evaluate`` (task accuracy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from evoprune.cli.common import (
    _BACKEND,
    MAX_LATENCY_MS_OPTION,
    MAX_MEMORY_OPTION,
    MAX_PARAMS_OPTION,
    FoldingTable,
    _echo_json,
    _fail,
    _figure_text,
    _SearchProgress,
    _tokens_text,
    err_console,
    out_console,
)
from evoprune.errors import EvopruneError

EXPORT_HELP = (
    "Write a configuration as a physically pruned model that plain transformers loads: one a search "
    "evaluated (--store, --pick), or one you give (--model, --config).\n\n"
    "--config is an evaluation id of --store, a plan.json (or the export directory holding it), "
    "levels:ATTN/MLP (one attention and one MLP level per layer, e.g. levels:0,1,1,0/2,2,3,0, or one digit "
    "per layer as 'evoprune pareto' prints them: levels:0110/2230) or uniform:R (the share R, 0 to 1, of every "
    "attention and MLP sub-layer removed, rounded to the nearest level: the kept parameter fraction is not 1 - R, "
    "embeddings stay whole). An evaluation or a plan "
    "brings the importance settings it was found with; levels: and uniform:R take them from the options "
    "below, else from the latest run of the model in --store, else the defaults on --data."
)


def export_command(
    store: Path | None = typer.Option(None, "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the pruned model to."),
    pick: str | None = typer.Option(
        None,
        "--pick",
        help="Evaluation id, knee (default: the knee of the front under the budget) or best (what 'evoprune plan' "
        "answers for the budget). The budget: --max-params, --max-memory, --max-latency-ms when given (an id must "
        "meet it), else the run's own.",
    ),
    max_params: float | None = MAX_PARAMS_OPTION,
    max_memory: str | None = MAX_MEMORY_OPTION,
    max_latency_ms: float | None = MAX_LATENCY_MS_OPTION,
    run: int | None = typer.Option(None, "--run", help="Run id for --pick (default: the latest run)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model --config prunes (as for 'search')."),
    config: str | None = typer.Option(
        None, "--config", "-c", help="Evaluation id, plan.json, levels:ATTN/MLP or uniform:R (with --model)."
    ),
    data: str | None = typer.Option(None, "--data", "-d", help="Text searched on (levels:, uniform:R, old plans)."),
    criterion: str | None = typer.Option(None, "--importance", help="levels:/uniform:R: importance criterion."),
    compensation: str | None = typer.Option(None, "--compensation", help="levels:/uniform:R: none, bias or refit."),
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

    from evoprune.pruned.export import export_config, export_from_store

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
            if any(v is not None for v in (pick, max_params, max_memory, max_latency_ms, run)):
                raise EvopruneError(
                    "--pick, the budget options (--max-params, --max-memory, --max-latency-ms) and --run choose from "
                    "a store's run; --config names the configuration itself: pass one or the other"
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
                    store, out, pick or "knee", max_params=max_params, max_memory=max_memory,
                    max_latency_ms=max_latency_ms, run=run, force=force, progress=progress,
                )  # fmt: skip
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
        "fidelity": result.fidelity,
        "validation": result.validation,
    }
    if as_json:
        _echo_json(summary)
    else:
        ppl = _export_figures(result)
        out_console.print(
            f"wrote {what} ({result.params / 1e6:.2f}M parameters, "
            f"{100 * result.params_fraction:.1f}% kept{ppl}) to {out}\n"
            f"load it with AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True) "
            f"or evoprune.load_pruned('{out}')"
        )
        if config is not None and config.startswith(("levels:", "uniform:")) and store is None:
            out_console.print(_importance_note(result.path), style="dim", soft_wrap=True)


def _importance_note(path) -> str:
    """Which channels a ``levels:`` / ``uniform:R`` export kept depends on the importance scores:
    say which text and criterion chose them (the export's plan.json), and how to match a search."""
    plan = json.loads((Path(path) / "plan.json").read_text())
    b = plan.get("backend") or {}
    text = b.get("calib_data") or plan.get("data") or "builtin"
    return (
        f"the kept heads and channels were chosen by {b.get('criterion')} importance on {b.get('calib_tokens')} "
        f"tokens of {text}, with {b.get('compensation')} compensation: to cut the model a search measured, "
        "export from its --store, or pass the search's --data and importance options"
    )


def _export_figures(result) -> str:
    """``, ppl 30.12 ±0.80 on 8k tokens, valid ppl 33.40 ±1.10``: what the store says of an export."""
    if not result.fidelity or "ppl" not in result.fidelity["metrics"]:
        return ""
    text = f", ppl {_figure_text(result.fidelity['metrics'])} on {_tokens_text(result.fidelity['tokens'])} tokens"
    if result.validation and "ppl" in result.validation.get("metrics", {}):
        text += f", valid ppl {_figure_text(result.validation['metrics'])}"
    return text


def measure_command(
    model: str = typer.Option(..., "--model", "-m", help="An 'evoprune export' directory, or any supported model."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per forward pass."),
    batch: int = typer.Option(1, "--batch", help="Sequences per forward pass."),
    repeats: int = typer.Option(15, "--repeats", help="Timed forward passes (the median is reported)."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, bfloat16 or float16 (default: the export's own, else float32)."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Where the forward passes run: cpu, cuda, cuda:N or mps (predicted latency: cpu only)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Time a real model's forward pass and weigh it; for exports, next to the cost model's prediction."""
    from evoprune.objectives.spec import size_text
    from evoprune.pruned.measure import measure

    if min(seq_len, batch, repeats) < 1:
        _fail("--seq-len, --batch and --repeats must be at least 1")
    try:
        with _SearchProgress(err_console) as progress:
            progress("phase", name=f"measuring {model}")
            report = measure(model, seq_len=seq_len, batch=batch, repeats=repeats, dtype=dtype, device=device)
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(report)
        return
    table = FoldingTable(title=f"{model}: forward of {batch} x {seq_len} tokens on {device}", title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("predicted", justify="right")
    pred = report.get("predicted", {})
    table.add_row("parameters", f"{report['params'] / 1e6:.2f}M", _fmt_scaled(pred.get("params"), 1e6, "M"))
    # In the units --max-memory reads and plan prints (MB, decimal), to three significant digits.
    table.add_row("weight memory", size_text(report["weight_bytes"]),
                  "-" if pred.get("weight_bytes") is None else size_text(pred["weight_bytes"]))  # fmt: skip
    table.add_row("latency", f"{report['latency_ms']:.1f} ms", _fmt_scaled(pred.get("latency_ms"), 1, " ms", 1))
    out_console.print(table)


def _fmt_scaled(value, scale: float, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}{unit}"


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
        "(e.g. levels:0,1,1,0/2,2,3,0) or uniform:R (the share R, 0 to 1, of every attention and MLP sub-layer "
        "removed, rounded to the nearest level).",
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
    from evoprune.pruned.evaluate import check_report_out, parse_tasks, run_evaluate, write_report

    try:
        if out is not None:
            check_report_out(out)
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
    write_error = None
    if out is not None:
        try:
            write_report(report, out)
        except EvopruneError as exc:  # the figures are printed (and stored) all the same
            write_error = str(exc)
    _print_evaluate(report, as_json, store)
    if write_error is not None:
        _fail(write_error, code=1)


def _print_evaluate(report, as_json: bool, store: Path | None) -> None:
    for r in report.results:
        if r.truncated:
            err_console.print(
                f"note: {r.truncated} of {r.n} {r.task} questions were cut from the left to fit the model's positions "
                "(as lm-evaluation-harness cuts them)"
                + (f"; fewer than {r.shots} shots keep more of them whole" if r.shots else ""),
            )
    if as_json:
        _echo_json(report.to_dict())
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
