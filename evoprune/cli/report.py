"""Looking back at a store: ``report`` (the HTML page), ``runs`` (the runs and their counts) and
``surrogate report`` (the surrogates cross-validated on a run's pairs)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich import box

from evoprune.cli.common import (
    FoldingTable,
    _echo_json,
    _fail,
    _SearchProgress,
    err_console,
    out_console,
)
from evoprune.errors import EvopruneError
from evoprune.store import Store


def report_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for index.html."),
    run: int | None = typer.Option(None, "--run", help="Run id (default: the latest run)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON (path, run)."),
) -> None:
    """Write a self-contained HTML report: front, per-layer levels, predictions vs measurements, rounds, comparison."""
    from evoprune.reporting.report import write_report

    try:
        if out.exists() and not out.is_dir():
            raise EvopruneError(f"--out '{out}' is a file: pass a directory for index.html")
        with Store.open_existing(store, readonly=True) as st:
            path = write_report(st, out, run)
            run_id = st.get_run(run).id
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json({"path": str(path), "run": run_id, "store": str(store)})
    else:
        out_console.print(f"wrote {path}")


def runs_command(
    store: Path = typer.Option(..., "--store", "-s", help="SQLite pair store."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: [{run, method, budget, model, data, ok, failed, pending, created}] "
        "(budget: the options it searched under, e.g. '--max-params 0.7', or 'none').",
    ),
) -> None:
    """List the runs in a store with their method, budget and evaluation counts."""
    from evoprune.objectives.budget import budget_text, recorded_budget

    rows = []
    try:
        with Store.open_existing(store, readonly=True) as st:
            for r in st.runs():
                evs = st.evaluations(r.id)
                counts = {s: sum(e.status == s for e in evs) for s in ("ok", "failed", "pending")}
                rows.append({"run": r.id, "method": r.settings.get("method", "evoprune"),
                             "budget": budget_text(recorded_budget(r)) or "none", "model": r.model, "data": r.data,
                             **counts, "created": r.created_at})  # fmt: skip
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(rows)
        return
    table = FoldingTable(
        box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), title=f"runs in {store}", title_justify="left"
    )
    # Narrow padding, the evaluation counts in one column, the time to the minute (--json has it
    # whole): so that seven columns keep their words whole in 80 columns beside a path.
    for col in ("run", "method", "budget", "model", "data", "ok, failed, pending", "created"):
        table.add_column(col)
    for row in rows:
        counts = "/".join(str(row[k]) for k in ("ok", "failed", "pending"))
        created = datetime.fromisoformat(row["created"]).strftime("%Y-%m-%d %H:%M")
        table.add_row(*(str(row[k]) for k in ("run", "method", "budget", "model", "data")), counts, created)
    out_console.print(table)


SURROGATE_REPORT_HELP = (
    "Cross-validate every surrogate on a run's successful evaluations (target: the run's first quality "
    "objective on the search's scale: log perplexity, log KL, or minus an accuracy).\n\n"
    "Per surrogate: Kendall tau over all pairs and within equal-cost groups (pairs binned by kept parameter "
    "fraction, bins 5% wide; the mean over bins with at least 3 pairs, weighted by their pairs), Spearman rho, "
    "RMSE, Gaussian negative log-likelihood, coverage of the 90% interval and seconds per fit. The last row "
    "scores the predictions the search recorded for each candidate before evaluating it.\n\n"
    "Features: the search's own (levels, importance removed per sub-layer, kept fraction) when the run's "
    "importance scores are in the cache ($EVOPRUNE_CACHE_DIR or ~/.cache/evoprune, as on the machine that ran "
    "the search); otherwise the levels and the exact kept parameter fraction, which the store alone gives. "
    "The report names the features it used."
)


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
    from evoprune.reporting.prediction_metrics import number_text as _fmt
    from evoprune.reporting.surrogate_report import cached_feature_map, surrogate_report

    try:
        with Store.open_existing(store, readonly=True) as st:
            r = st.get_run(run)
            chosen = [n.strip() for n in names.split(",") if n.strip()] if names is not None else None
            with _SearchProgress(err_console) as progress:
                report = surrogate_report(st, r, chosen, folds=folds, seed=seed, featurize=cached_feature_map(r),
                                          progress=progress)  # fmt: skip
    except EvopruneError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(report.to_dict())
        return
    table = FoldingTable(
        title=f"Surrogates on run {report.run_id} ({report.model}): {report.n_pairs} pairs, {report.folds}-fold CV",
        title_justify="left",
        caption=f"target: {report.target}; features: {report.features}",
        caption_justify="left",
    )
    for col in ("surrogate", "tau", "tau in cost bins", "bins", "rho", "RMSE", "NLL", "90% cover", "fit s"):
        table.add_column(col, justify="left" if col == "surrogate" else "right")
    rows = [(s.name, s) for s in report.scores]
    if report.recorded:
        # Short words: a long label here made an 80-column terminal fold the names mid-word.
        rows.append((f"in search: {report.recorded_surrogate}", None))
        table.caption += (
            f"; 'in search': what the search's {report.recorded_surrogate} predicted for its "
            f"{report.recorded['n']} acquired candidates before measuring them"
        )
    for label, s in rows:
        if s is not None and s.error:
            table.add_row(label, f"[red]failed: {s.error}", *[""] * 7)
            continue
        d = vars(s) if s is not None else {**report.recorded, "fit_s": None}
        table.add_row(
            label,
            _fmt(d["kendall_tau"], ".3f"),
            _fmt(d["within_cost_tau"], ".3f"),
            str(d["cost_bins"]),
            _fmt(d["spearman_rho"], ".3f"),
            _fmt(d["rmse"], ".3f"),
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
