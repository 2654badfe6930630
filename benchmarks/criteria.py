"""Importance criteria x compensation on SmolLM2-135M, judged on held-out text.

Allocation: MLP-only, the same number of channels removed in every layer (a fine grid,
``mlp_levels=1536``: one channel per level), the most channels kept with at most 80% / 70% of the
dense parameters. Importance is scored on WikiText-2 *valid* (the backend's default 2048 calibration
tokens in 256-token windows); quality is perplexity on the first 16,384 tokens of WikiText-2 *test*
and of PTB valid, in 512-token windows, each with its standard error over windows.

    python benchmarks/criteria.py run --criteria wanda,flap --out results.jsonl   # one process per subset
    python benchmarks/criteria.py render results.jsonl [more.jsonl]               # writes BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._markdown import write_section  # noqa: E402
from evoprune.backend.data import load_text, token_windows  # noqa: E402
from evoprune.backend.evaluate import quality  # noqa: E402
from evoprune.backend.importance import CRITERIA  # noqa: E402
from evoprune.backend.loading import load_model, resolve_model  # noqa: E402
from evoprune.backend.pruner import PruningBackend  # noqa: E402
from evoprune.backend.settings import BackendSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CALIB = DATA / "wikitext-2" / "valid.txt"
HELD_OUT = {"wikitext2-test": DATA / "wikitext-2" / "test.txt", "ptb-valid": DATA / "ptb" / "valid.txt"}
TOKENS, WINDOW = 16_384, 512
FRACTIONS = (0.8, 0.7)
COMPENSATIONS = ("none", "bias")
HEADING = "Importance criteria and compensation"


def mlp_only_uniform(space, fraction: float) -> np.ndarray:
    """The uniform MLP-only configuration with the most kept channels under ``fraction`` of the parameters."""
    limit = fraction * space.arch.dense_params()
    for level in range(space.mlp_levels + 1):
        x = np.concatenate([np.zeros(space.num_layers, dtype=int), np.full(space.num_layers, level)])
        if space.params(x) <= limit:
            return space.validate(x)
    raise ValueError(f"no MLP-only configuration reaches {fraction}")


def run(criteria: list[str], out: Path) -> None:
    """Evaluate every criterion x compensation; one JSON line per (text, budget, criterion, compensation).

    WikiText-2 at 80% comes first, then 70%, then PTB, then the dense model: a run cut short still
    has the comparison that matters most.
    """
    torch.set_num_threads(1)
    loaded = load_model(resolve_model("smollm2-135m"))
    tok = loaded.tokenizer
    calib = load_text(str(CALIB))
    backends: dict[tuple[str, str], PruningBackend] = {}
    # A rerun with the same --out continues: measurements already in it are not repeated.
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    done = {(r["text"], r["budget"], r["criterion"], r["compensation"]) for r in map(json.loads, filter(None, lines))}

    def backend(criterion: str, compensation: str) -> PruningBackend:
        if (criterion, compensation) not in backends:
            for comp in ("bias", "none"):  # scored once with the means bias needs; "none" reads that cache entry
                settings = BackendSettings(
                    criterion=criterion, compensation=comp, eval_tokens=256, mlp_levels=1536, calib_data=str(CALIB)
                )
                # The backend's own evaluation text is unused: held-out windows are evaluated directly.
                b = PruningBackend(loaded, load_text(str(HELD_OUT["wikitext2-test"])), settings, calib)
                start = time.perf_counter()
                b.score()
                b.score_s = time.perf_counter() - start
                backends[(criterion, comp)] = b
        return backends[(criterion, compensation)]

    def evaluate(b: PruningBackend, x, text: str, windows: torch.Tensor, **labels) -> None:
        plans = b.plan(x)
        masks = b._masks()
        masks.apply(plans, b.biases(plans))
        try:
            start = time.perf_counter()
            q = quality(loaded.model, windows, None, batch_size=4)
        finally:
            masks.reset()
        row = {
            **labels,
            "text": text,
            "ppl": q["ppl"],
            "ppl_se": q["ppl_se"],
            "tokens": int(windows.numel()),
            "params_fraction": b.space.params(x) / b.space.arch.dense_params(),
            "mlp_channels": len(plans[0].mlp_channels),
            "calib_tokens": b.settings.calib_tokens,
            "score_s": round(getattr(b, "score_s", 0.0), 1),
            "eval_s": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    for text, path in HELD_OUT.items():
        windows = token_windows(tok, load_text(str(path)).text, TOKENS, WINDOW)
        for fraction in FRACTIONS:
            for criterion in criteria:
                for compensation in COMPENSATIONS:
                    if (text, f"{fraction:.0%}", criterion, compensation) in done:
                        continue
                    b = backend(criterion, compensation)
                    x = mlp_only_uniform(b.space, fraction)
                    evaluate(
                        b, x, text, windows, criterion=criterion, compensation=compensation, budget=f"{fraction:.0%}"
                    )
    if "wanda" in criteria:
        b = backend("wanda", "none")
        for text, path in HELD_OUT.items():
            windows = token_windows(tok, load_text(str(path)).text, TOKENS, WINDOW)
            evaluate(b, b.space.lower, text, windows, criterion="dense", compensation="-", budget="dense")


def render(paths: list[Path]) -> str:
    flat = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    # One row per (criterion, compensation, budget), with the texts measured so far.
    merged: dict[tuple, dict] = {}
    for r in flat:
        row = merged.setdefault((r["criterion"], r["compensation"], r["budget"]), {**r})
        row[r["text"]] = {"ppl": r["ppl"], "ppl_se": r["ppl_se"], "tokens": r["tokens"]}
    rows = list(merged.values())
    dense = next((r for r in rows if r["budget"] == "dense"), None)
    lines = [
        "SmolLM2-135M (float32, CPU), `python benchmarks/criteria.py`. Importance scored on WikiText-2 valid with",
        "the backend's default calibration (2,048 tokens, 256-token windows). Allocation: MLP-only, the same",
        "number of channels removed in every layer (`mlp_levels=1536`), the most kept under 80% / 70% of the",
        "dense parameters. Held-out perplexity on the first 16,384 tokens of WikiText-2 test and of PTB valid",
        "(512-token windows), ± one standard error over the 32 windows. Bias compensation adds a 576-float",
        "bias to each pruned down projection (30 x 576 = 17k parameters, 0.013%, not in the kept fraction).",
        "",
    ]
    if dense:
        parts = [f"{name} {dense[name]['ppl']:.2f}" for name in HELD_OUT if name in dense]
        lines.append(f"Dense: {', '.join(parts)}.")
        lines.append("")
    budgets = [b for b in ("80%", "70%") if any(r["budget"] == b for r in rows)]
    head = "| criterion | compensation |"
    rule = "| --- | --- |"
    for b in budgets:
        frac = next(r["params_fraction"] for r in rows if r["budget"] == b)
        ch = next(r["mlp_channels"] for r in rows if r["budget"] == b)
        head += f" {b} ({frac:.3f} kept, {ch} ch) wiki test | {b} PTB |"
        rule += " ---: | ---: |"
    lines += [head, rule]
    keys = sorted({(r["criterion"], r["compensation"]) for r in rows if r["budget"] != "dense"})
    best = {}
    for b in budgets:
        cands = [r for r in rows if r["budget"] == b and "wikitext2-test" in r]
        best[b] = min(cands, key=lambda r: r["wikitext2-test"]["ppl"]) if cands else None
    for c, comp in keys:
        cells = f"| {c} | {comp} |"
        for b in budgets:
            r = next((r for r in rows if r["budget"] == b and (r["criterion"], r["compensation"]) == (c, comp)), None)
            if r is None:
                cells += " - | - |"
                continue
            mark = "**" if r is best[b] else ""
            for name in HELD_OUT:
                m = r.get(name)
                cells += f" {mark}{m['ppl']:.1f} ± {m['ppl_se']:.1f}{mark} |" if m else " - |"
                mark = ""
        lines.append(cells)
    lines.append("")
    if any(" - |" in line for line in lines):
        lines += ["`-`: not measured yet when this section was written (the run was cut short).", ""]
    lines += [
        "The standard errors are per configuration; every configuration is evaluated on the same windows, so",
        "differences between rows are more precise than the error bars suggest (no paired test was run).",
        "",
    ]
    for b in budgets:
        r = best[b]
        if r is None:
            continue
        default = next(
            (d for d in rows if d["budget"] == b and (d["criterion"], d["compensation"]) == ("wanda", "none")), None
        )
        gain = ""
        if default is not None and "wikitext2-test" in default:
            ratio = 1 - r["wikitext2-test"]["ppl"] / default["wikitext2-test"]["ppl"]
            gain = f", {ratio:.1%} lower than the default `wanda` + `none` ({default['wikitext2-test']['ppl']:.1f})"
        measured = sum(1 for d in rows if d["budget"] == b and "wikitext2-test" in d)
        of = "" if measured == len(keys) else f" (of the {measured} of {len(keys)} measured)"
        lines.append(
            f"Best on held-out WikiText-2 at {b}{of}: `{r['criterion']}` + `{r['compensation']}` "
            f"({r['wikitext2-test']['ppl']:.1f}{gain})."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--criteria", default=",".join(CRITERIA))
    r.add_argument("--out", type=Path, required=True)
    w = sub.add_parser("render")
    w.add_argument("results", type=Path, nargs="+")
    w.add_argument("--print", action="store_true", help="Print the section instead of writing BENCHMARKS.md.")
    args = parser.parse_args()
    if args.cmd == "run":
        run([c.strip() for c in args.criteria.split(",")], args.out)
    else:
        body = render(args.results)
        print(body) if args.print else write_section(HEADING, body)


if __name__ == "__main__":
    main()
