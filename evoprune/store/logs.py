"""The store's accounts of what happened around the pairs (``StoreLogs``, a part of ``Store``): active-learning
rounds, worker failures, task accuracies (``evoprune evaluate``) and recovery trainings (``evoprune recover``).
"""

from __future__ import annotations

import json

from evoprune.store.records import Failure, RecoveryRecord, TaskRecord
from evoprune.store.schema import utc_now


class StoreLogs:
    """Rounds, failures, task results and recoveries: the methods ``Store`` adds to its pairs."""

    # -- rounds -----------------------------------------------------------------------------
    def record_round(
        self, run_id: int, round_: int, *, n_train: int, fit_s: float, search_s: float, bounds: dict | None = None
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO rounds (run_id, round, n_train, fit_s, search_s, bounds, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (run_id, round_, n_train, fit_s, search_s, json.dumps(bounds) if bounds else None, utc_now()),
            )

    def close_round(
        self,
        run_id: int,
        round_: int,
        *,
        eval_s: float,
        hypervolume: float | None,
        tau: float | None = None,
        rmse: float | None = None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE rounds SET eval_s=?, hypervolume=?, tau=?, rmse=? WHERE run_id=? AND round=?",
                (eval_s, hypervolume, tau, rmse, run_id, round_),
            )

    def rounds(self, run_id: int) -> list[dict]:
        rows = [dict(r) for r in self._conn.execute("SELECT * FROM rounds WHERE run_id=? ORDER BY round", (run_id,))]
        for r in rows:
            r["bounds"] = json.loads(r["bounds"]) if r.get("bounds") else None
        return rows

    # -- worker failures --------------------------------------------------------------------
    def record_failure(
        self, run_id: int, eval_id: int | None, *, attempt: int, worker: str, error: str, retried: bool
    ) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO failures (run_id, eval_id, attempt, worker, error, retried, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (run_id, eval_id, int(attempt), worker, error, int(retried), utc_now()),
            )
            return int(cur.lastrowid)

    def failures(self, run_id: int) -> list[Failure]:
        rows = self._conn.execute("SELECT * FROM failures WHERE run_id=? ORDER BY id", (run_id,))
        return [Failure(**{**dict(r), "retried": bool(r["retried"])}) for r in rows]

    # -- task accuracy ----------------------------------------------------------------------
    def add_task_result(
        self,
        *,
        model: str,
        source: str,
        task: str,
        shots: int,
        n: int,
        metrics: dict,
        details: dict | None = None,
        run_id: int | None = None,
        eval_id: int | None = None,
        config_key: str | None = None,
    ) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO task_results (run_id, eval_id, config_key, model, source, task, shots, n, metrics, "
                "details, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    eval_id,
                    config_key,
                    model,
                    source,
                    task,
                    int(shots),
                    int(n),
                    json.dumps(metrics),
                    json.dumps(details or {}),
                    utc_now(),
                ),
            )
            return int(cur.lastrowid)

    def task_results(self, *, run_id: int | None = None, eval_id: int | None = None) -> list[TaskRecord]:
        """Stored task accuracies, oldest first; all of them, or those of a run or an evaluation."""
        rows = self._select("task_results", ("metrics", "details"), run_id=run_id, eval_id=eval_id)
        return [TaskRecord(**d) for d in rows]

    # -- recovery training ------------------------------------------------------------------
    def add_recovery(
        self,
        *,
        run_id: int,
        eval_id: int,
        out: str,
        method: str,
        steps: int,
        data: str,
        before: dict,
        after: dict,
        details: dict | None = None,
    ) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO recoveries (run_id, eval_id, out, method, steps, data, before, after, details, "
                "created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, eval_id, out, method, int(steps), data, json.dumps(before), json.dumps(after),
                 json.dumps(details or {}), utc_now()),
            )  # fmt: skip
            return int(cur.lastrowid)

    def recoveries(self, *, run_id: int | None = None, eval_id: int | None = None) -> list[RecoveryRecord]:
        """Stored recovery trainings, oldest first; all, or those of a run or an evaluation."""
        rows = self._select("recoveries", ("before", "after", "details"), run_id=run_id, eval_id=eval_id)
        return [RecoveryRecord(**d) for d in rows]
