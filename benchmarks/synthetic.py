"""Sample efficiency on synthetic pruning problems with a known front (issue: search engine).

Runs the real engine (store, design, surrogate, inner NSGA-II, acquisition) on
``evoprune.synthetic.SyntheticBackend`` and NSGA-II on real evaluations (the ``ga`` method), and
counts the evaluations each needs before its evaluated front reaches 95% of the true front's
hypervolume (in the searched region, kept parameters >= 50%).

    python benchmarks/synthetic.py --seeds 5
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
from evoprune.pareto import hypervolume_of  # noqa: E402
from evoprune.search import SearchSettings, search  # noqa: E402
from evoprune.store import Store  # noqa: E402
from evoprune.synthetic import SyntheticBackend  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--evoprune-evals", type=int, default=120)
    p.add_argument("--ga-evals", type=int, default=600)
    p.add_argument("--share", type=float, default=0.95)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    rows = []
    for seed in range(args.seeds):
        backend = SyntheticBackend.create(seed=seed)
        front = backend.problem.true_front()
        front = front[front[:, 1] >= MIN_KEPT]
        ref = np.array([front[:, 0].max() + 0.1, 1.0 + 1e-9])
        target = args.share * hypervolume_of(front, ref)
        row = {"seed": seed}
        for method, evals in (("evoprune", args.evoprune_evals), ("ga", args.ga_evals)):
            settings = SearchSettings(evals=evals, seed=seed, method=method, min_params=MIN_KEPT, batch=8,
                                      warm_start=False, max_ppl_ratio=1e6)  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                store = str(Path(tmp) / "s.db")
                start = time.perf_counter()
                search("synthetic", "synthetic", store, settings, backend=backend)
                row[f"{method}_s"] = time.perf_counter() - start
                curve = hv_curve(backend, store, ref)
            row[method] = evals_to_reach(curve, target)
            row[f"{method}_final"] = curve[-1] / (target / args.share)
        rows.append(row)
        print(row, flush=True)

    def med(key):
        vals = [r[key] if r[key] is not None else float("inf") for r in rows]
        return statistics.median(vals)

    ratio = med("evoprune") / med("ga") if med("ga") not in (0, float("inf")) else float("nan")
    lines = [
        f"Command: `python benchmarks/synthetic.py --seeds {args.seeds}` (8-layer Llama-shaped space, 16 integer "
        "levels, `SyntheticPruning` loss with a front known by dynamic programming; region: kept parameters >= 50%; "
        f"evoprune: NGBoost, NSGA-II inner search, batches of 8, budget {args.evoprune_evals}; NSGA-II on real "
        f"evaluations: the `ga` method, budget {args.ga_evals}).",
        "",
        f"| seed | evoprune: evaluations to {args.share:.0%} of the true front's hypervolume | NSGA-II (real evaluations) | "
        "evoprune final share | NSGA-II final share | evoprune wall s | NSGA-II wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['evoprune'] or 'not reached'} | {r['ga'] or 'not reached'} | "
                     f"{r['evoprune_final']:.3f} | {r['ga_final']:.3f} | {r['evoprune_s']:.0f} | {r['ga_s']:.0f} |")  # fmt: skip
    lines += [
        "",
        f"Median evaluations to {args.share:.0%}: evoprune {med('evoprune')}, NSGA-II {med('ga')}; "
        f"ratio {ratio:.2f} (target: at most 0.33).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Search engine: sample efficiency on synthetic problems", body)


if __name__ == "__main__":
    main()
