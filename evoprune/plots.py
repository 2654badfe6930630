"""Figures of a run, drawn with matplotlib (headless)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evoprune.pareto import front_of, knee_index, objectives, run_objectives  # noqa: E402
from evoprune.space import SearchSpace  # noqa: E402
from evoprune.store import Run, Store  # noqa: E402


def _save(fig, path: str | Path | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def plot_front(store: Store, run: Run, path=None, budget_lines: list[float] | None = None) -> bytes:
    """Every successful evaluation (grey), the front (line), budget lines and the knee."""
    evals = store.evaluations(run.id)
    ok = [e for e in evals if e.status == "ok" and "ppl" in e.metrics]
    names = run_objectives(run)
    front = front_of(evals, ("ppl", "params")) if "ppl" in names else front_of(evals, names)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([e.params_fraction for e in ok], [e.metrics["ppl"] for e in ok], s=14, c="#bbbbbb",
               label="evaluated")  # fmt: skip
    if front:
        fx = [e.params_fraction for e in front]
        fy = [e.metrics["ppl"] for e in front]
        ax.plot(fx, fy, "-o", c="#1f77b4", ms=5, label="Pareto front")
        k = knee_index(objectives(front, ("ppl", "params")))
        ax.scatter([fx[k]], [fy[k]], s=140, facecolors="none", edgecolors="#d62728", linewidths=2,
                   label=f"knee (#{front[k].id})")  # fmt: skip
    for b in budget_lines or []:
        ax.axvline(b, ls="--", c="#2ca02c", label=f"budget {b:.0%}")
    ax.set_yscale("log")
    ax.set_xlabel("kept fraction of parameters")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"run {run.id}: {run.model}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, path)


def plot_rounds(rounds: list[dict], path=None) -> bytes:
    """Hypervolume and the surrogate's out-of-sample Kendall tau per round."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    r = [x["round"] for x in rounds]
    a.plot(r, [x["hypervolume"] or 0 for x in rounds], "-o")
    a.set_title("hypervolume of the evaluated front")
    a.set_xlabel("round")
    taus = [(x["round"], x["tau"]) for x in rounds if x.get("tau") is not None]
    if taus:
        b.plot(*zip(*taus, strict=True), "-o", c="#ff7f0e")
    b.set_ylim(-1, 1)
    b.axhline(0, c="#999999", lw=0.8)
    b.set_title("surrogate Kendall tau on each new batch")
    b.set_xlabel("round")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_levels(store: Store, run: Run, path=None) -> bytes:
    """Heat map of the per-layer levels of the front's configurations (as ``pareto_front`` shows
    them: an untouched sub-layer at level 0)."""
    front = front_of(store.evaluations(run.id), run_objectives(run))
    space = SearchSpace.from_dict(run.space)
    levels = [space.canonical(e.levels) for e in front]
    L = space.num_layers
    attn = np.array([x[:L] for x in levels]) if front else np.zeros((1, L))
    mlp = np.array([x[L:] for x in levels]) if front else np.zeros((1, L))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * max(len(front), 4) + 1.5))
    labels = [f"#{e.id} {e.params_fraction:.0%}" for e in front]
    for ax, data, title in ((axes[0], attn, "attention level"), (axes[1], mlp, "MLP level")):
        im = ax.imshow(data, aspect="auto", cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)
