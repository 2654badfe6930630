"""evoprune's picks against the simple recipes an expert runs first, on text the search never saw.

SmolLM2-135M, search and calibration on WikiText-2 valid with the default settings (no tuning
flags). Each method's pick under the budget (its own choice: evoprune by the highest rung of its
fidelity ladder) is then measured on held-out text: the first 16,384 tokens of WikiText-2 test
and of PTB valid in 512-token windows and all 570 ARC-Easy dev questions, through the masks the
search measured with (the tests show the exported model's logits equal them). One-shot baselines
(`uniform` as LLM-Pruner, `mlp-only`, `flap`) do not depend on the seed and run once per budget.
With ``--tau N`` the N best evaluated configurations near each evoprune budget are also measured
on held-out text, for the rank agreement between the figure the search chose by and held-out
perplexity, and between two random halves of the held-out windows (its ceiling).

    python benchmarks/smollm2_compare.py --seeds 0 --budgets 0.8 --out benchmarks/results/a.json
    python benchmarks/smollm2_compare.py --render benchmarks/results/a.json,benchmarks/results/b.json
    python benchmarks/smollm2_compare.py --tiny ...     # CI: a tiny random model, a few evaluations

Parts run in parallel processes (one per seed or budget) write their own JSON; ``--render``
merges them into the "SmolLM2-135M: picks on held-out text" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from benchmarks._markdown import write_section  # noqa: E402
from evoprune.backend.data import load_text, token_windows  # noqa: E402
from evoprune.backend.evaluate import quality, window_nll  # noqa: E402
from evoprune.backend.settings import BackendSettings  # noqa: E402
from evoprune.choice.compare import best_under_budget  # noqa: E402
from evoprune.engine.baselines.one_shot import FINE_GRID_METHODS, method_settings  # noqa: E402
from evoprune.engine.context import library_versions  # noqa: E402
from evoprune.engine.run import prepare_backend, search  # noqa: E402
from evoprune.engine.settings import SearchSettings  # noqa: E402
from evoprune.objectives.pareto import contenders, rung_offsets, selection_value  # noqa: E402
from evoprune.objectives.spec import CostEvaluator  # noqa: E402
from evoprune.store import Store  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
HELD_OUT = {"wikitext2_test": SHARED / "wikitext-2" / "test.txt", "ptb_valid": SHARED / "ptb" / "valid.txt"}
SECTION = "SmolLM2-135M: picks on held-out text"


class HeldOut:
    """Held-out windows and questions, built once, measured for any configuration of a backend."""

    def __init__(self, tokenizer, tokens: int, seq_len: int, arc_limit: int):
        self.windows = {
            name: token_windows(tokenizer, load_text(str(path)).text, tokens, seq_len)
            for name, path in HELD_OUT.items()
            if path.exists()
        }
        self.arc_limit = arc_limit

    def perplexity(self, backend, levels, names=None) -> dict:
        """Perplexity, its standard error and the per-window NLLs (``nll:NAME``, nats, for paired
        differences between methods on the same windows) of ``levels`` on every held-out text: the
        windows are measured once, pruned exactly as ``backend.evaluate_on`` measures them."""
        out = {}
        for name, windows in self.windows.items():
            if names is None or name in names:
                nll = levels_window_nll(backend, levels, windows)
                mean, se = float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(len(nll)))
                ppl = math.exp(mean) if mean < 700 else math.inf
                out[f"ppl:{name}"], out[f"ppl_se:{name}"] = ppl, ppl * se
                out[f"nll:{name}"] = [round(float(v), 6) for v in nll]
        return out

    def model_perplexity(self, model, batch_size: int = 4) -> dict:
        """A plain model's (the dense one, an export) perplexity on every held-out text."""
        out = {}
        for name, windows in self.windows.items():
            q = quality(model, windows, None, batch_size)
            out[f"ppl:{name}"], out[f"ppl_se:{name}"] = q["ppl"], q["ppl_se"]
        return out

    def measure(self, backend, levels) -> dict:
        out = self.perplexity(backend, levels)
        if self.arc_limit and (SHARED / "arc_easy" / "ARC-Easy-Dev.jsonl").exists():
            from evoprune.tasks import TaskEvaluator

            r = TaskEvaluator(backend, "arc_easy", limit=self.arc_limit, data_dir=SHARED).result(np.asarray(levels))
            out["acc:arc_easy"], out["acc_se:arc_easy"], out["arc_n"] = r.metrics["acc"], r.stderr["acc"], r.n
        return out


def dense_held_out(backend, held: HeldOut) -> dict:
    out = held.model_perplexity(backend.loaded.model, backend.settings.batch_size)
    if held.arc_limit:
        out.update({k: v for k, v in held.measure(backend, backend.space.lower).items() if "arc" in k})
    return out


def rotated_text(path: str, start: float) -> str:
    """``path``'s text read from the first article heading (a WikiText `` = Title = `` line) at
    or after the fraction ``start`` of its characters, wrapping round to what came before it: a
    draw of the search text whose rungs, calibration and validation windows are other passages.
    Returns the path of that text, written once to the temporary directory."""
    if not start:
        return path
    text = Path(path).read_text()
    at = int(start * len(text))
    heading = re.compile(r"^ = [^=].* = $", re.M)
    match = heading.search(text, at) or heading.search(text)
    cut = match.start() if match else text.find("\n", at) + 1
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]  # two files of one name are two texts
    out = Path(tempfile.gettempdir()) / "evoprune-bench" / f"{Path(path).stem}-{digest}-from-{cut}{Path(path).suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():  # parts started together may write it at once: each its own name, then rename
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text[cut:] + text[:cut])
        tmp.replace(out)
    return str(out)


def tokens_spent(store: Store, run, evals) -> dict:
    """Tokens the method's real evaluations read: first rungs, higher rungs, validation."""
    first = run.settings["backend"]["eval_tokens"]
    rows = store.fidelities(run.id, status="ok")
    return {
        "first_rung": first * sum(e.status != "pending" for e in evals),
        "ladder": sum(f.tokens for f in rows if f.split == "search"),
        "validation": sum(f.tokens for f in rows if f.split == "validation"),
        "promotions": sum(f.split == "search" for f in rows),
    }


def levels_window_nll(backend, levels, windows: torch.Tensor) -> np.ndarray:
    """Mean next-token NLL (nats) of configuration ``levels`` on each of ``windows``: (windows,).
    Their mean is the log-perplexity, as ``HeldOut.perplexity`` measures it."""
    with backend.applied(np.asarray(levels)):
        return window_nll(backend.loaded.model, windows).numpy()


def split_half_tau(window_nll: np.ndarray, splits: int = 200, seed: int = 0) -> float:
    """Mean Kendall tau between the rankings two random halves of the held-out windows give
    ((configurations, windows) NLL): how far held-out text agrees with itself about their order,
    a ceiling for what any other figure of the same size can reach against it."""
    rng = np.random.default_rng(seed)
    n = window_nll.shape[1]
    taus = []
    for _ in range(splits):
        order = rng.permutation(n)
        a, b = window_nll[:, order[: n // 2]].mean(1), window_nll[:, order[n // 2 :]].mean(1)
        taus.append(kendalltau(a, b)[0])
    return float(np.nanmean(taus))


def fresh_windows(backend, tokens: int) -> torch.Tensor:
    """``tokens`` tokens of the search text after every window the search read (rungs, calibration,
    validation): (windows, seq_len) token ids that judged nothing, so they carry none of the luck
    the search selected its best configurations by."""
    s = backend.settings
    skip = backend.validation_skip + s.validation_token_count
    return token_windows(backend.loaded.tokenizer, backend.text.text, tokens, s.seq_len, skip_tokens=skip)


def subset_tau(window_nll: np.ndarray, target, windows: int, draws: int = 200, seed: int = 0) -> float:
    """Mean Kendall tau between ``target`` and the mean of ``windows`` random windows of ``window_nll``
    ((configurations, windows) NLL): how well a figure of that many tokens orders them."""
    n = window_nll.shape[1]
    if windows >= n:
        return float(kendalltau(window_nll.mean(1), target)[0])
    rng = np.random.default_rng(seed)
    return float(np.nanmean([kendalltau(window_nll[:, rng.permutation(n)[:windows]].mean(1), target)[0]
                             for _ in range(draws)]))  # fmt: skip


def rank_agreement(backend, held: HeldOut, evals, budget: float, n: int, fresh: torch.Tensor | None = None) -> dict:
    """Kendall tau over the ``n`` best configurations within 5% under ``budget``: the figure the
    search chooses by (its contenders, then the rest, each by the highest rung it reached; see
    ``evoprune.objectives.pareto.contenders``) and the first-rung figure, each against held-out
    WikiText-2 test, and held-out text against itself (random halves of its windows). With
    ``fresh`` windows of the search text (``fresh_windows``), also what a new measurement of
    2,048 tokens and more of them, unbiased by the selection, would reach (``tau_fresh``)."""
    near = [e for e in evals if e.status == "ok" and budget - 0.05 <= e.params_fraction <= budget]
    offsets = rung_offsets(near, "ppl")
    # In the order the search chooses by: its contenders (the finalists), then the rest.
    first_in = {e.id for e in contenders(near, "ppl")}
    near.sort(key=lambda e: (e.id not in first_in, selection_value(e, "ppl", offsets), e.id))
    near = near[:n]
    window_nll = np.array([levels_window_nll(backend, e.levels, held.windows["wikitext2_test"]) for e in near])
    held_ppl = [math.exp(v) for v in window_nll.mean(1)] if len(near) else []
    chosen_by = list(range(len(near)))  # the position in that order
    first = [math.log(e.metrics["ppl"]) for e in near]
    out = {
        "n": len(near),
        "tau_chosen_by": float(kendalltau(chosen_by, held_ppl)[0]) if len(near) > 2 else None,
        "tau_first_rung": float(kendalltau(first, held_ppl)[0]) if len(near) > 2 else None,
        "tau_split_half": split_half_tau(window_nll) if len(near) > 2 and window_nll.shape[1] > 3 else None,
        "climbed": sum(bool(e.ladder) for e in near),
        "points": [
            [e.id, e.params_fraction, v, h, bool(e.ladder)] for e, v, h in zip(near, chosen_by, held_ppl, strict=True)
        ],
    }
    if fresh is not None and len(near) > 2:
        fresh_nll = np.array([levels_window_nll(backend, e.levels, fresh) for e in near])
        windows, seq = fresh.shape
        sizes = sorted({max(1, t // seq) for t in (2048, 4096, 8192) if t < windows * seq} | {windows})
        out["tau_fresh"] = {str(w * seq): subset_tau(fresh_nll, held_ppl, w) for w in sizes}
        out["fresh_best_heldout"] = held_ppl[int(fresh_nll.mean(1).argmin())]
    return out


def run_method(backend, held: HeldOut, s: SearchSettings, store: str, args) -> dict:
    start = time.perf_counter()
    result = search(args.model, args.data, store, s, backend=backend)
    wall = time.perf_counter() - start
    grid = backend.with_grid(method_settings(s).backend)
    costs = CostEvaluator(grid.space, grid.loaded.model.config)
    with Store(store) as st:
        evals = st.evaluations(result.run.id)
        rounds = st.rounds(result.run.id)
        fid = st.fidelities(result.run.id, status="ok")
        spent = tokens_spent(st, result.run, evals)
    best = best_under_budget(evals, "ppl", s.budget, costs)
    row = {"budget": s.max_params, "seed": s.seed, "method": s.method, "run": result.run.id,
           "evaluations": len(evals), "failed": sum(e.status == "failed" for e in evals), "tokens": spent,
           "wall_s": wall if result.new_evaluations else None,
           "eval_s": sum(e.duration_s or 0 for e in evals), "ladder_s": sum(f.duration_s or 0 for f in fid),
           "fit_s": sum(r["fit_s"] for r in rounds), "search_s": sum(r["search_s"] for r in rounds),
           "points": [[e.params_fraction, e.metrics.get("ppl")] for e in evals if e.status == "ok"]}  # fmt: skip
    if best is None:
        return row
    top = max(best.ladder) if best.ladder else None
    row.update(best_id=best.id, params_fraction=best.params_fraction, levels=best.levels,
               search_ppl=best.metrics["ppl"], chosen_ppl=(best.ladder[top] if top else best.metrics)["ppl"],
               chosen_tokens=top or s.backend.eval_tokens,
               validation_ppl=best.validation["metrics"]["ppl"] if best.validation else None)  # fmt: skip
    row["heldout"] = held.measure(grid, best.levels)
    tau_budgets = [float(b) for b in args.tau_budgets.split(",")] if args.tau_budgets else None
    if args.tau and s.method == "evoprune" and (tau_budgets is None or s.max_params in tau_budgets):
        fresh = fresh_windows(grid, args.tau_fresh) if args.tau_fresh else None
        row["tau"] = rank_agreement(grid, held, evals, s.max_params, args.tau, fresh)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(SHARED / "wikitext-2" / "valid.txt"))
    p.add_argument("--evals", type=int, default=60)
    p.add_argument("--budgets", default="0.8,0.7")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="evoprune,uniform,mlp-only,flap")
    p.add_argument(
        "--text-start",
        type=float,
        default=0.0,
        help="read --data from the first article this fraction of the way in (wrapping round): another draw "
        "of the search and calibration text for every method",
    )
    p.add_argument("--heldout-tokens", type=int, default=16384)
    p.add_argument("--arc-limit", type=int, default=570, help="ARC-Easy dev questions (570: all)")
    p.add_argument("--tau", type=int, default=0, help="measure the N best near each evoprune budget on held-out text")
    p.add_argument(
        "--tau-fresh",
        type=int,
        default=0,
        help="with --tau: also measure those N on this many unread tokens of the search text",
    )
    p.add_argument("--tau-budgets", default=None, help="only at these budgets (comma-separated; default: all)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense model's held-out figures")
    p.add_argument("--store", default=str(ROOT / "benchmarks" / "results" / "smollm2_compare.db"))
    p.add_argument("--out", help="results JSON (default: the store's name with .json)")
    p.add_argument("--tiny", action="store_true", help="a tiny random model and a few evaluations (CI)")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="the file --render writes (plots beside it)")
    p.add_argument("--render", help="only write BENCHMARKS.md and the plot from results JSON files (comma-separated)")
    args = p.parse_args()
    if args.render:
        render_results(args)
        return

    backend_settings = BackendSettings()
    if args.tiny:
        args.evals, args.heldout_tokens, args.arc_limit = 8, 512, 0
        backend_settings = BackendSettings(eval_tokens=256, calib_tokens=256, seq_len=64)
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.out) if args.out else Path(args.store).with_suffix(".json")
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    base = SearchSettings(evals=args.evals, backend=backend_settings)
    args.data = rotated_text(args.data, args.text_start)
    t0 = time.perf_counter()
    backend = prepare_backend(args.model, args.data, base)
    held = HeldOut(backend.loaded.tokenizer, args.heldout_tokens, backend_settings.seq_len, args.arc_limit)
    results = {"machine": platform.platform(), "threads": torch.get_num_threads(), "versions": library_versions(),
               "settings": {"criterion": backend_settings.criterion, "compensation": backend_settings.compensation,
                            "eval_tokens": backend_settings.eval_tokens, "ladder": list(backend_settings.ladder_tokens),
                            "ladder_windows": backend_settings.ladder_windows,
                            "validation_tokens": backend_settings.validation_token_count,
                            "seq_len": backend_settings.seq_len, "calib_tokens": backend_settings.calib_tokens,
                            "text_start": args.text_start},
               "load_s": time.perf_counter() - t0, "args": vars(args), "rows": []}  # fmt: skip
    if not args.no_dense:
        results["dense"] = {"heldout": dense_held_out(backend, held)}
    for seed in seeds:  # seed-major: a stopped run still has whole seeds
        for budget in budgets:
            for method in methods:
                if method in FINE_GRID_METHODS and seed != seeds[0]:
                    continue  # one-shot recipes do not depend on the seed
                s = replace(base, method=method, seed=seed, max_params=budget)
                row = run_method(backend, held, s, args.store, args)
                row["text_start"] = args.text_start
                results["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("points", "levels")}), flush=True)
                out_json.write_text(json.dumps(results, indent=2))
    out_json.write_text(json.dumps(results, indent=2))
    if not args.no_write and not args.tiny:
        args.render = str(out_json)
        render_results(args)
    print(f"wrote {out_json}")


# -- rendering ------------------------------------------------------------------------------
def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _pm(h: dict, key: str, spec=".1f") -> str:
    name = key.split(":", 1)[1]
    kind = key.split(":", 1)[0]
    v, se = h.get(key), h.get(f"{kind}_se:{name}")
    return "-" if v is None else f"{v:{spec}} ±{se:{spec}}" if se is not None else f"{v:{spec}}"


def plot_fronts(rows: list[dict], out: Path) -> None:
    """One panel per budget: every method's evaluated points (first rung) and each pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.4), squeeze=False)
    colors = {"evoprune": "C3", "uniform": "C7", "mlp-only": "C8", "flap": "C9", "owl": "C5", "random": "C0",
              "predictor-rank": "C2", "ga": "C1"}  # fmt: skip
    for ax, budget in zip(axes[0], budgets, strict=True):
        seen = set()
        for r in rows:
            if r["budget"] != budget:
                continue
            c = colors.get(r["method"], "k")
            label = r["method"] if r["method"] not in seen else None
            seen.add(r["method"])
            pts = [(f, q) for f, q in r.get("points", []) if q is not None and math.isfinite(q)]
            ax.scatter([f for f, _ in pts], [q for _, q in pts], s=9, alpha=0.35, color=c, label=label)
            h = r.get("heldout", {}).get("ppl:wikitext2_test")
            if h:
                ax.scatter([r["params_fraction"]], [h], s=80, marker="*", color=c, edgecolors="k", linewidths=0.6)
        ax.axvline(budget, color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlim(max(0.4, budget - 0.25), min(1.0, budget + 0.05))
        ax.set_xlabel("kept parameter fraction")
        ax.set_ylabel("perplexity")
        ax.set_title(
            f"budget {budget:.0%}: dots = first-rung figures (WikiText-2 valid),\nstars = picks on WikiText-2 test"
        )
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def render(results: dict) -> str:
    rows = results["rows"]
    st = results["settings"]
    a = results.get("args", {})
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    seeds = sorted({r["seed"] for r in rows if r["method"] == "evoprune"})
    dense = results.get("dense", {}).get("heldout", {})
    starts = sorted({r.get("text_start", 0.0) for r in rows})
    # Parts may score different numbers of ARC questions: say which, since the error bars differ.
    arc_ns = sorted({r["heldout"]["arc_n"] for r in rows if "arc_n" in r.get("heldout", {})})
    arc_text = (
        " or ".join(map(str, arc_ns)) + " (per run: see `ARC-Easy`'s ±)"
        if len(arc_ns) > 1
        else str(arc_ns[0] if arc_ns else a.get("arc_limit"))
    )
    lines = [
        f"Command: `python benchmarks/smollm2_compare.py --evals {a.get('evals')} --seeds {','.join(map(str, seeds))} "
        f"--budgets {','.join(str(b) for b in budgets)}`"
        + (f", with `--tau {a['tau']}" if a.get("tau") else "")
        + (f" --tau-fresh {a['tau_fresh']}" if a.get("tau_fresh") else "")
        + ("` for the runs the τ table lists" if a.get("tau") else "")
        + (
            f"; each seed on its own draw of the search text, `--text-start` {', '.join(f'{t:.3g}' for t in starts)}, "
            "where every method ran once"
            if len(starts) > 1
            else ""
        )
        + " (parts in parallel processes, merged "
        "with `--render`). Every method searched or pruned with evoprune's defaults: "
        f"`{st['criterion']}` importance, `{st['compensation']}` compensation on {st['calib_tokens']} calibration "
        f"tokens, {st['seq_len']}-token windows; evoprune's first rung {st['eval_tokens']} tokens, ladder "
        f"{', '.join(map(str, st['ladder'])) or 'none'}"
        + (f" ({st['ladder_windows']} windows)" if st.get("ladder_windows") else "")
        + f", validation {st['validation_tokens']} tokens, all of "
        f"WikiText-2 valid; {a.get('evals')} real evaluations. Held-out: the first {a.get('heldout_tokens')} tokens "
        f"of WikiText-2 test and of PTB valid ({st['seq_len']}-token windows)"
        + (f" and {arc_text} ARC-Easy dev questions" if arc_text != "0" else " (ARC-Easy not measured)")
        + ", none of which any method saw; ± is one standard error (per-window for perplexity, binomial for "
        "accuracy).",
        "",
        f"Machine: {results['machine']}, {results['threads']} torch thread(s) per process, CPU float32; torch "
        f"{results['versions']['torch']}, transformers {results['versions']['transformers']}.",
        "",
    ]
    if dense:
        lines += [f"Dense SmolLM2-135M: WikiText-2 test {_pm(dense, 'ppl:wikitext2_test')}, PTB "
                  f"{_pm(dense, 'ppl:ptb_valid')}, ARC-Easy {_pm(dense, 'acc:arc_easy', '.3f')}.", ""]  # fmt: skip
    lines += [
        "### Held-out quality of each pick (median over runs)",
        "",
        "`runs`: searches (seeds) or one-shot prunings the medians are over"
        + (", one per draw of the search text for every method" if len(starts) > 1 else "")
        + ". `selected on`: the figure the method chose its pick by (WikiText-2 valid, tokens in brackets); `validation`: "
        "evoprune's disjoint validation split of WikiText-2 valid; the last three columns are held-out.",
        "",
        "| budget | method | runs | kept params | real evals | tokens read | selected on | validation | "
        "WikiText-2 test | PTB | ARC-Easy acc | evoprune / method (WikiText-2 test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for budget in budgets:
        methods = list(dict.fromkeys(r["method"] for r in rows if r["budget"] == budget))
        for m in methods:
            rs = [r for r in rows if r["budget"] == budget and r["method"] == m and r.get("heldout")]
            med = {
                k: _median(r["heldout"].get(k) for r in rs)
                for k in ("ppl:wikitext2_test", "ppl:ptb_valid", "acc:arc_easy")
            }
            summary[(budget, m)] = med
            mid = (
                min(rs, key=lambda r: abs(r["heldout"]["ppl:wikitext2_test"] - med["ppl:wikitext2_test"])) if rs else {}
            )
            tok = _median(sum(r["tokens"][k] for k in ("first_rung", "ladder", "validation")) for r in rs)
            lines.append("| " + " | ".join([
                f"{budget:.0%}", m, str(len(rs)), _fmt(_median(r.get("params_fraction") for r in rs), ".3f"),
                _fmt(_median(r["evaluations"] for r in rs), ".0f"), _fmt(tok / 1e3 if tok else None, ".0f") + "k",
                f"{_fmt(_median(r.get('chosen_ppl') for r in rs))} ({_fmt(_median(r.get('chosen_tokens') for r in rs), '.0f')})",
                _fmt(_median(r.get("validation_ppl") for r in rs)),
                _pm({**mid.get("heldout", {}), "ppl:wikitext2_test": med["ppl:wikitext2_test"]}, "ppl:wikitext2_test"),
                _pm({**mid.get("heldout", {}), "ppl:ptb_valid": med["ppl:ptb_valid"]}, "ppl:ptb_valid"),
                _pm({**mid.get("heldout", {}), "acc:arc_easy": med["acc:arc_easy"]}, "acc:arc_easy", ".3f"),
                "-",
            ]) + " |")  # fmt: skip
        ours = summary.get((budget, "evoprune"), {}).get("ppl:wikitext2_test")
        for i, line in enumerate(lines):
            cells = line.split(" | ")
            if len(cells) > 2 and cells[0] == f"| {budget:.0%}" and cells[1] != "evoprune" and ours:
                theirs = summary.get((budget, cells[1]), {}).get("ppl:wikitext2_test")
                if theirs:
                    lines[i] = line[: line.rfind("| -")] + f"| {ours / theirs:.2f}x |"
    lines += ["", "(± of a median: the standard error of the run whose figure is nearest the median.)", "",
              "### Targets (issue #12)", ""]  # fmt: skip
    for budget in budgets:
        ours = summary.get((budget, "evoprune"), {}).get("ppl:wikitext2_test")
        if not ours:
            continue
        base = {
            m: v["ppl:wikitext2_test"]
            for (b, m), v in summary.items()
            if b == budget and m != "evoprune" and v["ppl:wikitext2_test"]
        }
        if base:
            best = min(base, key=base.get)
            lines.append(f"- {budget:.0%}: evoprune {ours:.1f} vs the best baseline ({best}, {base[best]:.1f}) = "
                         f"{ours / base[best]:.2f}x (target <= 0.8x: {'met' if ours <= 0.8 * base[best] else 'NOT met'}).")  # fmt: skip
        if base.get("uniform"):
            lines.append(f"- {budget:.0%}: evoprune vs `uniform` (LLM-Pruner's recipe, {base['uniform']:.1f}) = "
                         f"{ours / base['uniform']:.2f}x (target <= 0.5x: {'met' if ours <= 0.5 * base['uniform'] else 'NOT met'}).")  # fmt: skip
    lines += paired_lines(rows)
    taus = [r for r in rows if r.get("tau")]
    if taus:
        lines += ["", "### Does the figure the search chooses by rank like held-out text?", "",
                  "Kendall τ over the best evaluated configurations within 5% under the budget (ranked by the figure "
                  "the search chooses by), against their WikiText-2 test perplexity on the held-out tokens above. "
                  "`half against half`: held-out text against itself, the mean τ between the orders two random halves "
                  "of its windows give (how far any figure of half its size could agree with it). `unread search "
                  "text`: the same configurations measured anew on tokens of the search text that no rung, "
                  "calibration or validation window read (`--tau-fresh`; mean τ over random subsets of that many "
                  "tokens), free of the luck they were selected by. Held-out WikiText-2 test of the pick, of the best "
                  "by the unread text and of the best of them.", "",
                  "| budget | text start | seed | configurations | of which climbed the ladder | τ, figure chosen by | τ, first rung only "
                  "| τ, held-out half against half | τ, unread search text (tokens: τ) | held-out: pick / best by "
                  "unread / best |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in taus:
            t = r["tau"]
            fresh = ", ".join(f"{int(k):,}: {v:.2f}" for k, v in t.get("tau_fresh", {}).items()) or "-"
            held = [p[3] for p in t["points"]]
            pick = next((p[3] for p in t["points"] if p[0] == r.get("best_id")), None)  # the run's own pick
            picks = (
                f"{_fmt(pick, '.2f')} / {_fmt(t.get('fresh_best_heldout'), '.2f')} / {min(held):.2f}" if held else "-"
            )
            lines.append(f"| {r['budget']:.0%} | {r.get('text_start', 0.0):.3g} | {r['seed']} | {t['n']} | {t['climbed']} | {_fmt(t['tau_chosen_by'], '.2f')} | "
                         f"{_fmt(t['tau_first_rung'], '.2f')} | {_fmt(t.get('tau_split_half'), '.2f')} | {fresh} | {picks} |")  # fmt: skip
    lines += ["", "### Every run", "",
              "Overhead: surrogate fits + inner search as a share of fits + inner search + real evaluation (first "
              "rungs, ladder); `wall s` is the search call's wall time when this part ran the whole search (a "
              "resumed run has none), and `rest` the share of it spent on neither (plans, store, costs).", "",
              "| budget | text start | seed | method | evals | ladder promotions | kept | selected on | WikiText-2 test | "
              "PTB | ARC-Easy | eval s | ladder s | fit + inner s | wall s | overhead | rest |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        h = r.get("heldout", {})
        wall = r.get("wall_s")
        model_s = r["fit_s"] + r["search_s"]
        real_s = r["eval_s"] + r["ladder_s"]
        over = model_s / (model_s + real_s) if model_s + real_s else None
        rest = (wall - real_s - model_s) / wall if wall else None
        lines.append("| " + " | ".join([
            f"{r['budget']:.0%}", f"{r.get('text_start', 0.0):.3g}", str(r["seed"]), r["method"], str(r["evaluations"]),
            str(r["tokens"]["promotions"]),
            _fmt(r.get("params_fraction"), ".3f"), _fmt(r.get("chosen_ppl")), _pm(h, "ppl:wikitext2_test"),
            _pm(h, "ppl:ptb_valid"), _pm(h, "acc:arc_easy", ".3f"), f"{r['eval_s']:.0f}", f"{r['ladder_s']:.0f}",
            f"{model_s:.1f}", _fmt(wall, ".0f"), _fmt(over * 100 if over is not None else None, ".1f") + "%",
            _fmt(rest * 100, ".1f") + "%" if rest is not None else "-",
        ]) + " |")  # fmt: skip
    lines += ["", "![evaluated points and picks](docs/images/smollm2_fronts.png)"]
    return "\n".join(lines)


def paired_difference(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """Perplexity ratio of two configurations on the same held-out windows (their per-window NLLs,
    nats) and its standard error, from the spread of the per-window differences: (ratio, se)."""
    d = np.asarray(ours) - np.asarray(theirs)
    ratio = math.exp(float(d.mean()))
    return ratio, ratio * float(d.std(ddof=1) / math.sqrt(len(d)))


def paired_lines(rows: list[dict]) -> list[str]:
    """The pick against each baseline measured on the same text draw (search and calibration text)
    and the same held-out windows: per draw, the ratio of WikiText-2 test perplexities with the
    standard error of the paired difference, which is far smaller than either figure's own."""
    key = "nll:wikitext2_test"
    draws = sorted({(r["budget"], r.get("text_start", 0.0)) for r in rows if key in r.get("heldout", {})},
                   key=lambda d: (-d[0], d[1]))  # fmt: skip
    baselines = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "evoprune"))
    table, ratios = [], {}
    for budget, start in draws:
        here = {r["method"]: r for r in rows if r["budget"] == budget and r.get("text_start", 0.0) == start}
        pick = here.get("evoprune", {}).get("heldout", {})
        if key not in pick:
            continue
        cells = []
        for m in baselines:
            theirs = here.get(m, {}).get("heldout", {})
            if key not in theirs:
                cells.append("-")
                continue
            ratio, se = paired_difference(pick[key], theirs[key])
            ratios.setdefault((budget, m), []).append((ratio, se))
            cells.append(f"{theirs['ppl:wikitext2_test']:.2f}: {ratio:.3f}x ±{se:.3f}")
        table.append(f"| {budget:.0%} | {start:.3g} | {here['evoprune']['seed']} | "
                     f"{pick['ppl:wikitext2_test']:.2f} | " + " | ".join(cells) + " |")  # fmt: skip
    if not table:
        return []
    lines = ["", "### The pick against each baseline on the same text", "",
             "Each row is one draw of the search text (`--text-start`: where in WikiText-2 valid the rungs, "
             "calibration and validation windows begin) and one search seed; every method of the row searched "
             "or calibrated on that draw. Held-out WikiText-2 test perplexity of the pick, then of each baseline "
             "with the pick's ratio to it and that ratio's standard error from the paired per-window differences "
             "(the same 512-token windows; a ratio under 1 - 2 standard errors is a clear win).", "",
             "| budget | text start | seed | evoprune | " + " | ".join(baselines) + " |",
             "|---|---|---|---|" + "---|" * len(baselines)] + table  # fmt: skip
    lines.append("")
    for (budget, m), rs in ratios.items():
        wins = sum(r + 2 * se < 1 for r, se in rs)
        losses = sum(r - 2 * se > 1 for r, se in rs)
        lines.append(f"- {budget:.0%} against `{m}`: median ratio {statistics.median(r for r, _ in rs):.3f}x over "
                     f"{len(rs)} draw(s); a clear win on {wins}, a clear loss on {losses}.")  # fmt: skip
    return lines


def _same_pick(a: dict, b: dict) -> bool:
    """Whether two rows of one (budget, seed, method) report the same pick, measured alike."""
    x, y = (r["heldout"].get("ppl:wikitext2_test") for r in (a, b))
    same = x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9))
    return a.get("best_id") == b.get("best_id") and same


def merge(paths: list[str]) -> dict:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(parts[0])
    # One row per (budget, seed, method), the first part's wins: a part that re-ran a finished run for
    # its rank agreement (--tau on a copy of the store) adds only the tau figures the row lacks (e.g.
    # --tau-fresh measured after --tau), and only when it measured the same pick.
    rows: dict[tuple, dict] = {}
    for part in parts:
        for r in part["rows"]:
            key = (r["budget"], r["seed"], r["method"], r.get("text_start", 0.0))
            if key not in rows:
                rows[key] = dict(r)
            elif r.get("tau") and _same_pick(rows[key], r):
                rows[key]["tau"] = {**r["tau"], **(rows[key].get("tau") or {})}
    merged["rows"] = list(rows.values())
    for part in parts:
        if "dense" in part:
            merged["dense"] = part["dense"]
    merged["args"] = {
        **parts[0]["args"],
        **{k: max(p["args"].get(k) or 0 for p in parts) for k in ("tau", "tau_fresh")},
    }
    return merged


def render_results(args) -> None:
    results = merge(args.render.split(","))
    out = Path(args.markdown)
    plot_fronts(results["rows"], out.parent / "docs" / "images" / "smollm2_fronts.png")
    write_section(SECTION, render(results), out)


if __name__ == "__main__":
    main()
