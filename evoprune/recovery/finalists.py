"""Training-aware selection: judge a search's finalists after a short recovery, not before it.

DarwinLM (Tang et al. 2025, IST-DASLab, arXiv 2502.07780) ends its evolutionary search of
structured pruning by fine-tuning the last candidates briefly and keeping the one that trains
best: the order of configurations before recovery need not be their order after it (on
SmolLM2-135M at 80%, BENCHMARKS.md's recovery table shows the pick and LLM-Pruner's recipe
tied after 24 steps although the pick led clearly before). ``recover_finalists`` does that for a
stored run: the ``k`` best configurations under a budget, by the highest fidelity each reached
(as ``evoprune plan`` ranks them), are exported, each is recovered with the same recipe
(``recover``, recorded against its evaluation in the store), and they are ranked by their
perplexity on recovery's held-out split afterwards. The best one's recovered export is the
result a user keeps.

Everything is resumable: a finalist already exported or recovered into ``out`` is read back, and
an interrupted recovery continues from its checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evoprune.errors import EvopruneError
from evoprune.objectives.spec import Budget
from evoprune.recovery.settings import CHECKPOINT_DIR, RecoverySettings

# The settings a finished recovery in ``out`` must share with this call to be reused.
_SAME_RECIPE = ("method", "steps", "seq_len", "batch", "lm_weight", "lora_rank", "heldout_tokens", "seed", "teacher")


@dataclass(frozen=True)
class Finalist:
    """One finalist: evaluation ``eval_id`` keeping ``params_fraction`` of the parameters.

    ``searched``: the metrics of the highest fidelity the search measured it at (``tokens`` of
    search text); ``before``/``after``: recovery's held-out split before and after training
    (``ppl``, ``ppl_se``, ``nll``, ``nll_se``, ``kl``, ...); ``export``/``recovered``: the
    directories written.
    """

    eval_id: int
    params_fraction: float
    searched: dict
    searched_tokens: int
    before: dict
    after: dict
    export: Path
    recovered: Path


@dataclass(frozen=True)
class FinalistsResult:
    """The finalists of run ``run_id`` under a budget (``max_params``, ``max_memory``,
    ``max_latency_ms``: the one given, else the run's own), best after recovery first.

    ``search_pick``: the evaluation the search itself picks (the best before recovery);
    ``chosen``: the best after recovery (lowest held-out NLL); ``changed``: whether they differ.
    ``within_noise``: whether the runner-up is within two standard errors of the difference.
    """

    store: str
    run_id: int
    max_params: float | None
    settings: dict
    finalists: list[Finalist]
    search_pick: int
    notes: list[str] = field(default_factory=list)
    max_memory: str | None = None
    max_latency_ms: float | None = None

    @property
    def chosen(self) -> Finalist:
        return self.finalists[0]

    @property
    def changed(self) -> bool:
        return self.chosen.eval_id != self.search_pick

    @property
    def within_noise(self) -> bool:
        if len(self.finalists) < 2:
            return False
        a, b = self.finalists[0].after, self.finalists[1].after
        return b["nll"] - a["nll"] <= 2 * math.hypot(a.get("nll_se", 0.0), b.get("nll_se", 0.0))

    def to_dict(self) -> dict:
        d = asdict(self)
        for f in d["finalists"]:
            f["export"], f["recovered"] = str(f["export"]), str(f["recovered"])
        d.update(chosen=self.chosen.eval_id, changed=self.changed, within_noise=self.within_noise)
        return d


def finalists_of(store: str | Path, budget: Budget | float | None, k: int, run: int | None = None):
    """``(run, evaluations, budget)``: the ``k`` best successful configurations under ``budget``
    (a ``Budget``, or a ``--max-params`` value: a kept fraction or a count above 1; without one,
    the budget ``run`` searched under), best first by the highest fidelity each reached, among
    the evaluations of ``run`` (default: the latest) and of every run of the same problem: the
    configurations ``evoprune plan`` chooses from for that budget, in its order
    (``evoprune.objectives.budget.under_budget``); the budget used is the third item.

    Raises EvopruneError when ``k`` < 1, when there is no budget (none given, and the run searched
    without one), for a bad budget, or when no evaluated configuration meets it.
    """
    from evoprune.objectives.budget import has_limit, recorded_budget, under_budget
    from evoprune.objectives.pareto import contenders, run_objectives, rung_offsets, selection_value
    from evoprune.objectives.spec import is_quality
    from evoprune.store import Store

    if k < 1:
        raise EvopruneError(f"--finalists must be at least 1, got {k}")
    given = Budget(max_params=budget) if isinstance(budget, (int, float)) else budget
    with Store.open_existing(store, readonly=True) as st:
        r = st.get_run(run)
        evals = st.problem_evaluations(r, status="ok")
    budget = given if has_limit(given) else recorded_budget(r)
    if not has_limit(budget):
        raise EvopruneError(
            f"--finalists needs a budget and run {r.id} searched without one: add --max-params FRACTION "
            "(e.g. 0.7), --max-memory SIZE or --max-latency-ms MS"
        )
    metric = next(n for n in run_objectives(r) if is_quality(n))
    under, _ = under_budget(r, evals, budget, metric)
    offsets = rung_offsets([e for e in evals if metric in e.metrics], metric)
    # The contenders first (plan's choice is the best of them), then the rest, each by its figure.
    first = {e.id for e in contenders([e for e in under if metric in e.metrics], metric)}
    ranked = sorted(
        under, key=lambda e: (e.id not in first, selection_value(e, metric, offsets), -e.params_fraction, e.id)
    )
    return r, ranked[:k], budget


def _finished_recovery(out: Path, settings: RecoverySettings) -> dict | None:
    """The recovery record of a finished recovery in ``out`` with this recipe, or None when there is none.

    Raises EvopruneError when ``out`` holds a finished recovery of another recipe."""
    plan_file = out / "plan.json"
    # A checkpoint is removed only after the whole export is in place: with one left, the write
    # may have been cut short, and ``recover`` finishes it from there.
    if not plan_file.exists() or (out / CHECKPOINT_DIR).exists():
        return None
    record = json.loads(plan_file.read_text()).get("recovery")
    if record is None:
        return None
    wanted = {**asdict(settings), "lr": settings.learning_rate}
    changed = [k for k in (*_SAME_RECIPE, "lr") if record["settings"].get(k) != wanted.get(k)]
    if changed:
        raise EvopruneError(
            f"'{out}' holds a recovery with other settings ({', '.join(changed)}): rerun with the same arguments "
            "or choose another --out"
        )
    return record


def recover_finalists(
    store: str | Path,
    data: str,
    out: str | Path,
    *,
    max_params: float | None = None,
    max_memory: str | None = None,
    max_latency_ms: float | None = None,
    k: int = 3,
    settings: RecoverySettings | None = None,
    run: int | None = None,
    progress: Callable[..., None] | None = None,
) -> FinalistsResult:
    """Export and recover the ``k`` best configurations of a stored run under a budget
    (``finalists_of``) with one recipe; rank them by held-out perplexity after recovery.

    The budget, as ``plan`` and ``export`` take it: ``max_params`` (a kept fraction or a count),
    ``max_memory`` (e.g. ``"400MB"``), ``max_latency_ms``; without one, the budget the run
    searched under.

    ``data``: the training text (``recover``'s ``data``; its first ``settings.heldout_tokens``
    tokens are the held-out split the ranking uses). ``out``: finalist ``N`` goes to
    ``OUT/eval-N/pruned`` (the export) and ``OUT/eval-N/recovered`` (the recovered export). Each
    recovery is recorded in ``store`` against its evaluation. ``progress(event, **info)``:
    ``finalist`` (index, total, eval_id), then ``recover``'s and ``export``'s events.

    Raises EvopruneError on bad input (as ``finalists_of`` and ``recover``), or when ``out`` holds a
    recovery of other settings.
    """
    from evoprune.objectives.pareto import top_rung
    from evoprune.pruned.export import export_from_store
    from evoprune.recovery.run import recover

    settings = settings or RecoverySettings()
    settings.validate()
    r, chosen, budget = finalists_of(store, Budget(max_params, max_memory, max_latency_ms), k, run)
    out = Path(out)
    rows: list[Finalist] = []
    notes: list[str] = []
    for i, e in enumerate(chosen):
        if progress:
            progress("finalist", index=i + 1, total=len(chosen), eval_id=e.id)
        export_dir, recovered = out / f"eval-{e.id}" / "pruned", out / f"eval-{e.id}" / "recovered"
        if not (export_dir / "plan.json").exists():  # a killed export left no plan.json: write it again
            export_from_store(store, export_dir, str(e.id), run=e.run_id, force=True, progress=progress)
        record = _finished_recovery(recovered, settings)
        if record is None:
            result = recover(export_dir, data, recovered, settings, progress, store=store)
            before, after = result.heldout_before, result.heldout_after
            notes += [n for n in result.notes if n not in notes]  # one note per cause, not per finalist
        else:
            before, after = record["heldout_before"], record["heldout_after"]
        tokens, searched = top_rung(e)
        rows.append(
            Finalist(
                eval_id=e.id,
                params_fraction=e.params_fraction,
                searched=searched,
                searched_tokens=tokens or int(r.settings.get("backend", {}).get("eval_tokens", 0)),
                before=before,
                after=after,
                export=export_dir,
                recovered=recovered,
            )
        )
    rows.sort(key=lambda f: (f.after["nll"], f.eval_id))
    return FinalistsResult(
        store=str(store),
        run_id=r.id,
        max_params=budget.max_params,
        settings={**asdict(settings), "lr": settings.learning_rate},
        finalists=rows,
        search_pick=chosen[0].id,
        notes=notes,
        max_memory=budget.max_memory,
        max_latency_ms=budget.max_latency_ms,
    )
