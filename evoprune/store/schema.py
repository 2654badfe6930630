"""The store's SQLite schema (its tables are described in ``evoprune.store``) and the timestamps rows carry."""

from __future__ import annotations

from datetime import datetime, timezone

SCHEMA_VERSION = 1

SCHEMA = """
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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
