"""Choosing from what a search measured: ``pareto`` (the front), ``plan`` (the best under a budget)
and ``compare`` (evoprune and the baselines at one budget)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from evoprune.backend.settings import BackendSettings
from evoprune.choice.compare import DEFAULT_METHODS, choice_order
from evoprune.cli.common import (
    _BACKEND,
    MAX_LATENCY_MS_OPTION,
    MAX_MEMORY_OPTION,
    MAX_PARAMS_OPTION,
    FoldingTable,
    _echo_json,
    _fail,
    _figure_text,
    _kl_text,
    _SearchProgress,
    _tokens_text,
    err_console,
    out_console,
)
from evoprune.cli.views import _front_json, _front_view, _quality_text
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError, require_parent_dir
from evoprune.objectives.pareto import first_rung_tokens, pareto_front, top_rung
from evoprune.objectives.spec import prediction_on_metric_scale, size_text
from evoprune.store import Store


def pareto_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: {run, model, data, dense_params, points: [{id, run, params, params_fraction, metrics, "
        "fidelity, validation, levels, origin, round}]}; a point's run is the run that measured it.",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the front (PNG): evaluated points, knee, budget."),
    budget: float | None = typer.Option(
        None,
        "--max-params",
        help="With --plot: draw the budget line there (kept fraction or count; default: the run's own).",
    ),
) -> None:
    """Show the non-dominated, really evaluated configurations (first quality objective, e.g. ppl, vs parameters)."""
    try:
        if budget is not None and plot is None:
            raise EvopruneError(
                "--max-params draws a budget line on --plot: add --plot FRONT.png, or choose under the budget with "
                "'evoprune plan --max-params'"
            )
        if plot is not None:
            require_parent_dir(plot, "--plot")
            if plot.suffix.lower() != ".png":
                raise EvopruneError(f"--plot '{plot}': the plot is a PNG image: pass a path ending in .png")
        with Store.open_existing(store, readonly=True) as st:
            r = st.get_run(run)
            points = pareto_front(st, r)
            if plot is not None:
                from evoprune.reporting.plots import budget_lines_of, plot_front

                plot_front(st, r, plot, budget_lines=budget_lines_of(r, budget))
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(_front_json(r, points))
    else:
        out_console.print(_front_view(r, points, out_console.width))


def plan_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store written by 'evoprune search'."),
    max_params: float | None = MAX_PARAMS_OPTION,
    max_memory: str | None = MAX_MEMORY_OPTION,
    max_latency_ms: float | None = MAX_LATENCY_MS_OPTION,
    spend: int = typer.Option(
        0,
        "--spend",
        help="First spend this many more evaluations focused on the budget (above the run's --min-params, "
        "unless the budget needs lower).",
    ),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: {run, evaluation, evaluation_run, levels, measured, fidelity, validation, predicted, cost, "
        "layers, ...}; run is the run planned from (or the run --spend searched), evaluation_run the run that "
        "measured the chosen evaluation (export it with --run EVALUATION_RUN --pick EVALUATION).",
    ),
) -> None:
    """The best really evaluated configuration under a budget, with its per-layer allocation.

    The budget defaults to the one the run searched under."""
    from evoprune.choice.plan import plan
    from evoprune.objectives.spec import Budget

    if spend < 0:
        _fail(f"--spend must be 0 or more, got {spend}")
    try:
        with _SearchProgress(err_console) as progress:
            result = plan(str(store), Budget(max_params, max_memory, max_latency_ms), spend, run, progress)
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(result.to_dict())
        return
    e = result.evaluation
    metric = result.metric
    pred = prediction_on_metric_scale(e.predicted) or {}
    predicted = _quality_text(pred, metric)
    tokens, top = top_rung(e)
    measured = (
        f"measured {metric} {_quality_text(top, metric)} on {_tokens_text(tokens or first_rung_tokens(result.run))} "
        "tokens"
    )
    if e.validation:
        measured += f", {_quality_text(e.validation['metrics'], metric)} on the validation split"
    out_console.print(
        f"evaluation #{e.id}: {e.params / 1e6:.2f}M parameters ({e.params_fraction:.1%} kept), "
        f"{measured} (predicted before evaluation: {predicted}), "
        f"memory {size_text(result.cost['memory_bytes'])} at {result.cost['memory_context_tokens']} tokens of KV cache"
        + (f", latency {result.cost['latency_ms']:.0f} ms (predicted)" if "latency_ms" in result.cost else "")
        + "; "
        f"best of {result.candidates} evaluated configurations under the budget"
        + (f", {result.spent} evaluated now" if result.spent else "")
    )
    if not e.validation and not result.spent:
        err_console.print(
            f"note: #{e.id} was chosen on {'its first rung' if tokens is None else 'the ladder'} alone and has no "
            "validation figure: --spend N measures N more configurations under "
            "it, climbs the ladder and validates the best",
        )
    if result.passed_over and not result.spent:
        err_console.print(
            f"note: {result.passed_over} configuration(s) under the budget keep more than #{e.id} and were measured "
            "on their first rung alone, so the ladder never weighed them against it: --spend N searches "
            "focused on this budget, climbs its contenders and validates the best",
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
    # The command alone on its line, unwrapped, so that it copies whole (the terminal folds it).
    out_console.print("export it with:")
    out_console.print(
        f"evoprune export --store {shlex.quote(str(store))} --run {e.run_id} --pick {e.id} --out DIR", soft_wrap=True
    )


def compare_command(
    model: str = typer.Option(..., "--model", "-m", help="Model spec, as for 'evoprune search'."),
    data: str = typer.Option("builtin", "--data", "-d", help="Evaluation text, as for 'evoprune search'."),
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store (one run per method)."),
    evals: int = typer.Option(..., "--evals", "-n", help="Real evaluations per method."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods", help="Comma-separated methods to run."),
    max_params: float | None = MAX_PARAMS_OPTION,
    max_memory: str | None = MAX_MEMORY_OPTION,
    max_latency_ms: float | None = MAX_LATENCY_MS_OPTION,
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
    mlp_levels: int | None = typer.Option(
        None,
        "--mlp-levels",
        help="Number of MLP pruning steps (default 8); given, the baselines use it too, not their fine grid.",
    ),
    device: str = typer.Option("cpu", "--device", help="Where evaluation runs: cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights and activations: float32, bfloat16 or float16."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Run evoprune and the baselines at the same budget of real evaluations; print one table."""
    from evoprune.choice.compare import compare
    from evoprune.objectives.budget import budget_text

    settings = SearchSettings(
        evals=evals, seed=seed, max_params=max_params, max_memory=max_memory, max_latency_ms=max_latency_ms,
        min_params=min_params, baseline_skip_first=baseline_skip_first, baseline_skip_last=baseline_skip_last,
        baseline_grid=None if mlp_levels is None else "given",
        backend=BackendSettings(eval_tokens=eval_tokens, calib_tokens=calib_tokens, seq_len=seq_len,
                                mlp_levels=_BACKEND.mlp_levels if mlp_levels is None else mlp_levels,
                                device=device, dtype=dtype),
    )  # fmt: skip
    try:
        with _SearchProgress(err_console) as progress:
            rows = compare(model, data, str(store), settings, [m.strip() for m in methods.split(",")], progress)
    except EvopruneError as exc:
        _fail(str(exc))
    # Best first on windows that judge every method alike (choice_order), methods without a pick under the
    # budget last: the table and --json share this order.
    rows = choice_order(rows)
    if as_json:
        _echo_json([r.to_dict() for r in rows])
        return
    table = FoldingTable(
        title=f"methods at {evals} real evaluations (budget: {budget_text(settings.budget) or 'none'})",
        title_justify="left",
    )
    columns = (
        "method",
        "run",
        "evals",
        "best ppl",
        "top rung ppl",
        "valid ppl",
        "kept params",
        "eval s",
        "wall s",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        top = r.best_fidelity or {}
        table.add_row(
            r.method if not r.skipped else f"{r.method} (skipped)", "-" if r.run_id is None else str(r.run_id),
            str(r.evaluations),
            "-" if r.best_value is None else f"{r.best_value:.2f}" + (f" ±{r.best_se:.2f}" if r.best_se else ""),
            f"{_figure_text(top.get('metrics'))} ({_tokens_text(top.get('tokens'))})" if top else "-",
            _figure_text((r.best_validation or {}).get("metrics")),
            "-" if r.best_params_fraction is None else f"{r.best_params_fraction:.3f}",
            f"{r.eval_s:.0f}", "-" if r.wall_s is None else f"{r.wall_s:.0f}",
        )  # fmt: skip
    out_console.print(table)
    out_console.print(
        "best ppl: the first rung (± standard error); top rung ppl: the highest rung it reached (tokens), which each "
        "method's choice goes by; valid ppl: the validation split, never used to choose. Rows are sorted by valid ppl "
        "(else the top rung when every pick reached the same one, else the first rung)",
        style="dim",
    )
    for r in rows:
        if r.skipped:
            out_console.print(f"{r.method} skipped: {r.skipped}")
