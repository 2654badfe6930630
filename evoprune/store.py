"""The pair store: every real evaluation, committed the moment it finishes, in SQLite.

Tables:

- ``runs``: one search, with the model, data, resolved settings, search space and versions.
- ``evaluations``: one row per configuration a run decided to evaluate. It is written as
  ``pending`` before the model runs and updated to ``ok`` or ``failed`` with its metrics, so
  a killed search resumes exactly where it stopped: pending rows are evaluated first, finished
  rows are never evaluated again.
- ``screenings``: cheap low-fidelity measurements (perplexity on a few tokens) that multi-
  fidelity search takes before deciding which candidates get a full evaluation; one row per
  configuration and token count. Surrogates never train on them.
- ``fidelities``: the fidelity ladder: a configuration promoted to a higher rung (more tokens
  of the search windows) gets one row per rung, and a pick gets a row for its measurement on
  the validation split. Written ``pending`` first like evaluations, so a killed ladder resumes
  without losing or repeating a measurement. The first rung is the evaluation row itself.
- ``rounds``: per active-learning round, timings and the front's hypervolume.
- ``failures``: every worker that died or raised under a distributed executor, with the job it
  held (if any), which attempt that was and whether the job was retried elsewhere.
- ``task_results``: task accuracies (``evoprune evaluate``) of a configuration, linked to its
  run and evaluation when the store holds them.
- ``recoveries``: recovery trainings (``evoprune recover``) of an export of an evaluation, with
  its held-out figures before and after (stores written before it existed read as having none).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from evoprune.errors import EvopruneError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    model TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    data TEXT NOT NULL,
    data_fingerprint TEXT NOT NULL,
    dense_params INTEGER NOT NULL,
    space TEXT NOT NULL,
    settings TEXT NOT NULL,
    versions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    config_key TEXT NOT NULL,
    levels TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ok', 'failed')),
    origin TEXT NOT NULL,
    round INTEGER NOT NULL,
    params INTEGER NOT NULL,
    params_fraction REAL NOT NULL,
    metrics TEXT,
    cost TEXT,
    predicted TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    duration_s REAL,
    UNIQUE (run_id, config_key)
);
CREATE TABLE IF NOT EXISTS screenings (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    config_key TEXT NOT NULL,
    levels TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    metrics TEXT,
    error TEXT,
    duration_s REAL,
    created_at TEXT NOT NULL,
    UNIQUE (run_id, config_key, tokens)
);
CREATE TABLE IF NOT EXISTS fidelities (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    eval_id INTEGER NOT NULL REFERENCES evaluations(id),
    split TEXT NOT NULL CHECK (split IN ('search', 'validation')),
    tokens INTEGER NOT NULL,
    round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ok', 'failed')),
    metrics TEXT,
    error TEXT,
    duration_s REAL,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    UNIQUE (eval_id, split, tokens)
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    round INTEGER NOT NULL,
    n_train INTEGER NOT NULL,
    fit_s REAL NOT NULL,
    search_s REAL NOT NULL,
    eval_s REAL,
    hypervolume REAL,
    tau REAL,
    rmse REAL,
    bounds TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    eval_id INTEGER REFERENCES evaluations(id),
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    error TEXT NOT NULL,
    retried INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_results (
    id INTEGER PRIMARY KEY,
    run_id INTEGER REFERENCES runs(id),
    eval_id INTEGER REFERENCES evaluations(id),
    config_key TEXT,
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    task TEXT NOT NULL,
    shots INTEGER NOT NULL,
    n INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    details TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recoveries (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    eval_id INTEGER NOT NULL REFERENCES evaluations(id),
    out TEXT NOT NULL,
    method TEXT NOT NULL,
    steps INTEGER NOT NULL,
    data TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    details TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Run:
    id: int
    run_key: str
    model: str
    model_fingerprint: str
    data: str
    data_fingerprint: str
    dense_params: int
    space: dict
    settings: dict
    versions: dict
    created_at: str


@dataclass(frozen=True)
class Evaluation:
    id: int
    run_id: int
    config_key: str
    levels: list[int]
    status: str
    origin: str
    round: int
    params: int
    params_fraction: float
    metrics: dict
    cost: dict
    predicted: dict | None
    error: str | None
    created_at: str
    finished_at: str | None
    duration_s: float | None
    # The fidelity ladder (filled by Store.evaluations): rung token count -> metrics of the
    # higher rungs this configuration reached, and its validation measurement, if any.
    ladder: dict = field(default_factory=dict)
    validation: dict | None = None


@dataclass(frozen=True)
class Fidelity:
    """One measurement of an evaluated configuration above its first rung: a higher rung of the
    search windows (``split`` search) or the validation split."""

    id: int
    run_id: int
    eval_id: int
    split: str
    tokens: int
    round: int
    status: str
    metrics: dict
    error: str | None
    duration_s: float | None
    created_at: str
    finished_at: str | None


@dataclass(frozen=True)
class Failure:
    """A worker failure; ``eval_id`` is None (and ``attempt`` 0) when it failed while loading."""

    id: int
    run_id: int
    eval_id: int | None
    attempt: int
    worker: str
    error: str
    retried: bool
    created_at: str


@dataclass(frozen=True)
class Screening:
    """A low-fidelity measurement of one configuration on ``tokens`` tokens."""

    id: int
    run_id: int
    config_key: str
    levels: list[int]
    tokens: int
    round: int
    status: str
    metrics: dict
    error: str | None
    duration_s: float | None
    created_at: str


@dataclass(frozen=True)
class TaskRecord:
    """Task accuracy of one configuration: ``source`` is dense, masks or export; ``n`` questions."""

    id: int
    run_id: int | None
    eval_id: int | None
    config_key: str | None
    model: str
    source: str
    task: str
    shots: int
    n: int
    metrics: dict
    details: dict
    created_at: str


@dataclass(frozen=True)
class RecoveryRecord:
    """A recovery training of the export of evaluation ``eval_id``, written to ``out``:
    ``before``/``after`` are the held-out figures (``ppl``, ``ppl_se``, ``kl``, ``tokens``, ...) on
    the first tokens of ``data``; ``details`` the settings, the teacher and the split."""

    id: int
    run_id: int
    eval_id: int
    out: str
    method: str
    steps: int
    data: str
    before: dict
    after: dict
    details: dict
    created_at: str


class Store:
    """A SQLite pair store. Every write is its own committed transaction.

    ``readonly=True`` opens an existing store without writing anything (no journal mode, no
    schema), so stores on read-only media, or owned by someone else, can be read; any write
    through such a store raises ``EvopruneError``. A writable open of a store that cannot be
    written raises ``EvopruneError`` naming the reason.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        try:
            self._conn = self._connect_readonly() if readonly else self._connect_writable()
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from None
        version = int(row[0]) if row else None
        if version != SCHEMA_VERSION:
            raise EvopruneError(f"store '{path}' has schema version {version}, this evoprune reads {SCHEMA_VERSION}")

    def _connect_writable(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # A WAL store needs its -shm file, which SQLite cannot create on read-only media; nobody
            # can write there either, so reading the file as immutable sees the same data.
            conn.close()
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def _open_error(self, exc: sqlite3.DatabaseError) -> EvopruneError:
        """One accurate line for a store that cannot be opened: not SQLite, not evoprune, or not writable."""
        text = str(exc)
        if "file is not a database" in text or "file is encrypted" in text:
            return EvopruneError(f"'{self.path}' is not an evoprune store (not a SQLite database)")
        if "no such table" in text:
            return EvopruneError(f"'{self.path}' is a SQLite database but not an evoprune store (no meta table)")
        if not self.path.parent.is_dir():
            return EvopruneError(
                f"store '{self.path}': directory '{self.path.parent}' does not exist: create it or pass another --store"
            )
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return EvopruneError(
                f"store '{self.path}' cannot be written ({text}): the file or its directory is read-only; "
                "copy the store to a writable location or pass another --store"
            )
        return EvopruneError(f"could not open store '{self.path}': {text}")

    @classmethod
    def open_existing(cls, path: str | Path, *, readonly: bool = False) -> Store:
        """Open a store that must already exist; ``readonly=True`` for commands that only read it."""
        p = Path(path)
        if not p.is_file():
            raise EvopruneError(f"store '{path}' does not exist: run 'evoprune search --store {path} ...' first")
        return cls(p, readonly=readonly)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise EvopruneError(f"store '{self.path}' was opened read-only: this command cannot write to it")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                raise
            raise self._open_error(exc) from None
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------
    def get_or_create_run(self, run_key: str, **fields) -> tuple[Run, bool]:
        existing = self.find_run(run_key)
        if existing is not None:
            return existing, False
        # Another process may insert the same run between the look-up and here: let the key decide.
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO runs (run_key, created_at, model, model_fingerprint, data, data_fingerprint, "
                "dense_params, space, settings, versions) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_key,
                    _now(),
                    fields["model"],
                    fields["model_fingerprint"],
                    fields["data"],
                    fields["data_fingerprint"],
                    int(fields["dense_params"]),
                    json.dumps(fields["space"], sort_keys=True),
                    json.dumps(fields["settings"], sort_keys=True),
                    json.dumps(fields["versions"], sort_keys=True),
                ),
            )
        return self.find_run(run_key), cur.rowcount == 1

    def find_run(self, run_key: str) -> Run | None:
        row = self._conn.execute("SELECT * FROM runs WHERE run_key=?", (run_key,)).fetchone()
        return self._run(row) if row else None

    def runs(self) -> list[Run]:
        return [self._run(r) for r in self._conn.execute("SELECT * FROM runs ORDER BY id")]

    def get_run(self, run_id: int | None = None) -> Run:
        """A run by id, or the latest one."""
        if run_id is None:
            row = self._conn.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            if row is None:
                raise EvopruneError(f"store '{self.path}' has no runs yet: run 'evoprune search' first")
        else:
            row = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise EvopruneError(f"store '{self.path}' has no run {run_id}: see 'evoprune runs --store {self.path}'")
        return self._run(row)

    @staticmethod
    def _run(row: sqlite3.Row) -> Run:
        d = dict(row)
        for k in ("space", "settings", "versions"):
            d[k] = json.loads(d[k])
        return Run(**d)

    # -- evaluations ------------------------------------------------------------------------
    def add_pending(
        self,
        run_id: int,
        config_key: str,
        levels: list[int],
        origin: str,
        round_: int,
        params: int,
        params_fraction: float,
        predicted: dict | None = None,
        cost: dict | None = None,
    ) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO evaluations (run_id, config_key, levels, status, origin, round, params, "
                "params_fraction, predicted, cost, created_at) VALUES (?,?,?,'pending',?,?,?,?,?,?,?)",
                (
                    run_id,
                    config_key,
                    json.dumps([int(v) for v in levels]),
                    origin,
                    round_,
                    int(params),
                    float(params_fraction),
                    json.dumps(predicted) if predicted is not None else None,
                    json.dumps(cost or {}),
                    _now(),
                ),
            )
            return int(cur.lastrowid)

    def finish(self, eval_id: int, *, ok: bool, metrics: dict, error: str | None, duration_s: float) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE evaluations SET status=?, metrics=?, error=?, finished_at=?, duration_s=? WHERE id=?",
                ("ok" if ok else "failed", json.dumps(metrics), error, _now(), float(duration_s), eval_id),
            )

    def retry_failed(self, run_id: int) -> int:
        """Turn run ``run_id``'s failed evaluations back into pending rows; return how many.

        Their configurations, origins and rounds stay; the error and metrics go.
        """
        with self._tx() as c:
            cur = c.execute(
                "UPDATE evaluations SET status='pending', metrics=NULL, error=NULL, finished_at=NULL, duration_s=NULL "
                "WHERE run_id=? AND status='failed'",
                (run_id,),
            )
            return cur.rowcount

    def evaluations(self, run_id: int, status: str | None = None) -> list[Evaluation]:
        """A run's evaluations in order, each with the ladder rungs and validation it reached."""
        sql, args = "SELECT * FROM evaluations WHERE run_id=?", [run_id]
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        evals = [self._evaluation(r) for r in self._conn.execute(sql + " ORDER BY id", args)]
        ladder: dict[int, dict] = {}
        validation: dict[int, dict] = {}
        for f in self.fidelities(run_id, status="ok"):
            if f.split == "search":
                ladder.setdefault(f.eval_id, {})[f.tokens] = f.metrics
            else:
                validation[f.eval_id] = {"tokens": f.tokens, "metrics": f.metrics}
        if not ladder and not validation:
            return evals
        return [replace(e, ladder=ladder.get(e.id, {}), validation=validation.get(e.id)) for e in evals]

    def evaluation(self, eval_id: int) -> Evaluation:
        row = self._conn.execute("SELECT * FROM evaluations WHERE id=?", (eval_id,)).fetchone()
        if row is None:
            raise EvopruneError(f"store '{self.path}' has no evaluation {eval_id}")
        return self._evaluation(row)

    @staticmethod
    def _evaluation(row: sqlite3.Row) -> Evaluation:
        d = dict(row)
        d["levels"] = json.loads(d["levels"])
        d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
        d["predicted"] = json.loads(d["predicted"]) if d["predicted"] else None
        d["cost"] = json.loads(d["cost"]) if d.get("cost") else {}
        return Evaluation(**d)

    # -- the fidelity ladder ----------------------------------------------------------------
    def add_fidelity(self, run_id: int, eval_id: int, split: str, tokens: int, round_: int) -> int | None:
        """Write a pending measurement of evaluation ``eval_id``; None when it already exists."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO fidelities (run_id, eval_id, split, tokens, round, status, created_at) "
                "VALUES (?,?,?,?,?,'pending',?)",
                (run_id, eval_id, split, int(tokens), round_, _now()),
            )
            return int(cur.lastrowid) if cur.rowcount else None

    def finish_fidelity(
        self, fidelity_id: int, *, ok: bool, metrics: dict, error: str | None, duration_s: float
    ) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE fidelities SET status=?, metrics=?, error=?, finished_at=?, duration_s=? WHERE id=?",
                ("ok" if ok else "failed", json.dumps(metrics), error, _now(), float(duration_s), fidelity_id),
            )

    def fidelities(self, run_id: int, status: str | None = None) -> list[Fidelity]:
        """A run's ladder and validation rows; none in a store written before the ladder existed
        and opened read-only (its schema is not upgraded then)."""
        return [Fidelity(**d) for d in self._select("fidelities", ("metrics",), run_id=run_id, status=status)]

    def _select(self, table: str, json_columns: tuple[str, ...], **where) -> list[dict]:
        """Rows of ``table`` whose columns equal the non-None ``where`` values, oldest first, with
        ``json_columns`` decoded (empty: ``{}``); none when a store written before the table
        existed is opened read-only (its schema is not upgraded then)."""
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            return []
        conditions = {k: v for k, v in where.items() if v is not None}
        sql = f"SELECT * FROM {table}" + "".join(f" {'AND' if i else 'WHERE'} {k}=?" for i, k in enumerate(conditions))
        rows = []
        for r in self._conn.execute(sql + " ORDER BY id", list(conditions.values())):
            d = dict(r)
            d.update({k: json.loads(d[k]) if d[k] else {} for k in json_columns})
            rows.append(d)
        return rows

    # -- rounds -----------------------------------------------------------------------------
    def add_screening(
        self,
        run_id: int,
        config_key: str,
        levels: list[int],
        tokens: int,
        round_: int,
        *,
        ok: bool,
        metrics: dict,
        error: str | None,
        duration_s: float,
    ) -> Screening:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO screenings (run_id, config_key, levels, tokens, round, status, metrics, error, "
                "duration_s, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, config_key, json.dumps(levels), tokens, round_, "ok" if ok else "failed",
                 json.dumps(metrics), error, duration_s, _now()),
            )  # fmt: skip
        return self._screening(self._conn.execute("SELECT * FROM screenings WHERE id=?", (cur.lastrowid,)).fetchone())

    def screenings(self, run_id: int, tokens: int | None = None) -> list[Screening]:
        return [Screening(**d) for d in self._select("screenings", ("levels", "metrics"), run_id=run_id, tokens=tokens)]

    @staticmethod
    def _screening(row: sqlite3.Row) -> Screening:
        d = dict(row)
        return Screening(**{**d, "levels": json.loads(d["levels"]), "metrics": json.loads(d["metrics"] or "{}")})

    def record_round(
        self, run_id: int, round_: int, *, n_train: int, fit_s: float, search_s: float, bounds: dict | None = None
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO rounds (run_id, round, n_train, fit_s, search_s, bounds, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (run_id, round_, n_train, fit_s, search_s, json.dumps(bounds) if bounds else None, _now()),
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
                (run_id, eval_id, int(attempt), worker, error, int(retried), _now()),
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
                    _now(),
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
                 json.dumps(details or {}), _now()),
            )  # fmt: skip
            return int(cur.lastrowid)

    def recoveries(self, *, run_id: int | None = None, eval_id: int | None = None) -> list[RecoveryRecord]:
        """Stored recovery trainings, oldest first; all, or those of a run or an evaluation."""
        rows = self._select("recoveries", ("before", "after", "details"), run_id=run_id, eval_id=eval_id)
        return [RecoveryRecord(**d) for d in rows]
