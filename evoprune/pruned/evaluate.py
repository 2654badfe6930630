"""The work behind ``evoprune evaluate``: check the tasks, load the target, score, store."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from evoprune.backend.loading import absolute_if_local
from evoprune.errors import EvopruneError, require_parent_dir
from evoprune.pruned.target import Target, open_target
from evoprune.tasks import harness
from evoprune.tasks.evaluator import TaskResult, evaluate_model
from evoprune.tasks.spec import TaskRef, build_questions, resolve_task


@dataclass
class EvaluateReport:
    target: Target
    config: str | None
    results: list[TaskResult]
    stored: list[int] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.results:
            out.update(r.keyed())
        return out

    def to_dict(self, items: bool = False) -> dict:
        t = self.target
        return {
            "model": t.label,
            "config": self.config,
            "source": t.source,
            "params": t.params,
            "params_fraction": t.params_fraction,
            "levels": t.levels,
            "config_key": t.config_key,
            "run": t.run_id,
            "evaluation": t.eval_id,
            "metrics": self.metrics(),
            "results": [r.to_dict(items) for r in self.results],
            "stored": self.stored,
        }


def parse_tasks(text: str) -> list[str]:
    """The task names of ``--tasks``, each once, in the order given."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise EvopruneError("--tasks names no task: pass e.g. --tasks arc_easy,mmlu")
    return names


def _check_tasks(
    names: list[str], limit: int | None, shots: int | None, seed: int, data_dir: str | Path | None = None
) -> list[TaskRef | str]:
    """Resolve every task and build its questions now, so bad input fails before the model loads."""
    checked: list[TaskRef | str] = []
    for name in names:
        if name.startswith(harness.PREFIX):
            if not harness.available():
                raise EvopruneError(f"task '{name}' needs lm-evaluation-harness, not installed: {harness.INSTALL_HINT}")
            checked.append(name)
        else:
            ref = resolve_task(name, data_dir)
            build_questions(ref, limit=limit, shots=shots, seed=seed)
            checked.append(ref)
    return checked


def run_evaluate(
    model: str,
    tasks: list[str],
    *,
    config: str | None = None,
    store_path: str | Path | None = None,
    data: str | None = None,
    limit: int | None = None,
    shots: int | None = None,
    seed: int = 0,
    progress=None,
    task_data: str | Path | None = None,
    dtype: str | None = None,
) -> EvaluateReport:
    """Score ``tasks`` on what ``model``/``config`` name; keep the results in the store when given.

    ``task_data`` is the data directory of shipped tasks (default ``$EVOPRUNE_TASK_DATA``, else the hub);
    ``dtype`` the model's (default: the run's, plan's or export's, else float32).
    """
    from evoprune.store import Store

    progress = progress or (lambda *a, **k: None)
    if limit is not None and limit < 1:
        raise EvopruneError(f"--limit must be at least 1, got {limit}")
    if shots is not None and shots < 0:
        raise EvopruneError(f"--shots must be at least 0, got {shots}")
    checked = _check_tasks(tasks, limit, shots, seed, task_data)
    store = Store.open_existing(store_path) if store_path is not None else None
    try:
        target = open_target(model, config, store, data, progress, dtype)
        results = []
        with target.applied():
            for ref in checked:
                if isinstance(ref, str):
                    progress("phase", name=f"{ref} (lm-evaluation-harness)")
                    results.append(
                        harness.harness_evaluate(
                            target.model, target.tokenizer, ref, limit=limit, shots=shots, seed=seed
                        )
                    )
                    continue

                def tick(done: int, total: int, name: str = ref.name) -> None:
                    # In steps of 5%: a log (CI, a file) got one line per question.
                    if done == total or done % max(1, total // 20) == 0:
                        progress("phase", name=f"{name}: {done}/{total} questions")

                results.append(
                    evaluate_model(
                        target.model, target.tokenizer, ref, limit=limit, shots=shots, seed=seed, progress=tick
                    )
                )
        report = EvaluateReport(target, config, results)
        if store is not None:
            for r in results:
                report.stored.append(
                    store.add_task_result(
                        model=absolute_if_local(model),
                        source=target.source,
                        task=r.task,
                        shots=r.shots,
                        n=r.n,
                        metrics=r.metrics,
                        details={
                            "config": config,
                            "limit": r.limit,
                            "seed": r.seed,
                            "data": r.data,
                            "scorer": r.scorer,
                            "stderr": {k: v for k, v in r.stderr.items() if not math.isnan(v)},
                            "duration_s": r.duration_s,
                        },
                        run_id=target.run_id,
                        eval_id=target.eval_id,
                        config_key=target.config_key,
                    )
                )
    finally:
        if store is not None:
            store.close()
    return report


def check_report_out(out: Path) -> None:
    """Refuse, before any scoring, a ``--out`` that ``write_report`` could not write: EvopruneError."""
    if out.is_dir():
        raise EvopruneError(
            f"--out '{out}' is a directory: give a file name for the results, e.g. '{out / 'tasks.json'}'"
        )
    if out.exists() and not out.is_file():  # a device, a pipe: the write would replace it with a file
        raise EvopruneError(f"--out '{out}' is not a regular file: give a file name for the results")
    require_parent_dir(out, "--out")


def write_report(report: EvaluateReport, out: Path) -> None:
    """The report with per-question log-likelihoods, written atomically (nothing is left behind
    when it cannot be); EvopruneError when the file cannot be written."""
    check_report_out(out)
    out = out.resolve() if out.is_symlink() else out  # write through a link, never over it
    tmp = out.with_name(out.name + f".tmp{int(time.time() * 1000)}")
    try:
        tmp.write_text(json.dumps(report.to_dict(items=True), indent=2), encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EvopruneError(f"could not write --out '{out}': {exc.strerror}; the results are printed above") from None
