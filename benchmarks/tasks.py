"""Task accuracy of SmolLM2-135M: dense ARC-Easy and MMLU dev, and masks vs export for a pruned one.

1. Dense SmolLM2-135M(-Instruct) on ARC-Easy dev (570 questions, acc and acc_norm) and MMLU dev
   (285 questions, 57 subjects, zero-shot acc), with evoprune's scorer on the local files.
2. One pruned configuration on ARC-Easy dev, evaluated through the masks in this process and as
   an export reloaded in a fresh process (``evoprune evaluate --model EXPORT``): accuracies and
   per-question log-likelihoods side by side.
3. When lm-evaluation-harness is installed: the harness's own scorer on the same dense ARC
   questions (a subset), to show both scorers agree.

Writes the "## Task accuracy" section of ``BENCHMARKS.md`` (other sections are left alone).
Usage::

    .venv/bin/python benchmarks/tasks.py [--harness-limit 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._markdown import BENCHMARKS, write_section  # noqa: E402
from evoprune.backend.data import load_text  # noqa: E402
from evoprune.backend.loading import load_model, resolve_model  # noqa: E402
from evoprune.backend.pruner import PruningBackend  # noqa: E402
from evoprune.backend.settings import BackendSettings  # noqa: E402
from evoprune.pruned.export import export_pruned  # noqa: E402
from evoprune.tasks import TaskEvaluator, evaluate_model, resolve_task  # noqa: E402
from evoprune.tasks import harness as lm_harness  # noqa: E402

HEADING = "Task accuracy"


def pruned_configuration(space) -> np.ndarray:
    """A mild configuration that exercises every kind of pruning: MLPs narrowed by one level, a third of
    the query heads gone in layers 10-19, the attention of layer 5 and the MLP of layer 20 removed."""
    L = space.num_layers
    x = np.concatenate([np.zeros(L, dtype=int), np.full(L, 1)])
    x[10:20] = 1
    x[5] = space.attn_levels
    x[L + 20] = space.mlp_levels
    return space.validate(x)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness-limit", type=int, default=100, help="ARC questions for the harness cross-check")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads here and in the fresh process (default: torch's)"
    )
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        # On a machine shared with other jobs, fewer threads than cores avoids threads waiting on each other.
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)

    source = resolve_model("smollm2-135m")
    loaded = load_model(source)
    backend = PruningBackend(loaded, load_text("builtin"), BackendSettings())
    model, tok = loaded.model, loaded.tokenizer
    arc, mmlu = resolve_task("arc_easy"), resolve_task("mmlu")
    figures: dict = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}

    log("dense ARC-Easy dev")
    dense_arc = evaluate_model(model, tok, arc)
    log(f"  {dense_arc.metrics} in {dense_arc.duration_s:.0f}s")
    log("dense MMLU dev, zero-shot")
    dense_mmlu = evaluate_model(model, tok, mmlu, shots=0)
    log(f"  {dense_mmlu.metrics} in {dense_mmlu.duration_s:.0f}s")
    figures["dense"] = {"arc_easy": dense_arc.to_dict(), "mmlu": dense_mmlu.to_dict()}

    harness = None
    if lm_harness.available():
        log(f"lm-evaluation-harness on {args.harness_limit} ARC questions (dense)")
        ours = evaluate_model(model, tok, arc, limit=args.harness_limit)
        theirs = lm_harness.harness_local(model, tok, arc, limit=args.harness_limit)
        diff = max(
            abs(a - b)
            for x, y in zip(ours.items, theirs.items, strict=True)
            for a, b in zip(x.loglikelihoods, y.loglikelihoods, strict=True)
        )
        same = sum(
            (x.pred, x.pred_norm) == (y.pred, y.pred_norm) for x, y in zip(ours.items, theirs.items, strict=True)
        )
        harness = {"n": ours.n, "ours": ours.metrics, "harness": theirs.metrics, "max_ll_diff": diff, "same": same}
        harness |= {"ours_s": ours.duration_s, "harness_s": theirs.duration_s}
        figures["harness"] = harness
        log(f"  {harness}")

    log("pruned configuration through the masks, ARC-Easy dev")
    x = pruned_configuration(backend.space)
    backend.score()
    evaluator = TaskEvaluator(backend, arc)
    masked = evaluator.result(x)
    log(f"  {masked.metrics} in {masked.duration_s:.0f}s")
    with tempfile.TemporaryDirectory(prefix="evoprune-bench-") as tmp:
        export = export_pruned(backend, x, Path(tmp) / "export")
        out = Path(tmp) / "export.json"
        log("the export in a fresh process")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "evoprune", "evaluate", "--model", str(export.path), "--tasks", "arc_easy",
             "--out", str(out)],
            capture_output=True, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"evaluating the export failed:\n{proc.stderr}")
        fresh_wall = time.perf_counter() - start
        exported = json.loads(out.read_text())["results"][0]
    diffs = [
        abs(a - b)
        for s, e in zip(masked.items, exported["items"], strict=True)
        for a, b in zip(s.loglikelihoods, e["loglikelihoods"], strict=True)
    ]
    same_preds = sum(
        (s.pred, s.pred_norm) == (e["pred"], e["pred_norm"])
        for s, e in zip(masked.items, exported["items"], strict=True)
    )
    pruned = {
        "levels": x.tolist(),
        "params": export.params,
        "params_fraction": export.params_fraction,
        "masked": masked.to_dict(),
        "export": {k: v for k, v in exported.items() if k != "items"},
        "export_wall_s": fresh_wall,
        "max_ll_diff": max(diffs),
        "same_predictions": same_preds,
    }
    figures["pruned"] = pruned
    log(f"  export {exported['metrics']}; max |d ll| {max(diffs):.2e}; same predictions {same_preds}/{masked.n}")

    lines = [
        "Measured by `benchmarks/tasks.py` on SmolLM2-135M-Instruct (the `smollm2-135m` zoo model, float32,",
        f"de-quantized from Q4_1), CPU, {figures['threads']} torch thread(s) on a 2-core machine shared with other jobs",
        "(timings are indicative only). evoprune's own",
        "scorer on the local files in `../shared/data`: the lm-evaluation-harness prompts (`arc_easy`: `Question:",
        "...\\nAnswer:` + ` <choice>`; `mmlu`: subject header, lettered options, `Answer:` + ` A`..` D`), acc = best",
        "summed log-likelihood, acc_norm = best log-likelihood per character of the choice (the harness's",
        "definitions). ± is the standard error over questions.",
        "",
        "| model | task | questions | shots | acc | acc_norm | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, r: dict) -> str:
        m, e = r["metrics"], r["stderr"]
        cells = [f"{m[k]:.4f} ± {e[k]:.4f}" if k in m else "-" for k in ("acc", "acc_norm")]
        return f"| {label} | {r['task']} | {r['n']} | {r['shots']} | {cells[0]} | {cells[1]} | {r['duration_s']:.0f} |"

    lines.append(row("dense", figures["dense"]["arc_easy"]))
    lines.append(row("dense", figures["dense"]["mmlu"]))
    lines.append(row(f"pruned ({100 * export.params_fraction:.1f}% params), masks", pruned["masked"]))
    lines.append(row(f"pruned ({100 * export.params_fraction:.1f}% params), export", pruned["export"]))
    lines += [
        "",
        "MMLU is zero-shot: the data at hand is the dev split only (5 questions per subject), which is the",
        "harness's few-shot pool, so the harness's 5-shot setting cannot be reproduced on it (evoprune can draw",
        "up to 4 shots from the other dev questions of a subject, but that is not the published protocol). With",
        "4 answer letters chance is 0.25. ARC-Easy dev and MMLU dev are small (570 and 285 questions): compare",
        "numbers with the standard errors in mind.",
        "",
        "**Masks vs export.** The pruned configuration (every MLP one level narrower, a third of the query",
        "heads removed in layers 10-19, the attention of layer 5 and the MLP of layer 20 removed;",
        f"{export.params / 1e6:.2f}M parameters, {100 * export.params_fraction:.1f}% kept) was scored on all 570",
        "ARC-Easy dev questions through the masks (the search's in-place evaluation), then exported and",
        "reloaded with `evoprune evaluate --model EXPORT` in a fresh process:",
        "",
        "| | masks | export (fresh process) |",
        "| --- | ---: | ---: |",
        f"| acc | {masked.metrics['acc']:.4f} | {exported['metrics']['acc']:.4f} |",
        f"| acc_norm | {masked.metrics['acc_norm']:.4f} | {exported['metrics']['acc_norm']:.4f} |",
        f"| seconds (scoring) | {masked.duration_s:.0f} | {exported['duration_s']:.0f} |",
        "",
        f"Same predicted answer (acc and acc_norm) on {same_preds} of {masked.n} questions; the largest",
        f"difference of a choice's log-likelihood between the two is {max(diffs):.1e}.",
    ]
    if harness is not None:
        lines += [
            "",
            f"**Against lm-evaluation-harness.** The same {harness['n']} ARC-Easy questions (the `--limit` subset,",
            "seed 0; contexts and choices rendered by evoprune) scored on the dense model by the harness (`HFLM` on the model in",
            f"memory, version {_lm_eval_version()}): acc {harness['harness']['acc']:.4f} / acc_norm",
            f"{harness['harness']['acc_norm']:.4f} (evoprune: {harness['ours']['acc']:.4f} /",
            f"{harness['ours']['acc_norm']:.4f}); same predictions on {harness['same']} of {harness['n']},",
            f"largest log-likelihood difference {harness['max_ll_diff']:.1e}; {harness['ours_s']:.0f} s here vs",
            f"{harness['harness_s']:.0f} s in the harness (evoprune runs each question's context once and",
            "reuses its KV cache for the choices).",
        ]
    write_section(HEADING, "\n".join(lines))
    log(f"wrote the '{HEADING}' section of {BENCHMARKS}")


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


if __name__ == "__main__":
    main()
