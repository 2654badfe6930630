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
    p.add_argument("--from-log", help="render BENCHMARKS.md from the JSON rows a run printed (and a dense.json)")
    args = p.parse_args()
    if args.from_log:
        render_from_log(args)
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
        write_section("SmolLM2-135M: methods side by side", render(results, args))
    print(f"wrote {out_json}")


def render_from_log(args) -> None:
    """Write the section from a run's printed rows, for a run stopped before its final write."""
    rows = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
    dense = json.loads(Path(args.from_log).with_name("dense.json").read_text())
    results = {"machine": platform.platform(), "cpus": torch.get_num_threads(), "versions": library_versions(),
               "load_and_importance_s": dense.get("load_and_importance_s", float("nan")), "rows": rows,
               "dense": dense}  # fmt: skip
    write_section("SmolLM2-135M: methods side by side", render(results, args))


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def render(results: dict, args) -> str:
    rows = results["rows"]
    d = results["dense"]["heldout"]
    lines = [
        f"Command: `python benchmarks/smollm2_compare.py --evals {args.evals} --budgets {args.budgets} "
        f"--seeds {args.seeds}` (search on WikiText-2 valid, {args.eval_tokens} tokens per real evaluation, "
        f"importance on {args.calib_tokens} tokens; held-out: first {args.heldout_tokens} tokens of WikiText-2 "
        f"test and PTB valid, {args.arc_limit} ARC-Easy dev questions (picks of: {args.arc_methods}), all through "
        "the exported model).",
        "",
        f"Machine: {results['machine']}, {results['cpus']} torch threads; torch {results['versions']['torch']}, "
        f"transformers {results['versions']['transformers']}, pymoo {results['versions']['pymoo']}. "
        f"Model load + importance: {results['load_and_importance_s']:.0f} s.",
        "",
        f"Dense: WikiText-2 test ppl {_fmt(d.get('ppl:wikitext2_test'))}, PTB ppl {_fmt(d.get('ppl:ptb_valid'))}, "
        f"ARC-Easy acc {_fmt(d.get('acc:arc_easy'), '.3f')} / acc_norm {_fmt(d.get('acc_norm:arc_easy'), '.3f')}.",
        "",
        "| budget | seed | method | evals | kept params | search ppl | WikiText-2 test ppl | PTB ppl | ARC-Easy acc | "
        "acc_norm | eval s | fit s | inner search s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h = r.get("heldout", {})
        lines.append(
            f"| {r['budget']:.0%} | {r['seed']} | {r['method']} | {r['evaluations']} | "
            f"{_fmt(r.get('params_fraction'), '.3f')} | "
            f"{_fmt(r.get('search_ppl'))} | {_fmt(h.get('ppl:wikitext2_test'))} | {_fmt(h.get('ppl:ptb_valid'))} | "
            f"{_fmt(h.get('acc:arc_easy'), '.3f')} | {_fmt(h.get('acc_norm:arc_easy'), '.3f')} | {r['eval_s']:.0f} | "
            f"{r['fit_s']:.1f} | {r['search_s']:.1f} | {_fmt(r['wall_s'], '.0f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
