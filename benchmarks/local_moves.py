"""Local moves under a budget, on synthetic problems with a known optimum (``--local-share``).

Runs the real engine on ``evoprune.backend.synthetic.SyntheticBackend`` under a parameter budget
with each ``--local-share`` (the share of every batch spent on level swaps around the best
configurations) and reports the gap between the best evaluated configuration within the budget
and the exact optimum at that budget (dynamic programming over the additive loss), in the
search's own units (log(1 + 10 loss)). The searches are otherwise the defaults of ``evoprune
search``; the problems are noise-free, so this measures how well each share finds the optimum,
not how it copes with noisy evaluations.

    python benchmarks/local_moves.py --seeds 4 --budgets 0.8,0.7 --shares 0,0.25,0.5,1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._markdown import write_section  # noqa: E402
from evoprune.backend.synthetic import SyntheticBackend  # noqa: E402
from evoprune.engine.run import search  # noqa: E402
from evoprune.engine.settings import SearchSettings  # noqa: E402

HEADING = "Search engine: local moves under a budget (synthetic)"


def optimum_at(backend: SyntheticBackend, budget: float) -> float:
    """The exact best objective within ``budget`` kept fraction."""
    front = backend.problem.true_front()
    return float(front[front[:, 1] <= budget + 1e-12][:, 0].min())


def run_one(seed: int, budget: float, share: float, evals: int) -> dict:
    backend = SyntheticBackend.create(seed=seed)
    settings = SearchSettings(evals=evals, seed=seed, max_params=budget, local_share=share, backend=backend.settings)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = search("synthetic", "synthetic", str(Path(tmp) / "s.db"), settings, backend=backend)
        wall = time.perf_counter() - start
    within = [e for e in result.evaluations if e.status == "ok" and e.params_fraction <= budget]
    F = backend.problem.evaluate_exact(np.array([e.levels for e in within]))
    best = int(np.argmin(F[:, 0]))
    return {"seed": seed, "budget": budget, "share": share, "gap": float(F[best, 0]) - optimum_at(backend, budget),
            "origin": within[best].origin, "local": sum(e.origin == "local" for e in result.evaluations),
            "wall_s": wall}  # fmt: skip


def render(rows: list[dict], args) -> str:
    lines = [
        f"Command: `python benchmarks/local_moves.py --seeds {args.seeds} --budgets {args.budgets} --shares "
        f"{args.shares} --evals {args.evals}`. The engine's defaults (batch 4, initial design 8, additive surrogate, "
        "uncertainty acquisition, focus 5%) on `SyntheticPruning` (the 8-layer Llama-shaped space of the synthetic "
        "benchmark above) under `--max-params`; gap: the best evaluated configuration within the budget less the "
        "exact optimum at the budget, in the search's units (log(1 + 10 loss)); 0 is the optimum. Noise-free "
        "evaluations: this measures how well each share finds the optimum, not how it copes with noise.",
        "",
        "| budget | local share | mean gap | median gap | seeds better than share 0 | picks from local moves | "
        "mean wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        base = {r["seed"]: r["gap"] for r in rows if r["budget"] == budget and r["share"] == 0}
        for share in sorted({r["share"] for r in rows}):
            sel = [r for r in rows if r["budget"] == budget and r["share"] == share]
            gaps = [r["gap"] for r in sel]
            better = "-" if share == 0 or not base else f"{sum(r['gap'] < base[r['seed']] for r in sel)} of {len(sel)}"
            lines.append(
                f"| {budget:.0%} | {share:g} | {statistics.mean(gaps):.3f} | {statistics.median(gaps):.3f} | {better} | "
                f"{sum(r['origin'] == 'local' for r in sel)} of {len(sel)} | "
                f"{statistics.mean(r['wall_s'] for r in sel):.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--budgets", default="0.8,0.7")
    p.add_argument("--shares", default="0,0.25,0.5,1")
    p.add_argument("--evals", type=int, default=60)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        for share in (float(s) for s in args.shares.split(",")):
            for seed in range(args.seeds):
                rows.append(run_one(seed, budget, share, args.evals))
                print(rows[-1], flush=True)
    body = render(rows, args)
    print(body)
    if not args.no_write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
