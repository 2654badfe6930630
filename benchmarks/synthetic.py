"""Sample efficiency on synthetic pruning problems with a known front (issue: search engine).

Runs the real engine (store, design, surrogate, inner NSGA-II, acquisition) on
``evoprune.backend.synthetic.SyntheticBackend`` and NSGA-II on real evaluations (the ``ga`` method), and
counts the evaluations each needs before its evaluated front reaches 95% of the true front's
hypervolume (in the searched region, kept parameters >= 50%).

    python benchmarks/synthetic.py --seeds 5
"""

from __future__ import annotations

import argparse
import ast
import math
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
from evoprune.objectives.pareto import hypervolume_of  # noqa: E402
from evoprune.store import Store  # noqa: E402

MIN_KEPT = 0.5


def hv_curve(backend: SyntheticBackend, store: str, ref: np.ndarray) -> list[float]:
    with Store(store) as st:
        evals = st.evaluations(st.get_run().id)
    F = backend.problem.evaluate_exact(np.array([e.levels for e in evals]))
    return [hypervolume_of(F[: i + 1], ref) for i in range(len(F))]


def evals_to_reach(curve: list[float], target: float) -> int | None:
    for i, hv in enumerate(curve):
        if hv >= target:
            return i + 1
    return None


def _count(v: int | None, budget: int) -> str:
    return str(v) if v is not None else f"> {budget}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--evoprune-evals", type=int, default=240)
    p.add_argument("--ga-evals", type=int, default=3000)
    p.add_argument(
        "--surrogates",
        default="additive,additive:link=auto",
        help="evoprune variants: surrogate specs (the first is the engine's default)",
    )
    p.add_argument("--share", type=float, default=0.95)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--from-log", help="write the section from the rows a run printed, without running")
    args = p.parse_args()
    variants = [v.strip() for v in args.surrogates.split(",") if v.strip()]
    # "a,b:k=v" splits on commas inside options too: re-join the option parts
    specs: list[str] = []
    for v in variants:
        if "=" in v and ":" not in v and specs:
            specs[-1] += "," + v
        else:
            specs.append(v)
    methods = [(f"evoprune[{spec}]", "evoprune", spec, args.evoprune_evals) for spec in specs]
    methods.append(("NSGA-II", "ga", "additive", args.ga_evals))
    if args.from_log:
        # re-render the rows a run printed (e.g. one started with --no-write)
        rows = [ast.literal_eval(line) for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
        write_section("Search engine: sample efficiency on synthetic problems", render(rows, methods, args))
        return
    rows = []
    for seed in range(args.seeds):
        backend = SyntheticBackend.create(seed=seed)
        front = backend.problem.true_front()
        front = front[front[:, 1] >= MIN_KEPT]
        ref = np.array([front[:, 0].max() + 0.1, 1.0 + 1e-9])
        target = args.share * hypervolume_of(front, ref)
        for label, method, spec, evals in methods:
            settings = SearchSettings(evals=evals, seed=seed, method=method, min_params=MIN_KEPT, batch=8,
                                      warm_start=False, max_ppl_ratio=1e6, surrogate=spec)  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                store = str(Path(tmp) / "s.db")
                start = time.perf_counter()
                search("synthetic", "synthetic", store, settings, backend=backend)
                wall = time.perf_counter() - start
                curve = hv_curve(backend, store, ref)
            row = {"seed": seed, "method": label, "budget": evals, "reached": evals_to_reach(curve, target),
                   "final": curve[-1] / (target / args.share), "wall_s": wall}  # fmt: skip
            rows.append(row)
            print(row, flush=True)

    body = render(rows, methods, args)
    print(body)
    if not args.no_write:
        write_section("Search engine: sample efficiency on synthetic problems", body)


def render(rows: list[dict], methods: list[tuple], args) -> str:
    def median_count(label: str) -> float:
        return statistics.median(r["reached"] or math.inf for r in rows if r["method"] == label)

    ga_median = median_count("NSGA-II")
    lines = [
        f"Command: `python benchmarks/synthetic.py --seeds {args.seeds}` (8-layer Llama-shaped space, 16 integer "
        "levels, `SyntheticPruning`: a loss that is a sum of per-variable terms, objective log(1 + 10 loss), front "
        "known by dynamic programming; region: kept parameters >= 50%; evoprune: the engine's defaults (NSGA-II "
        f"inner search, uncertainty acquisition) with batches of 8 and budget {args.evoprune_evals}, once per "
        f'surrogate spec; NSGA-II on real evaluations: the `ga` method, budget {args.ga_evals}). "reached": '
        f"evaluations until the evaluated front holds {args.share:.0%} of the true front's hypervolume.",
        "",
        "| seed | method | reached | final share | wall s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['method']} | {_count(r['reached'], r['budget'])} | {r['final']:.3f} | "
                     f"{r['wall_s']:.0f} |")  # fmt: skip
    lines += ["", "| method | median evaluations to reach | ratio to NSGA-II (target <= 0.33) | median final share |",
              "|---|---|---|---|"]  # fmt: skip
    for label, _, _, evals in methods:
        med = median_count(label)
        finals = statistics.median(r["final"] for r in rows if r["method"] == label)
        if label == "NSGA-II":
            ratio = "-"
        elif math.isinf(med):
            ratio = "not reached"
        elif math.isinf(ga_median):
            ratio = f"< {med / args.ga_evals:.2f} (NSGA-II did not reach it in {args.ga_evals})"
        else:
            ratio = f"{med / ga_median:.2f}"
        shown = f"> {evals}" if math.isinf(med) else f"{med:.0f}"
        lines.append(f"| {label} | {shown} | {ratio} | {finals:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
