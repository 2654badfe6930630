"""``Store``: the SQLite pair store: runs, evaluations, screenings and the fidelity ladder, one committed
transaction per write (the tables are described in ``evoprune.store``)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from evoprune.errors import EvopruneError
from evoprune.store.connection import connect_readonly, open_error
from evoprune.store.logs import StoreLogs
from evoprune.store.records import Evaluation, Fidelity, Run, Screening
from evoprune.store.schema import SCHEMA, SCHEMA_VERSION, utc_now


class Store(StoreLogs):
    """A SQLite pair store. Every write is its own committed transaction.

    ``Store(path)`` creates the file and its tables when ``path`` does not exist (a search's
    first write); ``Store.open_existing(path)`` is for a store that must already exist, and
    raises ``EvopruneError`` for a missing path or a directory.

    ``readonly=True`` opens an existing store without writing anything (no journal mode, no
    schema), so stores on read-only media, or owned by someone else, can be read; any write
    through such a store raises ``EvopruneError``. (Where the file can be written, SQLite still
    folds its write-ahead log into it when the last connection closes, as it always does.) A
    writable open of a store that cannot be written raises ``EvopruneError`` naming the reason.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        try:
            self._open()
        except BaseException:
            # A store that fails to open must not keep the file open (a held handle blocks
            # unmounting the folder and keeps a WAL around).
            if self._conn is not None:
                self._conn.close()
            raise

    def _open(self) -> None:
        try:
            self._conn = connect_readonly(self.path) if self.readonly else self._connect_writable()
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise open_error(self.path, exc) from None
        version = int(row[0]) if row else None
        if version != SCHEMA_VERSION:
            raise EvopruneError(
                f"store '{self.path}' has schema version {version}, this evoprune reads {SCHEMA_VERSION}"
            )

    def _connect_writable(self) -> sqlite3.Connection:
        conn = self._conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._tx():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return conn

    @staticmethod
    def refuse_directory(path: str | Path) -> None:
        """Raise EvopruneError when the store path ``path`` is a directory (before any work is done)."""
        p = Path(path).expanduser()
        if p.is_dir():
            raise EvopruneError(f"store '{path}' is a directory: pass the store's file, e.g. '{p / 'runs.db'}'")

    @staticmethod
    def refuse_unwritable(path: str | Path) -> None:
        """Raise EvopruneError when a search could not write the store ``path``: the file, or the
        folder where SQLite keeps its journal beside it, is read-only (checked before the model loads)."""
        p = Path(path).expanduser()
        folder = p.parent if str(p.parent) else Path(".")
        if p.exists() and not os.access(p, os.W_OK):
            raise EvopruneError(
                f"store '{path}' is read-only: copy the store to a writable location or pass another --store"
            )
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise EvopruneError(
                f"store '{path}': its folder '{folder}' is read-only (SQLite writes its journal there): "
                "copy the store to a writable location or pass another --store"
            )

    @classmethod
    def open_existing(cls, path: str | Path, *, readonly: bool = False) -> Store:
        """Open a store that must already exist; ``readonly=True`` for commands that only read it."""
        p = Path(path)
        cls.refuse_directory(p)
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
            raise open_error(self.path, exc) from None
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
                    utc_now(),
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
                    utc_now(),
                ),
            )
            return int(cur.lastrowid)

    def finish(self, eval_id: int, *, ok: bool, metrics: dict, error: str | None, duration_s: float) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE evaluations SET status=?, metrics=?, error=?, finished_at=?, duration_s=? WHERE id=?",
                ("ok" if ok else "failed", json.dumps(metrics), error, utc_now(), float(duration_s), eval_id),
            )

    def retry_failed(self, run_id: int, also: Collection[int] = ()) -> int:
        """Turn run ``run_id``'s failed evaluations, and its evaluations whose ids are in ``also``
        (e.g. ok rows that lack a metric), back into pending rows; return how many.

        Their configurations, origins and rounds stay; the error and metrics go.
        """
        reset = "SET status='pending', metrics=NULL, error=NULL, finished_at=NULL, duration_s=NULL"
        with self._tx() as c:
            count = c.execute(f"UPDATE evaluations {reset} WHERE run_id=? AND status='failed'", (run_id,)).rowcount
            for eval_id in also:
                count += c.execute(f"UPDATE evaluations {reset} WHERE run_id=? AND id=?", (run_id, eval_id)).rowcount
                # Its higher rungs lack the metric too: measured again when it climbs again.
                c.execute("DELETE FROM fidelities WHERE eval_id=? AND split='search'", (eval_id,))
            return count

    def evaluations(self, run_id: int, status: str | None = None) -> list[Evaluation]:
        """A run's evaluations in order, each with the ladder rungs and validation it reached."""
        sql, args = "SELECT * FROM evaluations WHERE run_id=?", [run_id]
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        evals = [self._evaluation(r) for r in self._conn.execute(sql + " ORDER BY id", args)]
        ladder: dict[int, dict] = {}
        validation: dict[int, dict] = {}
        for f in self._finished_fidelities_of(run_id):
            if f.split == "search":
                ladder.setdefault(f.eval_id, {})[f.tokens] = f.metrics
            else:
                validation[f.eval_id] = {"tokens": f.tokens, "metrics": f.metrics}
        if not ladder and not validation:
            return evals
        return [replace(e, ladder=ladder.get(e.id, {}), validation=validation.get(e.id)) for e in evals]

    def _finished_fidelities_of(self, run_id: int) -> list[Fidelity]:
        """The successful ladder and validation rows of ``run_id``'s evaluations, whichever run
        measured them: a warm-started run climbs the pairs it shares, so another run's rows can
        belong to this run's evaluations."""
        if not self._has_table("fidelities"):
            return []  # a store written before the ladder, opened read-only
        rows = self._conn.execute(
            "SELECT f.* FROM fidelities f JOIN evaluations e ON f.eval_id = e.id "
            "WHERE e.run_id=? AND f.status='ok' ORDER BY f.id",
            (run_id,),
        )
        return [Fidelity(**{**dict(r), "metrics": json.loads(r["metrics"]) if r["metrics"] else {}}) for r in rows]

    def shared_evaluations(self, run: Run) -> list[Evaluation]:
        """``run``'s evaluations, then, for a warm-started evoprune run, the finished ones of every
        other evoprune run of the same problem whose configuration it lacks.

        These are the pairs its search learns from, so its front and picks choose among them too:
        a run that ``plan --spend`` focused on a new budget knows what the first search measured.
        Runs of other methods (the baselines of ``compare``) and runs with warm start off see
        only their own.
        """
        s = run.settings
        if s.get("method", "evoprune") != "evoprune" or not s.get("warm_start", True):
            return self.evaluations(run.id)
        return self.problem_evaluations(run, methods={"evoprune"})

    def problem_evaluations(
        self, run: Run, methods: Collection[str] | None = None, status: str | None = None
    ) -> list[Evaluation]:
        """``run``'s evaluations, then the finished ones of every other run of the same problem (the
        same ``pair_key``: model, data and evaluation settings), one per configuration.

        ``methods`` keeps only other runs of those methods (``"evoprune"``, ``"uniform"``, ...);
        ``status`` keeps only evaluations with that status, before configurations are matched.
        A run without a ``pair_key`` (written before it existed) shares with none.
        """
        out = self.evaluations(run.id, status)
        key = run.settings.get("pair_key")
        if not key:
            return out
        seen = {e.config_key for e in out}
        for other in self.runs():
            o = other.settings
            if other.id == run.id or o.get("pair_key") != key:
                continue
            if methods is not None and o.get("method", "evoprune") not in methods:
                continue
            for e in self.evaluations(other.id, status):
                if e.status != "pending" and e.config_key not in seen:
                    seen.add(e.config_key)
                    out.append(e)
        return out

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
                (run_id, eval_id, split, int(tokens), round_, utc_now()),
            )
            return int(cur.lastrowid) if cur.rowcount else None

    def finish_fidelity(
        self, fidelity_id: int, *, ok: bool, metrics: dict, error: str | None, duration_s: float
    ) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE fidelities SET status=?, metrics=?, error=?, finished_at=?, duration_s=? WHERE id=?",
                ("ok" if ok else "failed", json.dumps(metrics), error, utc_now(), float(duration_s), fidelity_id),
            )

    def fidelities(self, run_id: int, status: str | None = None) -> list[Fidelity]:
        """A run's ladder and validation rows; none in a store written before the ladder existed
        and opened read-only (its schema is not upgraded then)."""
        return [Fidelity(**d) for d in self._select("fidelities", ("metrics",), run_id=run_id, status=status)]

    def _has_table(self, table: str) -> bool:
        """Whether ``table`` exists: a store written by an older version and opened read-only is
        not upgraded, so it can lack the newer tables."""
        found = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
        return found.fetchone() is not None

    def _select(self, table: str, json_columns: tuple[str, ...], **where) -> list[dict]:
        """Rows of ``table`` whose columns equal the non-None ``where`` values, oldest first, with
        ``json_columns`` decoded (empty: ``{}``); none when a store written before the table
        existed is opened read-only (its schema is not upgraded then)."""
        if not self._has_table(table):
            return []
        conditions = {k: v for k, v in where.items() if v is not None}
        sql = f"SELECT * FROM {table}" + "".join(f" {'AND' if i else 'WHERE'} {k}=?" for i, k in enumerate(conditions))
        rows = []
        for r in self._conn.execute(sql + " ORDER BY id", list(conditions.values())):
            d = dict(r)
            d.update({k: json.loads(d[k]) if d[k] else {} for k in json_columns})
            rows.append(d)
        return rows

    # -- screenings -------------------------------------------------------------------------
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
                 json.dumps(metrics), error, duration_s, utc_now()),
            )  # fmt: skip
        return self._screening(self._conn.execute("SELECT * FROM screenings WHERE id=?", (cur.lastrowid,)).fetchone())

    def screenings(self, run_id: int, tokens: int | None = None) -> list[Screening]:
        return [Screening(**d) for d in self._select("screenings", ("levels", "metrics"), run_id=run_id, tokens=tokens)]

    @staticmethod
    def _screening(row: sqlite3.Row) -> Screening:
        d = dict(row)
        return Screening(**{**d, "levels": json.loads(d["levels"]), "metrics": json.loads(d["metrics"] or "{}")})
