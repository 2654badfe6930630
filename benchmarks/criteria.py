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
from evoprune.backend.pruner import BackendSettings, PruningBackend  # noqa: E402

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
    torch.set_num_threads(1)
    loaded = load_model(resolve_model("smollm2-135m"))
    tok = loaded.tokenizer
    held_out = {name: token_windows(tok, load_text(str(p)).text, TOKENS, WINDOW) for name, p in HELD_OUT.items()}
    calib = load_text(str(CALIB))
    for criterion in criteria:
        for compensation in COMPENSATIONS:
            # The evaluation text of the backend is unused here (held-out windows are evaluated directly).
            settings = BackendSettings(
                criterion=criterion, compensation=compensation, eval_tokens=256, mlp_levels=1536, calib_data=str(CALIB)
            )
            backend = PruningBackend(loaded, load_text(str(HELD_OUT["wikitext2-test"])), settings, calib)
            start = time.perf_counter()
            backend.score()
            score_s = time.perf_counter() - start
            configs = {"dense": backend.space.lower} if criterion == "wanda" and compensation == "none" else {}
            configs.update({f"{f:.0%}": mlp_only_uniform(backend.space, f) for f in FRACTIONS})
            for budget, x in configs.items():
                plans = backend.plan(x)
                masks = backend._masks()
                masks.apply(plans, backend.biases(plans))
                row = {
                    "criterion": criterion if budget != "dense" else "dense",
                    "compensation": compensation if budget != "dense" else "-",
                    "budget": budget,
                    "params_fraction": backend.space.params(x) / backend.space.arch.dense_params(),
                    "mlp_channels": len(plans[0].mlp_channels),
                    "calib_tokens": settings.calib_tokens,
                    "score_s": round(score_s, 1),
                }
                try:
                    for name, windows in held_out.items():
                        q = quality(loaded.model, windows, None, batch_size=4)
                        row[name] = {"ppl": q["ppl"], "ppl_se": q["ppl_se"], "tokens": int(windows.numel())}
                finally:
                    masks.reset()
                print(json.dumps(row), flush=True)
                with out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")


def render(paths: list[Path]) -> str:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
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
        lines.append(
            f"Dense: WikiText-2 test {dense['wikitext2-test']['ppl']:.2f}, PTB valid {dense['ptb-valid']['ppl']:.2f}."
        )
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
        cands = [r for r in rows if r["budget"] == b]
        best[b] = min(cands, key=lambda r: r["wikitext2-test"]["ppl"])
    for c, comp in keys:
        cells = f"| {c} | {comp} |"
        for b in budgets:
            r = next((r for r in rows if r["budget"] == b and (r["criterion"], r["compensation"]) == (c, comp)), None)
            if r is None:
                cells += " - | - |"
                continue
            w, p = r["wikitext2-test"], r["ptb-valid"]
            mark = "**" if r is best[b] else ""
            cells += f" {mark}{w['ppl']:.1f} ± {w['ppl_se']:.1f}{mark} | {p['ppl']:.1f} ± {p['ppl_se']:.1f} |"
        lines.append(cells)
    lines.append("")
    for b in budgets:
        r = best[b]
        lines.append(
            f"Best on held-out WikiText-2 at {b}: `{r['criterion']}` + `{r['compensation']}` "
            f"({r['wikitext2-test']['ppl']:.1f})."
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
