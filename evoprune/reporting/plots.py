"""Figures of a run, drawn with matplotlib (headless).

Each figure has a builder that returns the matplotlib ``Figure`` (``front_figure``, ...) and a
``plot_*`` function that renders it to PNG bytes (and a file). Every figure is laid out by
matplotlib's constrained layout; :func:`overlapping_decorations` checks a figure for labels,
titles, legends and colour bars that cover one another, which the tests apply to every figure
of the report.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402
from scipy.stats import norm  # noqa: E402

from evoprune.objectives.pareto import (  # noqa: E402
    front_evaluations,
    front_of,
    quality_objective,
    rung_offsets,
    selection_value,
)
from evoprune.objectives.spec import params_fraction, quality_from_value  # noqa: E402
from evoprune.reporting.prediction_metrics import number_text as _fmt  # noqa: E402
from evoprune.space import SearchSpace  # noqa: E402
from evoprune.store import Evaluation, Run, Store  # noqa: E402

DPI = 110


def render_png(fig: Figure, path: str | Path | None = None) -> bytes:
    """PNG bytes of ``fig`` (also written to ``path`` when given); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


# -- the front ----------------------------------------------------------------------------------
def _quality_label(name: str) -> str:
    if name == "ppl":
        return "perplexity"
    if name == "kl":
        return "KL to the dense model"
    kind, _, task = name.partition(":")
    return f"{'normalised accuracy' if kind == 'acc_norm' else 'accuracy'} on {task}"


def plotted_front(store: Store, run: Run) -> tuple[list[Evaluation], list[Evaluation], str]:
    """(every evaluation the run chooses among, the front drawn, its quality objective): the pairs
    ``pareto`` chooses among (the run's and, warm-started, those it shares), the front in the
    plane of the run's first quality objective and the kept fraction of parameters, most
    parameters first. For a run of that quality and ``params`` it is ``pareto``'s front."""
    evals = store.shared_evaluations(run)
    quality = quality_objective(run)
    return evals, front_of(evals, (quality, "params")), quality


def front_figure(store: Store, run: Run, budget_lines: list[float] | None = None) -> Figure:
    """Every successful evaluation (grey), the front (line), budget lines and the knee, by the
    run's first quality objective (:func:`plotted_front`)."""
    evals, front, quality = plotted_front(store, run)
    ok = [e for e in evals if e.status == "ok" and quality in e.metrics]
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ax.scatter([e.params_fraction for e in ok], [float(e.metrics[quality]) for e in ok], s=14, c="#bbbbbb",
               label="evaluated")  # fmt: skip
    if front:
        # The front is chosen on the highest rung each member reached (on the first rung's
        # scale); drawn at those values, it is what was chosen and never above an evaluated point.
        offsets = rung_offsets(evals, quality)
        fx = [e.params_fraction for e in front]
        fy = [quality_from_value(quality, selection_value(e, quality, offsets)) for e in front]
        ax.plot(fx, fy, "-o", c="#1f77b4", ms=5, label="Pareto front (highest rung, on the first rung's scale)")
        knee, under = _default_knee(store, run)
        if knee is not None:
            ky = quality_from_value(quality, selection_value(knee, quality, offsets))
            ax.scatter([knee.params_fraction], [ky], s=140, facecolors="none", edgecolors="#d62728", linewidths=2,
                       label=f"knee{' under the budget' if under else ''} (#{knee.id})")  # fmt: skip
    for b in budget_lines or []:
        ax.axvline(b, ls="--", c="#2ca02c", label=f"budget {b:.0%}")
    logarithmic = quality in ("ppl", "kl")
    if quality == "kl":
        # The dense model's KL is 0 (stored as ~1e-8): on a log axis it stretched the plot over
        # eight decades. Linear near 0, logarithmic above the smallest KL that is not ~0.
        values = np.array([float(e.metrics[quality]) for e in ok])
        ax.set_yscale("symlog", linthresh=_kl_linear_range(values))
    elif logarithmic:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("kept fraction of parameters")
    scale = "log scale, linear near 0; " if quality == "kl" else "log scale; " if logarithmic else ""
    ax.set_ylabel(f"{_quality_label(quality)} ({scale}grey: first rung)")
    ax.set_title(f"run {run.id}: {run.model}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return fig


def _default_knee(store: Store, run: Run) -> tuple[Evaluation | None, bool]:
    """(the knee ``export`` picks by default, whether it is chosen under the run's budget): the
    knee of the front under the budget the run searched with, if any (``pick_evaluation``)."""
    from evoprune.errors import EvopruneError
    from evoprune.objectives.budget import has_limit, pick_evaluation, recorded_budget

    try:
        return pick_evaluation(store, run, "knee"), has_limit(recorded_budget(run))
    except EvopruneError:  # nothing under the budget with every objective measured
        return None, False


def _kl_linear_range(kl: np.ndarray) -> float:
    """Where a KL axis turns from linear to logarithmic: the smallest KL above a thousandth of the
    largest (nats), so the near-dense configurations keep their own decade."""
    kl = kl[np.isfinite(kl)]
    top = float(kl.max()) if len(kl) else 1.0
    above = kl[kl > 1e-3 * top]
    return float(above.min()) if len(above) and top > 0 else 1e-3


def budget_lines_of(run: Run, max_params: float | None = None) -> list[float] | None:
    """The kept fractions a front plot marks: ``max_params`` (a fraction or a count) when given,
    else the run's own ``--max-params``; ``None`` when neither is set. Raises EvopruneError for a
    count above the dense model's."""
    value = max_params if max_params is not None else run.settings.get("max_params")
    return None if value is None else [params_fraction(value, run.dense_params)]


def plot_front(store: Store, run: Run, path=None, budget_lines: list[float] | None = None) -> bytes:
    """:func:`front_figure` as PNG bytes (and written to ``path``)."""
    return render_png(front_figure(store, run, budget_lines), path)


# -- rounds -------------------------------------------------------------------------------------
def rounds_figure(rounds: list[dict]) -> Figure:
    """Hypervolume of the evaluated front after each round (rounds that recorded none are left out)."""
    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    points = [(x["round"], x["hypervolume"]) for x in rounds if x.get("hypervolume") is not None]
    if points:
        ax.plot(*zip(*points, strict=True), "-o")
    ax.set_title("hypervolume of the evaluated front")
    ax.set_xlabel("round")
    ax.set_ylabel("hypervolume")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


def plot_rounds(rounds: list[dict], path=None) -> bytes:
    """:func:`rounds_figure` as PNG bytes (and written to ``path``)."""
    return render_png(rounds_figure(rounds), path)


# -- per-layer levels ---------------------------------------------------------------------------
def levels_figure(store: Store, run: Run) -> Figure:
    """Heat maps of the per-layer levels of the front's configurations, attention and MLP side
    by side with the front members' labels once on the left, each with its own discrete colour bar."""
    front = front_evaluations(store, run)  # the members pareto lists
    space = SearchSpace.from_dict(run.space)
    # As pareto_front shows them: a level that keeps the full width reads as 0 (untouched).
    levels = [space.canonical(e.levels) for e in front]
    L = space.num_layers
    attn = np.array([x[:L] for x in levels]) if front else np.zeros((1, L))
    mlp = np.array([x[L:] for x in levels]) if front else np.zeros((1, L))
    tops = (max(run.space.get("attn_levels", 0), int(attn.max())), max(run.space.get("mlp_levels", 0), int(mlp.max())))
    rows = max(len(front), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * max(rows, 4) + 1.6), sharey=True, layout="constrained")
    labels = [f"#{e.id} {e.params_fraction:.0%}" for e in front]
    for ax, data, kind, top in ((axes[0], attn, "attention", tops[0]), (axes[1], mlp, "MLP", tops[1])):
        top = max(top, 1)
        im = ax.imshow(data, aspect="auto", cmap=plt.get_cmap("viridis", top + 1), vmin=-0.5, vmax=top + 0.5,
                       interpolation="nearest")  # fmt: skip
        ax.set_title(f"{kind} level per layer")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        bar = fig.colorbar(im, ax=ax, ticks=range(top + 1) if top <= 10 else MaxNLocator(nbins=8, integer=True))
        bar.set_label(f"0: untouched, {top}: removed", fontsize=8)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0].set_ylabel("front member (id, kept parameters)")
    return fig


def plot_levels(store: Store, run: Run, path=None) -> bytes:
    """:func:`levels_figure` as PNG bytes (and written to ``path``)."""
    return render_png(levels_figure(store, run), path)


# -- the search's own predictions ---------------------------------------------------------------
def predictions_figure(check) -> Figure:
    """The search's predictions (``evoprune.reporting.search_predictions.SearchPredictions``) against what it
    measured: each acquired evaluation with its predicted interval, then the pooled Kendall tau
    and the interval coverage over every acquired evaluation so far, each with its interval."""
    fig = plt.figure(figsize=(10, 5), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1.25, 1])
    ax, tau_ax = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1])
    cover_ax = fig.add_subplot(grid[1, 1], sharex=tau_ax)
    tau_ax.tick_params(labelbottom=False)
    level = check.level
    z = float(norm.ppf(0.5 + level / 2))
    pts = check.points
    measured = np.array([p["measured"] for p in pts])
    predicted = np.array([p["predicted"] for p in pts])
    below = predicted - np.array([p["lower"] for p in pts])
    above = np.array([p["upper"] for p in pts]) - predicted
    inside = np.array([p["inside"] for p in pts])
    m_err = z * np.array([p["measured_se"] or 0.0 for p in pts])
    for mask, colour, where in ((inside, "#1f77b4", "inside"), (~inside, "#d62728", "outside")):
        if mask.any():
            ax.errorbar(measured[mask], predicted[mask], xerr=m_err[mask], fmt="none", ecolor="#999999",
                        elinewidth=0.6, alpha=0.6)  # fmt: skip
            ax.errorbar(measured[mask], predicted[mask], yerr=[below[mask], above[mask]], fmt="o", ms=4,
                        c=colour, ecolor=colour, elinewidth=0.8, alpha=0.7,
                        label=f"{where} its {level:.0%} interval")  # fmt: skip
    span = [min((measured - m_err).min(), (predicted - below).min()),
            max((measured + m_err).max(), (predicted + above).max())]  # fmt: skip
    ax.plot(span, span, "--", c="#777777", lw=1, label="predicted = measured")
    ax.set_xlabel(f"measured {check.target} (first rung)")
    ax.set_ylabel(f"predicted {check.target}, before evaluation")
    pooled = check.pooled
    ax.set_title(
        f"{pooled['n']} acquired evaluations: Kendall tau {_fmt(pooled['kendall_tau'])} "
        f"[{_fmt(pooled['tau_low'])}, {_fmt(pooled['tau_high'])}],\n"
        f"{pooled['inside']} of {pooled['n']} inside their {level:.0%} interval",
        fontsize=10,
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)

    rounds = [r["round"] for r in check.by_round]
    for axis, key, low, high, colour, title in (
        (tau_ax, "kendall_tau", "tau_low", "tau_high", "#ff7f0e", "Kendall tau, all acquired so far"),
        (cover_ax, "coverage", "coverage_low", "coverage_high", "#2ca02c", f"share inside the {level:.0%} interval"),
    ):
        value = np.array([np.nan if r[key] is None else r[key] for r in check.by_round], dtype=float)
        lo = np.array([np.nan if r[low] is None else r[low] for r in check.by_round], dtype=float)
        hi = np.array([np.nan if r[high] is None else r[high] for r in check.by_round], dtype=float)
        axis.fill_between(rounds, lo, hi, color=colour, alpha=0.25, lw=0, label=f"{level:.0%} interval")
        axis.plot(rounds, value, "-o", c=colour, ms=3)
        axis.set_title(title, fontsize=10)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    tau_ax.set_ylim(-1.05, 1.05)
    tau_ax.axhline(0, c="#999999", lw=0.8)
    cover_ax.set_ylim(0, 1.02)
    cover_ax.axhline(level, ls="--", c="#777777", lw=1, label="calibrated")
    cover_ax.set_xlabel("round")
    cover_ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_predictions(check, path=None) -> bytes:
    """:func:`predictions_figure` as PNG bytes (and written to ``path``)."""
    return render_png(predictions_figure(check), path)


# -- layout check -------------------------------------------------------------------------------
def _texts(ax) -> list[tuple[str, object]]:
    """(name, artist) of every visible, non-empty decoration of ``ax`` that is drawn: the tick
    labels inside the view, axis labels, offset texts, the title and the legend."""
    out = []
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        lo, hi = sorted(axis.get_view_interval())
        tol = 1e-9 * max(1.0, abs(hi - lo))
        ticks = axis.get_major_ticks(len(axis.get_majorticklocs())) + axis.get_minor_ticks(
            len(axis.get_minorticklocs())
        )
        for tick in ticks:
            if not lo - tol <= tick.get_loc() <= hi + tol:
                continue
            for label in (tick.label1, tick.label2):
                if label.get_visible() and label.get_text().strip():
                    out.append((f"{name} tick label {label.get_text()!r}", label))
        for what, text in (("label", axis.label), ("offset", axis.get_offset_text())):
            if text.get_visible() and text.get_text().strip():
                out.append((f"{name} {what} {text.get_text()!r}", text))
    if ax.title.get_visible() and ax.title.get_text().strip():
        out.append((f"title {ax.title.get_text()!r}", ax.title))
    legend = ax.get_legend()
    if legend is not None and legend.get_visible():
        out.append(("legend", legend))
    return out


def _overlap(a, b, tolerance: float) -> bool:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > tolerance and height > tolerance


def overlapping_decorations(fig: Figure, tolerance: float = 0.5) -> list[str]:
    """Pairs of parts of ``fig`` that cover each other, as readable lines; empty when none do.

    Checked: tick labels of one axis against each other and against their axes' title; every
    decoration (tick labels, axis labels, title, legend) of one axes, colour bars included,
    against the plotting area and the decorations of every other axes. Overlaps narrower than
    ``tolerance`` pixels in either direction do not count.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    names = {}
    for i, ax in enumerate(axes):
        colour_bar = ax.get_label() == "<colorbar>"
        what = ax.get_title() or ax.get_ylabel() or ("" if colour_bar else ax.get_label())
        names[ax] = ("colour bar" if colour_bar else "axes") + (f" {what!r}" if what else f" {i}")
    boxes = {ax: [(n, t.get_window_extent(renderer)) for n, t in _texts(ax)] for ax in axes}
    found = []
    for ax in axes:
        items = boxes[ax]
        ticks = [(n, b) for n, b in items if " tick label " in n]
        for i, (n1, b1) in enumerate(ticks):
            for n2, b2 in ticks[i + 1 :]:
                if n1[0] == n2[0] and _overlap(b1, b2, tolerance):
                    found.append(f"{names[ax]}: {n1} overlaps {n2}")
            for n2, b2 in items:
                if n2.startswith("title") and _overlap(b1, b2, tolerance):
                    found.append(f"{names[ax]}: {n1} overlaps the {n2}")
    for i, a in enumerate(axes):
        for b in axes[i + 1 :]:
            for first, second in ((a, b), (b, a)):
                area = second.get_window_extent(renderer)
                for n1, b1 in boxes[first]:
                    if _overlap(b1, area, tolerance):
                        found.append(f"{names[first]}: {n1} covers the plotting area of {names[second]}")
            for n1, b1 in boxes[a]:
                for n2, b2 in boxes[b]:
                    if _overlap(b1, b2, tolerance):
                        found.append(f"{names[a]}: {n1} overlaps {names[b]}: {n2}")
    return found
