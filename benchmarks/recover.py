"""Recovery training of exports, measured on held-out text before and after.

For each export: ``evoprune.recover`` (distillation from the dense model its plan.json names) on
the training text (default WikiText-2 valid, the text the searches of
``benchmarks/smollm2_compare.py`` ran on; recover holds out its first ``--heldout-tokens``), then
the export, the recovered export and the dense model on the held-out text of
``smollm2_compare.py`` (its ``HeldOut``: the first ``--test-tokens`` tokens of WikiText-2 test and
of PTB valid in ``--seq-len``-token windows, which neither the search nor the recovery read) and,
with ``--arc-limit``, ARC-Easy dev questions (``evoprune evaluate``'s scorer). A stopped run
continues where it stopped: recover resumes from its checkpoint in the output directory.

    python benchmarks/recover.py --exports pruned80/,pruned70/ --method lora --steps 500
    python benchmarks/recover.py --tiny --exports EXPORT --data TEXT --out-dir DIR   # CI: a few steps
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.smollm2_compare import SHARED, HeldOut  # noqa: E402
from evoprune.engine.context import library_versions  # noqa: E402
from evoprune.pruned.export import load_pruned  # noqa: E402
from evoprune.recovery.run import recover  # noqa: E402
from evoprune.recovery.settings import RecoverySettings  # noqa: E402


def arc_easy(model: str, limit: int) -> dict:
    """ARC-Easy dev accuracy of a model or export (``limit`` questions; 0: not measured)."""
    if not limit or not (SHARED / "arc_easy" / "ARC-Easy-Dev.jsonl").exists():
        return {}
    from evoprune.pruned.evaluate import run_evaluate

    r = run_evaluate(model, ["arc_easy"], limit=limit, task_data=SHARED).results[0]
    return {"acc:arc_easy": r.metrics["acc"], "acc_se:arc_easy": r.stderr["acc"], "arc_n": r.n}


def held_out(model_dir: str, held_tokens: int, seq_len: int, arc_limit: int, batch: int) -> dict:
    model, tokenizer = load_pruned(model_dir)
    held = HeldOut(tokenizer, held_tokens, seq_len, 0)
    return {**held.model_perplexity(model, batch), **arc_easy(model_dir, arc_limit)}


def dense_held_out(export: Path, held_tokens: int, seq_len: int, arc_limit: int, batch: int) -> dict:
    """The dense model the export's plan.json names (the first export's: one dense row per table), on the same
    held-out text."""
    from evoprune.backend.loading import load_config, load_model, resolve_model

    spec = json.loads((export / "plan.json").read_text())["source_model"]
    source = resolve_model(spec)
    load_config(source)
    loaded = load_model(source)
    held = HeldOut(loaded.tokenizer, held_tokens, seq_len, 0)
    return {"model": spec, **held.model_perplexity(loaded.model, batch), **arc_easy(spec, arc_limit)}


def _pm(h: dict, key: str, spec: str = ".2f") -> str:
    kind, name = key.split(":", 1)
    v, se = h.get(key), h.get(f"{kind}_se:{name}")
    return "-" if v is None else f"{v:{spec}} ±{se:{spec}}" if se is not None else f"{v:{spec}}"


def render(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Recovery: `{s['method']}`, {s['steps']} steps of {s['batch']} x {s['seq_len']} tokens, lr "
        f"{s['lr']}, LM-loss weight {s['lm_weight']}, on {results['data']}; held-out: the first "
        f"{results['test_tokens']} tokens of WikiText-2 test and PTB valid. Machine: {results['machine']}, "
        f"torch {results['versions']['torch']}.",
        "",
        "| export | kept params | train loss first -> last | recover's held-out: ppl | KL to dense | WikiText-2 test | PTB | "
        "ARC-Easy | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dense = results.get("dense")
    if dense:
        lines.append(f"| dense ({dense['model']}) | 100% | - | - | 0 | {_pm(dense, 'ppl:wikitext2_test')} | "
                     f"{_pm(dense, 'ppl:ptb_valid')} | {_pm(dense, 'acc:arc_easy', '.3f')} | - |")  # fmt: skip
    for r in results["rows"]:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['export']} | {r['params_fraction']:.1%} | {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} | "
            f"{r['heldout_before']['ppl']:.2f} -> {r['heldout_after']['ppl']:.2f} | "
            f"{r['heldout_before'].get('kl', float('nan')):.4f} -> {r['heldout_after'].get('kl', float('nan')):.4f} | "
            f"{_pm(b, 'ppl:wikitext2_test')} -> {_pm(a, 'ppl:wikitext2_test')} | "
            f"{_pm(b, 'ppl:ptb_valid')} -> {_pm(a, 'ppl:ptb_valid')} | "
            f"{_pm(b, 'acc:arc_easy', '.3f')} -> {_pm(a, 'acc:arc_easy', '.3f')} | {r['recover_s'] / 60:.1f} |"
        )
    return "\n".join(lines)


def plot_losses(results: list[dict], path: Path, window: int = 4) -> Path:
    """The training loss (KL per token, or the mixed loss) of every recovery, step by step, with a
    ``window``-step moving average over it; one line per export."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for res in results:
        for r in res["rows"]:
            losses = np.asarray(r["losses"], dtype=float)
            steps = np.arange(1, len(losses) + 1)
            label = f"{Path(r['export']).name} ({r['params_fraction']:.1%} kept)"
            (line,) = ax.plot(steps, losses, alpha=0.35, linewidth=1)
            if len(losses) >= window:
                smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, color=line.get_color(), linewidth=2, label=label)
            else:
                line.set_label(label)
    s = results[0]["settings"]
    ax.set_xlabel(f"step ({s['batch']} x {s['seq_len']} tokens)")
    ax.set_ylabel("training loss: KL to dense (nats/token)")
    ax.set_title(f"{s['method']} recovery, lr {s['lr']}: per step (thin) and {window}-step mean", fontsize=10)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exports", help="export directories, comma-separated")
    p.add_argument("--data", default=str(SHARED / "wikitext-2" / "valid.txt"), help="training text")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "recovered"))
    p.add_argument("--json", default=None, help="results JSON (default: OUT_DIR/recover.json)")
    p.add_argument("--method", default="lora")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lm-weight", type=float, default=0.0)
    p.add_argument("--heldout-tokens", type=int, default=4096, help="recover's own held-out split")
    p.add_argument("--test-tokens", type=int, default=16384, help="WikiText-2 test and PTB tokens")
    p.add_argument("--arc-limit", type=int, default=570, help="ARC-Easy dev questions (570: all; 0: none)")
    p.add_argument(
        "--arc-before",
        type=int,
        default=None,
        help="ARC-Easy questions before recovery (default: --arc-limit; 0: "
        "none, when the export's figure is known from the held-out comparison)",
    )
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--amp", default=None, help="mixed precision: bfloat16 or float16 (recover --amp)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense model's figures")
    p.add_argument("--tiny", action="store_true", help="a few short steps and little held-out text (CI)")
    p.add_argument("--render", help="only print the table of these results JSON files (comma-separated)")
    p.add_argument("--plot", help="write the training-loss curves to this PNG")
    args = p.parse_args()
    if args.render:
        files = [Path(f.strip()) for f in args.render.split(",") if f.strip()]
        if missing := [str(f) for f in files if not f.is_file()]:
            p.error(f"no such results file: {', '.join(missing)}; run without --render first to make it")
        merged = [json.loads(f.read_text()) for f in files]
        print(render({**merged[0], "rows": [r for m in merged for r in m["rows"]]}))
        if args.plot:
            print(f"wrote {plot_losses(merged, Path(args.plot))}")
        return
    if not args.exports:
        p.error("--exports is required (or --render to print earlier results)")
    if args.tiny:
        args.steps, args.seq_len, args.batch, args.heldout_tokens = 4, 64, 2, 128
        args.test_tokens, args.arc_limit, args.lr = 256, 0, args.lr or 3e-3
    settings = RecoverySettings(
        method=args.method, steps=args.steps, seq_len=args.seq_len, batch=args.batch, lr=args.lr,
        lm_weight=args.lm_weight, heldout_tokens=args.heldout_tokens, seed=args.seed, device=args.device,
        dtype=args.dtype, amp=args.amp, checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    exports = [Path(e.strip()) for e in args.exports.split(",") if e.strip()]
    missing = [str(e) for e in exports if not (e / "plan.json").is_file()]
    if missing:  # before any model loads or folder is made: a typo should cost nothing and leave nothing
        p.error(f"not an evoprune export (no plan.json): {', '.join(missing)}; make one with `evoprune export`")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.json) if args.json else out_dir / "recover.json"
    results = {"machine": platform.platform(), "threads": torch.get_num_threads(), "versions": library_versions(),
               "data": args.data, "test_tokens": args.test_tokens,
               "settings": {**asdict(settings), "lr": settings.learning_rate}, "args": vars(args), "rows": []}  # fmt: skip
    if not args.no_dense:
        results["dense"] = dense_held_out(exports[0], args.test_tokens, args.seq_len, args.arc_limit, args.batch)
        print(json.dumps({"dense": results["dense"]}), flush=True)

    def report(event: str, **info) -> None:
        if event == "phase":
            print(f"  {info['name']}", flush=True)
        elif event == "note":
            print(f"  note: {info['text']}", flush=True)
        elif event == "step" and (info["step"] % max(1, args.steps // 20) == 0 or info["step"] == info["total"]):
            print(f"  step {info['step']}/{info['total']}: running loss {info['running_loss']:.4f}", flush=True)

    for export in exports:
        out = out_dir / f"{export.name}-{args.method}-{args.steps}"
        print(f"{export} -> {out}", flush=True)
        arc_before = args.arc_limit if args.arc_before is None else args.arc_before
        before = held_out(str(export), args.test_tokens, args.seq_len, arc_before, args.batch)
        start = time.perf_counter()
        done = out / "plan.json"
        if done.exists() and "recovery" in json.loads(done.read_text()):
            recovery = json.loads(done.read_text())["recovery"]  # finished earlier: measure only
            r = {k: recovery[k] for k in ("heldout_before", "heldout_after", "losses", "resumed_from")}
            start -= recovery.get("duration_s", 0.0)
        else:
            res = recover(export, args.data, out, settings, report)
            r = {"heldout_before": res.heldout_before, "heldout_after": res.heldout_after, "losses": res.losses,
                 "resumed_from": res.resumed_from}  # fmt: skip
        elapsed = time.perf_counter() - start
        after = held_out(str(out), args.test_tokens, args.seq_len, args.arc_limit, args.batch)
        plan = json.loads((export / "plan.json").read_text())
        row = {"export": str(export), "out": str(out), "params_fraction": plan["params_fraction"],
               "before": before, "after": after, "recover_s": elapsed, **r}  # fmt: skip
        results["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
        out_json.write_text(json.dumps(results, indent=2))
    out_json.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"wrote {out_json}")
    if args.plot:
        print(f"wrote {plot_losses([results], Path(args.plot))}")


if __name__ == "__main__":
    main()
