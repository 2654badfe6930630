"""Importance criteria x compensation on SmolLM2-135M, judged on held-out text.

Allocation: MLP-only, the same number of channels removed in every layer (a fine grid,
``mlp_levels=1536``: one channel per level), the most channels kept with at most 80% / 70% of the
dense parameters. Importance is scored on WikiText-2 *valid* (the backend's default calibration,
``BackendSettings.calib_tokens`` tokens in ``seq_len``-token windows); quality is perplexity on the first 16,384 tokens of
WikiText-2 *test* and of PTB valid, in 512-token windows, each with its standard error over windows.
Every configuration is evaluated on the same windows and the per-window NLL is kept, so the render
can give paired differences between criteria (a far tighter comparison than two error bars).

    python benchmarks/criteria.py run --criteria wanda,flap --out results.jsonl   # one process per subset
    python benchmarks/criteria.py run --criteria flap --compensations refit --out refit.jsonl
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
from evoprune.backend.compensation import COMPENSATIONS  # noqa: E402
from evoprune.backend.data import load_text, token_windows  # noqa: E402
from evoprune.backend.evaluate import quality  # noqa: E402
from evoprune.backend.importance import CRITERIA  # noqa: E402
from evoprune.backend.loading import load_model, resolve_model  # noqa: E402
from evoprune.backend.pruner import PruningBackend  # noqa: E402
from evoprune.backend.settings import BackendSettings  # noqa: E402
from evoprune.store import Store  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CALIB = DATA / "wikitext-2" / "valid.txt"
HELD_OUT = {"wikitext2-test": DATA / "wikitext-2" / "test.txt", "ptb-valid": DATA / "ptb" / "valid.txt"}
TOKENS, WINDOW = 16_384, 512
FRACTIONS = (0.8, 0.7)
HEADING = "Importance criteria and compensation"


def mlp_only_uniform(space, fraction: float) -> np.ndarray:
    """The uniform MLP-only configuration with the most kept channels under ``fraction`` of the parameters."""
    limit = fraction * space.arch.dense_params()
    for level in range(space.mlp_levels + 1):
        x = np.concatenate([np.zeros(space.num_layers, dtype=int), np.full(space.num_layers, level)])
        if space.params(x) <= limit:
            return space.validate(x)
    raise ValueError(f"no MLP-only configuration reaches {fraction}")


class Bench:
    """The loaded model, scored backends (cached per criterion, compensation and level grid) and
    the results file: one JSON line per measurement, appended as soon as it is made."""

    def __init__(self, out: Path, calib_tokens: int = BackendSettings.calib_tokens):
        torch.set_num_threads(1)
        self.calib_tokens = calib_tokens
        self.loaded = load_model(resolve_model("smollm2-135m"))
        self.calib = load_text(str(CALIB))
        self.out = out
        self.backends: dict[tuple[str, str, int | None], PruningBackend] = {}
        # A rerun with the same --out continues: measurements already in it are not repeated.
        lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
        self.done = [json.loads(line) for line in lines if line.strip()]

    def windows(self, text: str) -> torch.Tensor:
        return token_windows(self.loaded.tokenizer, load_text(str(HELD_OUT[text])).text, TOKENS, WINDOW)

    def has(self, **labels) -> bool:
        return any(all(r.get(k) == v for k, v in labels.items()) for r in self.done)

    def backend(self, criterion: str, compensation: str, mlp_levels: int | None = 1536) -> PruningBackend:
        """A scored backend. ``mlp_levels=None``: the search's own backend (its level grid, and
        calibration windows cut from WikiText-2 valid after its evaluation windows, as
        ``evoprune search --data`` WikiText-2 valid does); otherwise calibration on the start of
        WikiText-2 valid and a fine MLP grid."""
        key = (criterion, compensation, mlp_levels)
        if key not in self.backends:
            if mlp_levels is None:
                settings = BackendSettings(criterion=criterion, compensation=compensation)
                b = PruningBackend(self.loaded, self.calib, settings, None)
            else:
                settings = BackendSettings(
                    criterion=criterion,
                    compensation=compensation,
                    calib_data=str(CALIB),
                    mlp_levels=mlp_levels,
                    calib_tokens=self.calib_tokens,
                )
                # The backend's own evaluation text is unused: held-out windows are evaluated directly.
                b = PruningBackend(self.loaded, load_text(str(HELD_OUT["wikitext2-test"])), settings, self.calib)
            start = time.perf_counter()
            b.score()  # cached on disk: "none" after "bias" (or another criterion's "refit") reads it back
            b.score_s = time.perf_counter() - start
            self.backends[key] = b
        return self.backends[key]

    def evaluate(self, b: PruningBackend, x, text: str, windows: torch.Tensor, **labels) -> None:
        plans = b.plan(x)
        masks = b._masks()
        masks.apply(plans, b.compensation(plans))
        try:
            start = time.perf_counter()
            # One window at a time: the per-window NLL is what paired differences need.
            window_nll = np.array(
                [quality(self.loaded.model, windows[i : i + 1], None)["nll"] for i in range(len(windows))]
            )
        finally:
            masks.reset()
        nll, nll_se = float(window_nll.mean()), float(window_nll.std(ddof=1) / np.sqrt(len(window_nll)))
        row = {
            **labels,
            "text": text,
            "ppl": float(np.exp(nll)),
            "ppl_se": float(np.exp(nll) * nll_se),  # delta method, as evaluate.quality
            "tokens": int(windows.numel()),
            "params_fraction": b.space.params(x) / b.space.arch.dense_params(),
            "mlp_channels": len(plans[0].mlp_channels),
            "calib_tokens": b.settings.calib_tokens,
            "calib_seq_len": b.settings.seq_len,
            "window_nll": window_nll.round(6).tolist(),
            "score_s": round(getattr(b, "score_s", 0.0), 1),
            "eval_s": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)
        self.done.append(row)
        with self.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def run(
    criteria: list[str],
    out: Path,
    calib_tokens: int = BackendSettings.calib_tokens,
    compensations: tuple[str, ...] = COMPENSATIONS,
) -> None:
    """Evaluate every criterion x compensation; one JSON line per (text, budget, criterion, compensation).

    WikiText-2 at 80% comes first, then 70%, then PTB, then the dense model: a run cut short still
    has the comparison that matters most.
    """
    bench = Bench(out, calib_tokens)
    for text in HELD_OUT:
        windows = bench.windows(text)
        for fraction in FRACTIONS:
            for criterion in criteria:
                for compensation in compensations:
                    labels = dict(criterion=criterion, compensation=compensation, budget=f"{fraction:.0%}")
                    if bench.has(text=text, calib_tokens=calib_tokens, **labels):
                        continue
                    b = bench.backend(criterion, compensation)
                    bench.evaluate(b, mlp_only_uniform(b.space, fraction), text, windows, **labels)
    if "wanda" in criteria:
        b = bench.backend("wanda", "none")
        for text in HELD_OUT:
            if not bench.has(text=text, budget="dense"):
                bench.evaluate(
                    b, b.space.lower, text, bench.windows(text), criterion="dense", compensation="-", budget="dense"
                )


def _relative(path: str) -> str:
    """``path`` relative to the checkout when it lies inside it (table rows stay short), else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def picks(specs: list[str], criteria: list[str], out: Path, compensations: tuple[str, ...] = COMPENSATIONS) -> None:
    """Searched picks (``STORE:RUN:EVALUATION``) under each criterion x compensation, on held-out text.

    The picks were selected under the search's default criterion and compensation, which favours
    that pair: read a difference in its favour with that in mind, one against it as the stronger.
    """
    bench = Bench(out)
    for text in HELD_OUT:
        windows = bench.windows(text)
        for spec in specs:
            path, run_id, eval_id = spec.rsplit(":", 2)
            with Store(path, readonly=True) as store:
                e = next(e for e in store.evaluations(int(run_id)) if e.id == int(eval_id))
            label = f"{_relative(path)}:{run_id}:{eval_id}"
            for criterion in criteria:
                for compensation in compensations:
                    labels = dict(criterion=criterion, compensation=compensation, budget=f"pick {label}")
                    if bench.has(text=text, **labels):
                        continue
                    b = bench.backend(criterion, compensation, mlp_levels=None)
                    bench.evaluate(b, np.asarray(e.levels), text, windows, **labels)


def _paired(a: dict, b: dict) -> tuple[float, float] | None:
    """Mean per-window NLL difference ``a - b`` (nats) and its standard error over the shared windows."""
    if "window_nll" not in a or "window_nll" not in b:
        return None
    d = np.asarray(a["window_nll"]) - np.asarray(b["window_nll"])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def render(paths: list[Path]) -> str:
    flat = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    for r in flat:  # a run with other calibration (--calib-tokens) is a row of its own
        if (  # a pick is scored with its own search's calibration, whatever the default is now
            r["budget"] != "dense"
            and not r["budget"].startswith("pick ")
            and r.get("calib_tokens", BackendSettings.calib_tokens) != BackendSettings.calib_tokens
        ):
            r["criterion"] = f"{r['criterion']} ({r['calib_tokens']:,} calib tokens)"
    # One row per (criterion, compensation, budget), with the texts measured so far.
    merged: dict[tuple, dict] = {}
    for r in flat:
        row = merged.setdefault((r["criterion"], r["compensation"], r["budget"]), {**r})
        row[r["text"]] = r
    rows = list(merged.values())
    dense = next((r for r in rows if r["budget"] == "dense"), None)
    calib = sorted({(r["calib_tokens"], r.get("calib_seq_len", 256)) for r in rows})
    default = BackendSettings()
    lines = [
        "SmolLM2-135M (float32, CPU), `python benchmarks/criteria.py`. Importance scored on WikiText-2 valid",
        f"({', '.join(f'{t:,} calibration tokens in {w}-token windows' for t, w in calib)}). Allocation: MLP-only,",
        "the same number of channels removed in every layer (`mlp_levels=1536`), the most kept under 80% / 70% of",
        "the dense parameters. Held-out perplexity on the first 16,384 tokens of WikiText-2 test and of PTB valid",
        "(512-token windows), ± one standard error over the 32 windows. Compensation (`bias`, `refit`) adds a",
        "576-float bias to each pruned down projection (30 x 576 = 17k parameters, 0.013%, not in the kept",
        "fraction); `refit` also re-fits the kept columns of each down projection by least squares.",
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
    cells_of = {(r["criterion"], r["compensation"], r["budget"]): r for r in rows}
    best = {}
    for b in budgets:
        for name in HELD_OUT:
            cands = [r for r in rows if r["budget"] == b and name in r]
            best[b, name] = min(cands, key=lambda r: r[name]["ppl"]) if cands else None
    for c, comp in keys:
        cells = f"| {c} | {comp} |"
        for b in budgets:
            r = cells_of.get((c, comp, b))
            for name in HELD_OUT:
                m = r.get(name) if r else None
                mark = "**" if m and r is best[b, name] else ""
                cells += f" {mark}{m['ppl']:.1f} ± {m['ppl_se']:.1f}{mark} |" if m else " - |"
        lines.append(cells)
    lines.append("")
    if any(" - |" in line for line in lines):
        lines += ["`-`: not measured.", ""]
    lines += [
        f"Paired against the default (`{default.criterion}` + `{default.compensation}`): the mean per-window",
        "difference in NLL (nats; negative: better than the default) ± its standard error over the same 32",
        "windows, for the best configuration of each column.",
        "",
    ]
    for b in budgets:
        for name in HELD_OUT:
            r = best[b, name]
            ref = cells_of.get((default.criterion, default.compensation, b), {}).get(name)
            if r is None or ref is None:
                continue
            paired = _paired(r[name], ref)
            diff = f"{paired[0]:+.3f} ± {paired[1]:.3f} nats" if paired else "no per-window losses"
            is_default = (r["criterion"], r["compensation"]) == (default.criterion, default.compensation)
            lines.append(
                f"- {b}, {name}: best `{r['criterion']}` + `{r['compensation']}` ({r[name]['ppl']:.1f})"
                + (" = the default." if is_default else f"; against the default ({ref['ppl']:.1f}): {diff}.")
            )
    return "\n".join(lines + _render_picks(rows, default))


def _render_picks(rows: list[dict], default: BackendSettings) -> list[str]:
    """The searched picks under each criterion x compensation (``picks``), paired against the default."""
    specs = sorted({r["budget"] for r in rows if r["budget"].startswith("pick ")})
    if not specs:
        return []
    lines = [
        "",
        "Searched picks (`python benchmarks/criteria.py picks STORE:RUN:EVALUATION,...`), the search's own level",
        "grid and calibration windows, under each criterion x compensation. Each pick was selected under its",
        "search's criterion and compensation, which favours that pair. Paired: mean per-window NLL difference",
        f"against the current default (`{default.criterion}` + `{default.compensation}`, where measured; nats),",
        "± its standard error over the 32 windows.",
        "",
        "| pick | kept | criterion | compensation | wiki test | paired | PTB | paired |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for spec in specs:
        ref = next((r for r in rows if r["budget"] == spec and (r["criterion"], r["compensation"]) ==
                    (default.criterion, default.compensation)), None)  # fmt: skip
        for r in sorted((r for r in rows if r["budget"] == spec), key=lambda r: (r["criterion"], r["compensation"])):
            cells = f"| {spec[5:]} | {r['params_fraction']:.3f} | {r['criterion']} | {r['compensation']} |"
            for name in HELD_OUT:
                m = r.get(name)
                paired = _paired(m, ref[name]) if m and ref and name in ref and r is not ref else None
                cells += f" {m['ppl']:.1f} ± {m['ppl_se']:.1f} |" if m else " - |"
                cells += f" {paired[0]:+.3f} ± {paired[1]:.3f} |" if paired else " - |"
            lines.append(cells)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--criteria", default=",".join(CRITERIA))
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--calib-tokens", type=int, default=BackendSettings.calib_tokens)
    r.add_argument("--compensations", default=",".join(COMPENSATIONS))
    k = sub.add_parser("picks", help="searched picks under each criterion x compensation")
    k.add_argument("specs", help="STORE:RUN:EVALUATION, comma-separated")
    k.add_argument("--criteria", default="flap,wanda-sp")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--compensations", default=",".join(COMPENSATIONS))
    w = sub.add_parser("render")
    w.add_argument("results", type=Path, nargs="+")
    w.add_argument("--print", action="store_true", help="Print the section instead of writing BENCHMARKS.md.")
    args = parser.parse_args()
    if args.cmd in ("run", "picks"):
        criteria = [c.strip() for c in args.criteria.split(",")]
        compensations = tuple(c.strip() for c in args.compensations.split(","))
    if args.cmd == "run":
        run(criteria, args.out, args.calib_tokens, compensations)
    elif args.cmd == "picks":
        picks(args.specs.split(","), criteria, args.out, compensations)
    else:
        body = render(args.results)
        print(body) if args.print else write_section(HEADING, body)


if __name__ == "__main__":
    main()
