"""The fidelity ladder of a run: promising configurations measured again on more tokens, the picks
on the validation split (``FidelityLadder``, a part of ``SearchContext``).
"""

from __future__ import annotations

import math

import numpy as np

from evoprune.backend.pruner import Measurement
from evoprune.execution.executors import Job, WorkerFailure
from evoprune.objectives.spec import quality_se, quality_value
from evoprune.store import Evaluation


class FidelityLadder:
    """The ladder's methods of ``SearchContext``: they use its store, run, executor and feasibility."""

    def ladder_rungs(self) -> tuple[int, ...]:
        """Token counts of the rungs above the first; none when the first quality objective is
        an accuracy (task questions are not measured per rung)."""
        if self.objectives.quality[0] not in ("ppl", "kl"):
            return ()
        return self.backend.settings.ladder_tokens

    def evaluate_pending_fidelities(self) -> float:
        """Measure every pending ladder or validation row of the run; commit each as it finishes."""
        pending = self.store.fidelities(self.run.id, status="pending")
        if not pending:
            return 0.0
        rows = {f.id: f for f in pending}
        # A row may measure a shared evaluation of another run (see ``promote``).
        levels = {f.eval_id: tuple(self.store.evaluation(f.eval_id).levels) for f in pending}
        jobs = [Job(f.id, levels[f.eval_id], f.tokens if f.split == "search" else None, f.split) for f in pending]
        self.progress("phase", name=_phase_name(pending))
        spent = 0.0

        def commit(job: Job, m: Measurement) -> None:
            nonlocal spent
            self.store.finish_fidelity(job.eval_id, ok=m.ok, metrics=m.metrics, error=m.error, duration_s=m.duration_s)
            spent += m.duration_s
            f = rows[job.eval_id]
            self.progress("fidelity_done", eval_id=f.eval_id, split=f.split, tokens=f.tokens, ok=m.ok,
                          metrics=m.metrics, error=m.error)  # fmt: skip

        def note_failure(job: Job | None, f: WorkerFailure) -> None:
            eval_id = rows[job.eval_id].eval_id if job is not None else None
            self.store.record_failure(
                self.run.id, eval_id, attempt=f.attempt, worker=f.worker, error=f.error, retried=f.retried
            )

        self.executor.evaluate(jobs, commit, note_failure)
        self.timings["ladder_s"] += spent
        return spent

    def ladder_pool(self, evals: list[Evaluation]) -> list[Evaluation]:
        """The configurations competing for the ladder: under a budget every feasible one (the
        noise rule of ``promote`` keeps only the contenders); without one, the first-rung front."""
        from evoprune.objectives.pareto import front_of

        ok = [e for e in evals if e.status == "ok"]
        if not ok:
            return []
        if not self.constraint_names:
            return front_of(ok, self.objectives.names, by_fidelity=False)
        feasible = self.feasible(np.array([e.levels for e in ok], dtype=int))
        return [e for e, f in zip(ok, feasible, strict=True) if f]

    def promote(self, round_: int, limit: int | None = None) -> int:
        """Climb the ladder: per rung, measure on the next rung the configurations of the pool
        whose figure is within noise (two standard errors of the difference) of the best one's,
        best first, at most ``limit`` per rung (default: half the batch, at least one). Without a
        budget front members climb, since each is the best at its cost: ``limit`` of them spread
        along the front (``_spread``), then its knee, ``export``'s default pick (``_climb_knee``). A
        search climbs once, when its method is done (``run_strategy``): higher rungs
        decide the choice, not the search's direction (surrogates learn from first rungs), and a
        contender found late would otherwise be measured on fewer tokens than an early one."""
        rungs = self.ladder_rungs()
        if not rungs:
            return 0
        # The pool is what the run's picks choose from: with warm start, the pairs it shares with
        # other runs of the problem, so the configuration `plan` answers with is the one measured.
        metric = self.objectives.quality[0]
        limit = max(1, self.settings.batch // 2) if limit is None else limit
        added = 0
        for i, tokens in enumerate(rungs):
            pool = self.ladder_pool(self.shared_evaluations())
            measured = []
            for e in pool:
                m = e.metrics if i == 0 else e.ladder.get(rungs[i - 1])
                if m and metric in m:
                    measured.append((quality_value(metric, m), quality_se(metric, m), e))
            measured.sort(key=lambda t: (t[0], t[2].id))
            if not measured:
                break
            if self.constraint_names:
                best_v, best_se = measured[0][0], measured[0][1]
                measured = [t for t in measured if t[0] <= best_v + 2 * math.hypot(best_se, t[1])]
                chosen = [e for _, _, e in measured[:limit]]
            else:
                chosen = _spread([e for _, _, e in measured], limit)
            # Whether or not they climbed already: running a finished search again adds nothing.
            todo = [e for e in chosen if tokens not in e.ladder]
            for e in todo:
                self.store.add_fidelity(self.run.id, e.id, "search", tokens, round_)
            if todo:
                self.evaluate_pending_fidelities()
            added += len(todo)
        if not self.constraint_names:
            added += self._climb_knee(rungs, metric, round_)
        return added

    def _climb_knee(self, rungs: tuple[int, ...], metric: str, round_: int, tries: int = 3) -> int:
        """Measure on every rung the knee of the front as the ladder leaves it (``export``'s default
        pick), which moves when the climbers' figures move the front: a few times at most."""
        from evoprune.objectives.pareto import front_of

        added = 0
        for _ in range(tries):
            front = front_of([e for e in self.shared_evaluations() if e.status == "ok"], self.objectives.names)
            knee = _knee(front, metric)
            reached = {int(t) for t in knee.ladder} if knee is not None else set(rungs)
            todo = [t for t in rungs if t not in reached]
            if not todo:
                break
            for tokens in todo:
                self.store.add_fidelity(self.run.id, knee.id, "search", tokens, round_)
            self.evaluate_pending_fidelities()
            added += 1
        return added

    def validate_picks(self, round_: int) -> int:
        """Measure the picks on the validation split: under a budget the best configuration within
        it, otherwise front members spread along it (at most a batch) and its knee; among the pairs the run
        shares, as its picks are (``Store.shared_evaluations``)."""
        from evoprune.objectives.pareto import best_of, front_of

        tokens = self.backend.settings.validation_token_count
        ok = [e for e in self.shared_evaluations() if e.status == "ok"]
        if not tokens or not ok:
            return 0
        metric = self.objectives.quality[0]
        if self.constraint_names:
            X = np.array([e.levels for e in ok], dtype=int)
            best = best_of([e for e, f in zip(ok, self.feasible(X), strict=True) if f], metric)
            picks = [best] if best is not None else []
        else:
            front = front_of(ok, self.objectives.names)
            spread = np.unique(np.linspace(0, len(front) - 1, min(len(front), self.settings.batch)).round().astype(int))
            picks = [front[i] for i in spread]
            knee = _knee(front, metric)
            if knee is not None and knee not in picks:
                picks.append(knee)
        todo = [e for e in picks if e.validation is None]
        for e in todo:
            self.store.add_fidelity(self.run.id, e.id, "validation", tokens, round_)
        if todo:
            self.evaluate_pending_fidelities()
        return len(todo)


def _phase_name(pending: list) -> str:
    """``ladder: measuring 2 configuration(s) on 8192 tokens``, ``validating 5 configuration(s) on
    the validation split``, or both: what the pending rows measure."""
    rungs = [f for f in pending if f.split == "search"]
    parts = []
    if rungs:
        tokens = "/".join(str(t) for t in sorted({f.tokens for f in rungs}))
        parts.append(f"ladder: measuring {len(rungs)} configuration(s) on {tokens} tokens")
    if len(rungs) < len(pending):
        parts.append(f"validating {len(pending) - len(rungs)} configuration(s) on the validation split")
    return "; ".join(parts)


def _knee(front: list[Evaluation], metric: str) -> Evaluation | None:
    """The knee of ``front`` (``export --pick knee``, its default), unless it prunes nothing."""
    from evoprune.objectives.pareto import knee_of

    if not front:
        return None
    knee = front[knee_of(front, metric)]
    return knee if knee.params_fraction < 1 else None


def _spread(front: list[Evaluation], limit: int) -> list[Evaluation]:
    """At most ``limit`` members of ``front`` spread evenly along it by kept parameters, both ends
    included, the dense configuration left out (nothing pruned is no choice). Taking the best
    figures instead gave every promotion to the members nearest the dense model."""
    members = sorted((e for e in front if e.params_fraction < 1), key=lambda e: (-e.params_fraction, e.id))
    if not members or limit < 1:
        return []
    picks = np.unique(np.linspace(0, len(members) - 1, min(len(members), limit)).round().astype(int))
    return [members[i] for i in picks]
