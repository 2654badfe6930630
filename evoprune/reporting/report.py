"""A self-contained HTML report of a store: front, levels, the search's predictions against its
measurements, rounds, narrowed space, recoveries, comparison."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from matplotlib.figure import Figure

from evoprune.errors import make_output_dir
from evoprune.objectives.pareto import best_of, pareto_front, quality_objective, top_rung
from evoprune.reporting.plots import (
    budget_lines_of,
    front_figure,
    levels_figure,
    predictions_figure,
    render_png,
    rounds_figure,
)
from evoprune.reporting.prediction_metrics import MIN_TAU_POINTS
from evoprune.reporting.prediction_metrics import number_text as _fmt
from evoprune.reporting.search_predictions import SearchPredictions, search_predictions
from evoprune.store import Run, Store


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(metrics: dict, name: str, spec: str = ".2f") -> str:
    if name not in metrics:
        return "-"
    se = metrics.get(f"{name}_se")
    return format(metrics[name], spec) + (f" ±{format(se, spec)}" if se is not None else "")


def _comparison(store: Store) -> str:
    """Runs of the same problem with different methods, best measured quality of each."""
    runs = store.runs()
    by_problem: dict[tuple, list] = {}
    for r in runs:
        key = (r.settings.get("pair_key"), r.settings.get("max_params"), r.settings.get("evals"))
        by_problem.setdefault(key, []).append(r)
    parts = []
    for (_, budget, evals), group in by_problem.items():
        if len({r.settings.get("method") for r in group}) < 2:
            continue
        rows = []
        for r in group:
            ok = [e for e in store.evaluations(r.id) if e.status == "ok" and "ppl" in e.metrics]
            limit = budget if budget is not None else 1.0
            under = [e for e in ok if e.params_fraction <= limit]
            best = best_of(under, "ppl")
            rows.append([r.settings.get("method"), r.id, len(ok),
                         _figure(top_rung(best)[1], "ppl") if best else "-",
                         f"{best.params_fraction:.1%}" if best else "-",
                         f"{sum(e.duration_s or 0 for e in store.evaluations(r.id)):.0f}"])  # fmt: skip
        rows.sort(key=lambda row: float(row[3].split()[0]) if row[3] != "-" else float("inf"))
        parts.append(f"<h3>budget {budget if budget is not None else 'none'}, {evals} evaluations</h3>")
        parts.append(_table(["method", "run", "ok evaluations", "best ppl", "kept params", "eval s"], rows))
    return "".join(parts) or "<p>No comparison in this store (run <code>evoprune compare</code>).</p>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} img{max-width:100%;margin:0.5em 0} code{background:#f3f3f3}
"""


def _screening_summary(store: Store, run) -> str:
    """Multi-fidelity runs: how many candidates were screened and how many went on."""
    screenings = store.screenings(run.id)
    if not screenings:
        return ""
    full = {e.config_key for e in store.evaluations(run.id) if e.origin == "acquired"}
    tokens = sorted({sc.tokens for sc in screenings})
    promoted = sum(sc.config_key in full for sc in screenings)
    seconds = sum(sc.duration_s or 0 for sc in screenings)
    return (
        "<h2>Multi-fidelity screening</h2>"
        f"<p>{len(screenings)} candidates screened on {', '.join(map(str, tokens))} tokens "
        f"({seconds:.1f} s); {promoted} of them went on to a full evaluation.</p>"
    )


def _recoveries_section(store: Store, run: Run) -> str:
    """Recovery trainings (``evoprune recover``) of this run's exports: the figure the search chose
    each configuration by beside the held-out figures before and after training."""
    records = store.recoveries(run_id=run.id)
    if not records:
        return ""
    chosen = {e.id: e for e in store.evaluations(run.id)}
    rows = []
    for r in records:
        e = chosen.get(r.eval_id)
        rows.append([r.eval_id, f"{e.params_fraction:.1%}" if e else "-",
                     _figure(top_rung(e)[1], "ppl") if e else "-", f"{r.method}, {r.steps} steps",
                     _figure(r.before, "ppl"), _figure(r.after, "ppl"),
                     _figure(r.before, "kl", ".4f"), _figure(r.after, "kl", ".4f"), r.out])  # fmt: skip
    return (
        "<h2>Recovery</h2><p>Distillation from the dense model after export (<code>evoprune recover</code>). "
        "Before and after: perplexity and KL to the dense model on recover's held-out split, which training "
        "never read (± one standard error); searched: the figure the search chose the configuration by.</p>"
        + _table(
            [
                "id",
                "kept",
                "searched ppl",
                "training",
                "ppl before",
                "ppl after",
                "KL before",
                "KL after",
                "recovered into",
            ],
            rows,
        )  # fmt: skip
    )


def report_figures(store: Store, run: Run, predictions: SearchPredictions | None = None) -> dict[str, Figure]:
    """Every figure of the report of ``run``, by name, in page order (``front``, ``levels``, and
    ``predictions`` and ``rounds`` when the run has them)."""
    figures = {
        "front": front_figure(store, run, budget_lines=budget_lines_of(run)),
        "levels": levels_figure(store, run),
    }
    if predictions is not None:
        figures["predictions"] = predictions_figure(predictions)
    rounds = store.rounds(run.id)
    if rounds:
        figures["rounds"] = rounds_figure(rounds)
    return figures


def _predictions_section(predictions: SearchPredictions | None, image: str, method: str) -> str:
    """What the search predicted for each candidate before evaluating it, against what it measured."""
    if predictions is None:
        return f"<h2>Surrogate predictions</h2><p>This run ({html.escape(method)}) recorded no predictions.</p>"
    p, level = predictions.pooled, predictions.level
    rows = [
        [r["round"], r["n"], f"{_fmt(r['kendall_tau'])} [{_fmt(r['tau_low'])}, {_fmt(r['tau_high'])}]",
         f"{r['inside']} of {r['n']} ({_fmt(r['coverage'], '.0%')} [{_fmt(r['coverage_low'], '.0%')}, "
         f"{_fmt(r['coverage_high'], '.0%')}])", _fmt(r["rmse"], ".3f")]
        for r in predictions.by_round
    ]  # fmt: skip
    return (
        "<h2>Surrogate predictions</h2>"
        f"<p>Before evaluating each acquired candidate, the search predicted its {html.escape(predictions.target)} "
        f"with the <code>{html.escape(str(predictions.surrogate))}</code> surrogate. Left: prediction against "
        "measurement, vertical bars the "
        f"predicted {level:.0%} interval, horizontal bars the measurement's own {level:.0%} interval (from its "
        f"standard error; grey). Over all {p['n']}: Kendall tau {_fmt(p['kendall_tau'])} "
        + (
            f"(percentile bootstrap {level:.0%} interval [{_fmt(p['tau_low'])}, {_fmt(p['tau_high'])}], standard "
            f"error {_fmt(p['tau_se'])}); "
            if p["n"] >= MIN_TAU_POINTS
            else f"(no interval: {p['n']} points, where a bootstrap interval needs {MIN_TAU_POINTS}); "
        )
        + f"{p['inside']} of {p['n']} inside their predicted interval "
        f"({_fmt(p['coverage'], '.0%')}, Wilson {level:.0%} interval [{_fmt(p['coverage_low'], '.0%')}, "
        f"{_fmt(p['coverage_high'], '.0%')}]; {level:.0%} when calibrated).</p>"
        + image
        + _table(["through round", "acquired", f"Kendall tau [{level:.0%}]", "inside the interval", "rmse"], rows)
    )


def write_report(store: Store, out_dir: str | Path, run_id: int | None = None) -> Path:
    """Write ``index.html`` (figures embedded) for run ``run_id`` (default: the latest) into ``out_dir``.

    Raises EvopruneError for a run the store does not have and an ``out_dir`` that cannot be created.
    """
    out = Path(out_dir)
    run = store.get_run(run_id)  # before the folder is made: a wrong run id leaves nothing behind
    make_output_dir(out, "--out")
    rounds = store.rounds(run.id)
    predictions = search_predictions(store, run)
    images = {name: _img(render_png(fig), name) for name, fig in report_figures(store, run, predictions).items()}
    points = pareto_front(store, run)
    quality = quality_objective(run)  # the front's, as pareto shows it: ppl, kl or acc:TASK
    spec = {"ppl": ".2f", "kl": ".4f"}.get(quality, ".3f")
    label = {"ppl": "ppl", "kl": "KL"}.get(quality, quality)
    other = "ppl" if quality == "kl" else "kl"  # the first rung's other figure beside it
    other_spec, other_label = (".2f", "ppl") if other == "ppl" else (".4f", "KL")
    front_rows = [[p.id, f"{p.params / 1e6:.2f}M", f"{p.params_fraction:.1%}",
                   _figure(p.fidelity["metrics"], quality, spec) if p.fidelity else "-",
                   (p.fidelity or {}).get("tokens") or "-", _figure(p.metrics, quality, spec),
                   _figure(p.metrics, other, other_spec),
                   _figure(p.validation["metrics"], quality, spec) if p.validation else "-",
                   p.found(run.id)] for p in points]  # fmt: skip
    L = run.space["arch"]["num_layers"]

    def variable(k) -> str:
        k = int(k)
        return f"attn {k}" if k < L else f"mlp {k - L}"

    narrowed = [[r["round"], ", ".join(f"{variable(k)} ≤ {v}" for k, v in r["bounds"].items())]
                for r in rounds if r.get("bounds")]  # fmt: skip
    method = str(run.settings.get("method", "evoprune"))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>evoprune report: run {run.id}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>evoprune report: run {run.id}</h1>",
        f"<p>model <code>{html.escape(run.model)}</code>, data <code>{html.escape(run.data)}</code>, "
        f"method <code>{html.escape(method)}</code>, "
        f"objectives <code>{html.escape(str(run.settings.get('objectives', 'ppl,params')))}</code>, "
        f"{len(store.evaluations(run.id))} evaluations.</p>",
        "<h2>Pareto front</h2>",
        images["front"],
        f"<p>{html.escape(label)}: on the highest rung of the fidelity ladder the configuration reached (its "
        "tokens), the figure choices use, as <code>evoprune pareto</code> shows it; first rung: its first "
        f"measurement, and its {'KL to the dense model' if other == 'kl' else 'perplexity'} on the same tokens; "
        "validation: the disjoint validation split, "
        "never used to choose; ± one standard error.</p>",
        _table(
            [
                "id",
                "params",
                "kept",
                label,
                "tokens",
                f"first rung {label}",
                f"first-rung {other_label}",
                f"validation {label}",
                "found",
            ],
            front_rows,
        ),  # fmt: skip
        "<h2>Per-layer levels on the front</h2>",
        images["levels"],
        _predictions_section(predictions, images.get("predictions", ""), method),
        "<h2>Rounds</h2>",
        images.get("rounds", "<p>No active-learning rounds.</p>"),
        _table(
            ["round", "pairs", "fit s", "inner search s", "eval s", "hypervolume"],
            [
                [
                    r["round"],
                    r["n_train"],
                    f"{r['fit_s']:.2f}",
                    f"{r['search_s']:.2f}",
                    f"{(r['eval_s'] or 0):.1f}",
                    _fmt(r["hypervolume"], ".4f"),
                ]
                for r in rounds
            ],
        ),  # fmt: skip
        "<h2>Narrowed search space</h2>",
        "<p>Sub-layers (attention or MLP of a layer) whose highest pruning level the refinement step "
        "lowered, per round.</p>" + _table(["round", "narrowed upper bounds"], narrowed)
        if narrowed
        else "<p>No level range was narrowed: the surrogate found no level harmful enough to cut"
        + (" (refinement is off for this run)." if run.settings.get("refine") is False else ".")
        + "</p>",
        _screening_summary(store, run),
        _recoveries_section(store, run),
        "<h2>Comparison</h2>",
        _comparison(store),
        "</body></html>",
    ]
    path = out / "index.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
