"""evoprune against the paper's method and the field's baselines on SmolLM2-135M.

Search and calibration on WikiText-2 valid; every reported quality figure is measured on data
the search never saw (WikiText-2 test and PTB valid perplexity, ARC-Easy dev accuracy), through
the exported model reloaded from disk. Writes the "SmolLM2-135M: methods side by side" section
of BENCHMARKS.md and a JSON file with every number.

    python benchmarks/smollm2_compare.py                         # the full run (see BENCHMARKS.md)
    python benchmarks/smollm2_compare.py --tiny                  # CI: tiny random model, a few evaluations
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._markdown import write_section  # noqa: E402
from evoprune.backend.data import load_text, token_windows  # noqa: E402
from evoprune.backend.evaluate import quality  # noqa: E402
from evoprune.backend.pruner import BackendSettings  # noqa: E402
from evoprune.baselines import method_settings  # noqa: E402
from evoprune.compare import DEFAULT_METHODS, best_under_budget  # noqa: E402
from evoprune.cost import measure_model  # noqa: E402
from evoprune.export import export_pruned, load_pruned  # noqa: E402
from evoprune.objectives import CostEvaluator  # noqa: E402
from evoprune.search import SearchSettings, library_versions, prepare_backend, search  # noqa: E402
from evoprune.store import Store  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def held_out(model, tokenizer, tokens: int, seq_len: int, arc_limit: int | None) -> dict:
    out = {}
    for name, path in (
        ("wikitext2_test", SHARED / "wikitext-2" / "test.txt"),
        ("ptb_valid", SHARED / "ptb" / "valid.txt"),
    ):
        if path.exists():
            windows = token_windows(tokenizer, load_text(str(path)).text, tokens, seq_len)
            out[f"ppl:{name}"] = quality(model, windows)["ppl"]
    if arc_limit and (SHARED / "arc_easy" / "ARC-Easy-Dev.jsonl").exists():
        try:
            from evoprune.tasks import evaluate_model

            r = evaluate_model(model, tokenizer, "arc_easy", limit=arc_limit)
            out["acc:arc_easy"], out["acc_norm:arc_easy"] = r.metrics["acc"], r.metrics["acc_norm"]
        except Exception as exc:  # noqa: BLE001 - a missing task module must not lose the other figures
            out["arc_error"] = str(exc)
    return out


def run_method(backend, costs, s: SearchSettings, store: str, label: str, args, seq_len: int) -> dict:
    """One method's search at one budget and seed, then its pick exported, reloaded and measured."""
    start = time.perf_counter()
    result = search(args.model, args.data, store, s, backend=backend)
    wall = time.perf_counter() - start
    # the one-shot baselines run on a finer level grid: cost and export their levels in it
    backend = backend.with_grid(method_settings(s).backend)
    costs = CostEvaluator(backend.space, backend.loaded.model.config)
    with Store(store) as st:
        evals = st.evaluations(result.run.id)
        rounds = st.rounds(result.run.id)
        best = best_under_budget(evals, "ppl", s.budget, costs)
    row = {"budget": s.max_params, "seed": s.seed, "method": label, "run": result.run.id, "store": Path(store).name,
           "evaluations": len(evals), "failed": sum(e.status == "failed" for e in evals),
           "wall_s": wall if result.new_evaluations else None,
           "eval_s": sum(e.duration_s or 0 for e in evals),
           "fit_s": sum(r["fit_s"] for r in rounds), "search_s": sum(r["search_s"] for r in rounds),
           "taus": [r["tau"] for r in rounds if r.get("tau") is not None],
           "points": [[e.params_fraction, e.metrics.get("ppl")] for e in evals if e.status == "ok"]}  # fmt: skip
    if best is None:
        return row
    row.update(best_id=best.id, search_ppl=best.metrics["ppl"], params_fraction=best.params_fraction)
    with tempfile.TemporaryDirectory() as tmp:
        export_pruned(backend, best.levels, Path(tmp) / "m")
        model, tok = load_pruned(Path(tmp) / "m")
        arc = args.arc_limit if args.arc_methods == "all" or s.method in args.arc_methods else 0
        row["heldout"] = held_out(model, tok, args.heldout_tokens, seq_len, arc)
        m = measure_model(model, seq_len=seq_len, repeats=args.latency_repeats)
        row["export"] = {"latency_ms": m.latency_ms, "weight_bytes": m.weight_bytes, "params": m.params}
        del model
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(SHARED / "wikitext-2" / "valid.txt"))
    p.add_argument("--evals", type=int, default=40)
    p.add_argument("--budgets", default="0.8,0.7")
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--calib-tokens", type=int, default=2048)
    p.add_argument("--heldout-tokens", type=int, default=4096)
    p.add_argument("--arc-limit", type=int, default=200)
    p.add_argument("--arc-methods", default="all", help="methods whose pick is also scored on ARC-Easy (time)")
    p.add_argument("--ga-multiple", type=int, default=3, help="also run ga with this many times the budget")
    p.add_argument("--latency-repeats", type=int, default=7)
    p.add_argument("--store", default=str(ROOT / "benchmarks" / "results" / "smollm2_compare.db"))
    p.add_argument("--tiny", action="store_true", help="a tiny random model and a few evaluations (CI)")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="the file --render writes (plots beside it)")
    p.add_argument("--render", help="only write BENCHMARKS.md and the plots from a run's JSON (final or .partial.json)")
    args = p.parse_args()
    if args.render:
        render_results(args)
        return

    seq_len = 256
    if args.tiny:
        args.evals, args.heldout_tokens, args.arc_limit, args.latency_repeats = 6, 256, 0, 1
        args.eval_tokens, args.calib_tokens, seq_len = 256, 256, 64
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    backend_settings = BackendSettings(eval_tokens=args.eval_tokens, calib_tokens=args.calib_tokens, seq_len=seq_len)
    base = SearchSettings(evals=args.evals, min_params=0.0, warm_start=False, backend=backend_settings)
    phases: dict[str, float] = {}

    def note_phase(event, **kw) -> None:
        if event == "phase":
            phases.setdefault(kw["name"].split(" (")[0], time.perf_counter())

    t0 = time.perf_counter()
    backend = prepare_backend(args.model, args.data, base, note_phase)
    t_end = time.perf_counter()
    t_score = phases.get("scoring importance", t_end)
    load_s, importance_s = t_score - t0, t_end - t_score
    costs = CostEvaluator(backend.space, backend.loaded.model.config)
    tokenizer = backend.loaded.tokenizer
    results = {"machine": platform.platform(), "cpus": torch.get_num_threads(), "versions": library_versions(),
               "load_and_importance_s": load_s + importance_s, "load_s": load_s, "importance_s": importance_s,
               "importance_cached": backend.importance_cached, "args": vars(args), "rows": []}  # fmt: skip
    dense = held_out(backend.loaded.model, tokenizer, args.heldout_tokens, seq_len, args.arc_limit)
    m = measure_model(backend.loaded.model, seq_len=seq_len, repeats=args.latency_repeats)
    results["dense"] = {"heldout": dense, "search_ppl": backend.evaluate(backend.space.lower).metrics["ppl"],
                        "export": {"latency_ms": m.latency_ms, "weight_bytes": m.weight_bytes, "params": m.params}}  # fmt: skip
    for seed in seeds:  # seed-major: a stopped run still has whole seeds
        for budget in budgets:
            runs = [(name, args.evals, args.store) for name in methods]
            if args.ga_multiple > 1:
                # its own store: a larger budget in the same store would continue the ga run above
                runs.append(("ga", args.evals * args.ga_multiple, str(Path(args.store).with_name("ga_multiple.db"))))
            for method, evals, store in runs:
                s = replace(base, method=method, seed=seed, max_params=budget, evals=evals)
                label = method if evals == args.evals else f"{method} x{args.ga_multiple}"
                row = run_method(backend, costs, s, store, label, args, seq_len)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                Path(args.store).with_suffix(".partial.json").write_text(json.dumps(results, indent=2))
    out_json = Path(args.store).with_suffix(".json")
    out_json.write_text(json.dumps(results, indent=2))
    if not args.no_write and not args.tiny:
        args.render = str(out_json)
        render_results(args)
    print(f"wrote {out_json}")


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


OTHERS = ("ga", "predictor-rank", "owl", "random")


def plot_fronts(results: dict, out: Path) -> None:
    """One panel per budget and seed: every method's evaluated points and its pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    seeds = sorted({r["seed"] for r in rows})
    fig, axes = plt.subplots(len(budgets), len(seeds), figsize=(6 * len(seeds), 4.2 * len(budgets)), squeeze=False)
    colors = {
        "evoprune": "C3",
        "uniform": "C7",
        "mlp-only": "C8",
        "flap": "C9",
        "owl": "C5",
        "random": "C0",
        "predictor-rank": "C2",
        "ga": "C1",
    }
    for i, budget in enumerate(budgets):
        for j, seed in enumerate(seeds):
            ax = axes[i][j]
            for r in rows:
                if r["budget"] != budget or r["seed"] != seed or not r.get("points"):
                    continue
                base = r["method"].split(" ")[0]
                color = colors.get(base, "k")
                pts = [(f, p) for f, p in r["points"] if p is not None and math.isfinite(p)]
                marker = "x" if " x" in r["method"] else "o"
                ax.scatter([f for f, _ in pts], [p for _, p in pts], s=10, alpha=0.45, color=color, marker=marker,
                           label=r["method"])  # fmt: skip
                if r.get("params_fraction"):
                    ax.scatter([r["params_fraction"]], [r["search_ppl"]], s=90, facecolors="none", edgecolors=color,
                               linewidths=2)  # fmt: skip
            ax.axvline(budget, color="k", ls="--", lw=1)
            ax.set_yscale("log")
            ax.set_ylim(15, 3000)
            ax.set_xlim(max(0.4, budget - 0.3), min(1.0, budget + 0.05))
            ax.set_xlabel("kept parameter fraction")
            ax.set_ylabel("search perplexity (WikiText-2 valid)")
            ax.set_title(f"budget {budget:.0%}, seed {seed} (circles: each method's pick)")
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def render(results: dict, args) -> str:
    rows = results["rows"]
    d = results["dense"]
    dh = d["heldout"]
    a = results.get("args", {})
    evals, arc_limit = a.get("evals", args.evals), a.get("arc_limit", args.arc_limit)
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    seeds = sorted({r["seed"] for r in rows})
    mib = 2**20
    lines = [
        f"Command: `python benchmarks/smollm2_compare.py --evals {evals} --seeds {','.join(map(str, seeds))} "
        f"--budgets {','.join(str(b) for b in budgets)} --arc-limit {arc_limit}` (about "
        f"{sum((r['wall_s'] or 0) for r in rows) / 3600 + 0.3:.1f} h on this machine). Search on WikiText-2 valid, "
        f"{a.get('eval_tokens', args.eval_tokens)} tokens per real evaluation, wanda importance on "
        f"{a.get('calib_tokens', args.calib_tokens)} tokens; every method gets {evals} real evaluations "
        "(`uniform`, `mlp-only` and `flap` evaluate their one answer, `owl` stops when its few candidates "
        f"are done) and `ga x{a.get('ga_multiple', 3)}` three "
        f"times as many. Held-out: the first {a.get('heldout_tokens', args.heldout_tokens)} tokens of WikiText-2 test "
        f"and PTB valid and {arc_limit} ARC-Easy dev questions, all through the exported model reloaded from disk.",
        "",
        f"Machine: {results['machine']}, {results['cpus']} torch threads (CPU, float32); torch "
        f"{results['versions']['torch']}, transformers {results['versions']['transformers']}, pymoo "
        f"{results['versions']['pymoo']}.",
        "",
        f"Dense SmolLM2-135M: search ppl {d['search_ppl']:.2f}; WikiText-2 test ppl {_fmt(dh.get('ppl:wikitext2_test'))}, "
        f"PTB ppl {_fmt(dh.get('ppl:ptb_valid'))}, ARC-Easy acc {_fmt(dh.get('acc:arc_easy'), '.3f')}; "
        f"{d['export']['latency_ms']:.0f} ms per 256-token forward, {d['export']['weight_bytes'] / mib:.0f} MiB of "
        "weights.",
        "",
        "### Held-out quality at each budget (mean over seeds)",
        "",
        "| budget | method | kept params | WikiText-2 test ppl | PTB ppl | ARC-Easy acc | evoprune / method (WikiText-2) |",
        "|---|---|---|---|---|---|---|",
    ]
    summary: dict = {}
    for budget in budgets:
        methods = list(dict.fromkeys(r["method"] for r in rows if r["budget"] == budget))
        for m in methods:
            rs = [r for r in rows if r["budget"] == budget and r["method"] == m and r.get("heldout")]
            summary[(budget, m)] = {
                "kept": _mean(r.get("params_fraction") for r in rs),
                "wt2": _mean(r["heldout"].get("ppl:wikitext2_test") for r in rs),
                "ptb": _mean(r["heldout"].get("ppl:ptb_valid") for r in rs),
                "arc": _mean(r["heldout"].get("acc:arc_easy") for r in rs),
                "n": len(rs),
            }
        ours = summary.get((budget, "evoprune"), {}).get("wt2")
        for m in methods:
            v = summary[(budget, m)]
            ratio = f"{ours / v['wt2']:.2f}x" if ours and v["wt2"] and m != "evoprune" else "-"
            lines.append(f"| {budget:.0%} | {m} | {_fmt(v['kept'], '.3f')} | {_fmt(v['wt2'])} | {_fmt(v['ptb'])} | "
                         f"{_fmt(v['arc'], '.3f')} | {ratio} |")  # fmt: skip
    lines += ["", "### Targets", ""]
    for budget in budgets:
        ours = summary.get((budget, "evoprune"))
        uni = summary.get((budget, "uniform"))
        others = {
            m: summary[(budget, m)]["wt2"] for m in OTHERS if (budget, m) in summary and summary[(budget, m)]["wt2"]
        }
        if not ours or not ours["wt2"]:
            continue
        if uni and uni["wt2"]:
            ok = ours["wt2"] <= 0.5 * uni["wt2"]
            lines.append(
                f"- {budget:.0%}, against uniform: WikiText-2 {ours['wt2']:.1f} vs {uni['wt2']:.1f} = "
                f"{ours['wt2'] / uni['wt2']:.2f}x (target <= 0.5x: {'met' if ok else 'NOT met'}); PTB {ours['ptb']:.1f} vs "
                f"{uni['ptb']:.1f} ({'better' if ours['ptb'] < uni['ptb'] else 'NOT better'}); ARC-Easy "
                f"{_fmt(ours['arc'], '.3f')} vs {_fmt(uni['arc'], '.3f')} "
                f"({'better' if (ours['arc'] or 0) > (uni['arc'] or 0) else 'NOT better'}; {arc_limit} questions, "
                f"one standard error about {0.5 / math.sqrt(max(1, arc_limit)):.2f})."
            )
        if others:
            best = min(others, key=others.get)
            ok = ours["wt2"] <= 0.9 * others[best]
            lines.append(
                f"- {budget:.0%}, against the best other search at the same budget ({best}, {others[best]:.1f}): "
                f"{ours['wt2'] / others[best]:.2f}x (target <= 0.9x: {'met' if ok else 'NOT met'})."
            )
        ga3 = next((summary[key] for key in summary if key[0] == budget and key[1].startswith("ga x")), None)
        if ga3 and ga3["wt2"]:
            lines.append(
                f"- {budget:.0%}, sample efficiency: evoprune with {evals} evaluations {ours['wt2']:.1f} vs `ga` with "
                f"three times as many {ga3['wt2']:.1f} ({'matches or beats' if ours['wt2'] <= ga3['wt2'] else 'does NOT match'})."
            )
    lines += [
        "",
        "### Every run",
        "",
        "Overhead: the share of the search's wall time spent on anything but real evaluation, split into surrogate "
        "fits + inner search and the rest (building each configuration's pruning plan, store transactions, costs); "
        "model loading and importance are not part of a search. τ: the surrogate's out-of-sample Kendall τ on each "
        "batch of 4, predicted before the batch was evaluated, mean over rounds (a pooled τ across rounds is not "
        "meaningful: each round's surrogate is a different fit).",
        "",
        "| budget | seed | method | evals | kept params | search ppl | WikiText-2 test | PTB | ARC-Easy | export ms | "
        "export MiB | eval s | fit s | inner s | wall s | overhead: fit + inner / rest | τ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h, e = r.get("heldout", {}), r.get("export", {})
        wall = r.get("wall_s")
        model_s = r["fit_s"] + r["search_s"]
        overhead = f"{model_s / wall:.1%} / {(wall - r['eval_s'] - model_s) / wall:.1%}" if wall else "-"
        tau = _fmt(_mean(r.get("taus") or []), ".2f")
        lines.append(
            f"| {r['budget']:.0%} | {r['seed']} | {r['method']} | {r['evaluations']} | "
            f"{_fmt(r.get('params_fraction'), '.3f')} | {_fmt(r.get('search_ppl'))} | "
            f"{_fmt(h.get('ppl:wikitext2_test'))} | {_fmt(h.get('ppl:ptb_valid'))} | {_fmt(h.get('acc:arc_easy'), '.2f')} | "
            f"{_fmt(e.get('latency_ms'), '.0f')} | {_fmt(e['weight_bytes'] / mib if e else None, '.0f')} | "
            f"{r['eval_s']:.0f} | {r['fit_s']:.1f} | {r['search_s']:.1f} | {_fmt(wall, '.0f')} | {overhead} | {tau} |"
        )
    lines += [
        "",
        f"Time split: model load {results.get('load_s', float('nan')):.0f} s, importance "
        f"{results.get('importance_s', float('nan')):.0f} s"
        f"{' (read from the disk cache)' if results.get('importance_cached') else ''}; the rest per run above.",
        "",
        "![evaluated points of every method](docs/images/smollm2_fronts.png)",
    ]
    return "\n".join(lines)


def render_results(args) -> None:
    """Write the section (and the front plots) from a run's JSON, final or partial."""
    path = Path(args.render)
    results = json.loads(path.read_text())
    out = Path(args.markdown)
    plot_fronts(results, out.parent / "docs" / "images" / "smollm2_fronts.png")
    write_section("SmolLM2-135M: methods side by side", render(results, args), out)


if __name__ == "__main__":
    main()
