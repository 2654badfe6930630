"""The SQLite pair store: committed writes, pending rows, reopening, and bad files."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from evoprune.errors import EvopruneError
from evoprune.store import Store

RUN_FIELDS = dict(
    model="tiny",
    model_fingerprint="abc",
    data="builtin",
    data_fingerprint="def",
    dense_params=1000,
    space={"arch": {"num_layers": 2}},
    settings={"seed": 0},
    versions={"torch": "x"},
)


def test_run_is_created_once_and_found_again(tmp_path):
    with Store(tmp_path / "s.db") as st:
        run, created = st.get_or_create_run("k1", **RUN_FIELDS)
        again, created_again = st.get_or_create_run("k1", **RUN_FIELDS)
        assert created and not created_again and again.id == run.id
        assert again.settings == {"seed": 0} and again.space == {"arch": {"num_layers": 2}}
        other, _ = st.get_or_create_run("k2", **RUN_FIELDS)
        assert st.get_run().id == other.id and st.get_run(run.id).run_key == "k1"


def test_evaluation_lifecycle_is_visible_to_a_second_connection(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as st:
        run, _ = st.get_or_create_run("k", **RUN_FIELDS)
        eid = st.add_pending(run.id, "cfg1", [0, 1, 2, 3], "design", 0, 900, 0.9, {"log_ppl": 1.0, "std": 0.1})
        # A reader that never saw this process's connection sees the committed pending row.
        raw = sqlite3.connect(path)
        assert raw.execute("SELECT status FROM evaluations WHERE id=?", (eid,)).fetchone() == ("pending",)
        st.finish(eid, ok=True, metrics={"ppl": 12.5}, error=None, duration_s=0.25)
        assert raw.execute("SELECT status, metrics FROM evaluations WHERE id=?", (eid,)).fetchone() == (
            "ok",
            '{"ppl": 12.5}',
        )
        raw.close()
    with Store(path) as st:
        (ev,) = st.evaluations(run.id)
        assert ev.levels == [0, 1, 2, 3] and ev.metrics == {"ppl": 12.5} and ev.predicted["std"] == 0.1
        assert ev.status == "ok" and ev.finished_at is not None and ev.duration_s == 0.25


def test_failed_evaluations_keep_their_error(tmp_path):
    with Store(tmp_path / "s.db") as st:
        run, _ = st.get_or_create_run("k", **RUN_FIELDS)
        eid = st.add_pending(run.id, "cfg", [1, 1], "acquired", 2, 500, 0.5)
        st.finish(eid, ok=False, metrics={}, error="non-finite perplexity", duration_s=1.0)
        assert st.evaluations(run.id, status="ok") == []
        (failed,) = st.evaluations(run.id, status="failed")
        assert failed.error == "non-finite perplexity" and failed.round == 2


def test_a_configuration_is_stored_once_per_run(tmp_path):
    with Store(tmp_path / "s.db") as st:
        run, _ = st.get_or_create_run("k", **RUN_FIELDS)
        st.add_pending(run.id, "cfg", [0, 0], "design", 0, 1000, 1.0)
        with pytest.raises(sqlite3.IntegrityError):
            st.add_pending(run.id, "cfg", [0, 0], "design", 0, 1000, 1.0)
        assert len(st.evaluations(run.id)) == 1


def test_rounds_are_recorded(tmp_path):
    with Store(tmp_path / "s.db") as st:
        run, _ = st.get_or_create_run("k", **RUN_FIELDS)
        st.record_round(run.id, 1, n_train=8, fit_s=0.5, search_s=1.5)
        st.close_round(run.id, 1, eval_s=10.0, hypervolume=0.3)
        (r,) = st.rounds(run.id)
        assert (r["n_train"], r["eval_s"], r["hypervolume"]) == (8, 10.0, 0.3)


def test_opening_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(EvopruneError, match="does not exist"):
        Store.open_existing(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EvopruneError, match="not an evoprune store"):
        Store.open_existing(junk)
    with Store(tmp_path / "empty.db") as st, pytest.raises(EvopruneError, match="no runs yet"):
        st.get_run()


def _open_handles(path) -> list[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc to list open files")
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


@pytest.mark.parametrize("readonly", [False, True])
def test_a_store_that_fails_to_open_does_not_keep_the_file_open(tmp_path, readonly):
    # A held handle kept a read-only bind mount busy after the error was reported.
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    conn.close()
    with pytest.raises(EvopruneError, match="schema version 999") as info:
        Store(path, readonly=readonly)
    assert info.value is not None
    assert _open_handles(path) == []


def test_reading_a_store_leaves_no_wal_files_beside_it(tmp_path):
    """SQLite removes a store's -wal and -shm files when its last connection closes, unless that
    connection was opened read-only: every ``pareto`` left them beside the store."""
    path = tmp_path / "s.db"
    with Store(path) as st:
        st.get_or_create_run("k1", **RUN_FIELDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    with Store.open_existing(path, readonly=True) as st:
        assert st.get_run().run_key == "k1"
        with pytest.raises(EvopruneError, match="opened read-only"):
            st.get_or_create_run("k2", **RUN_FIELDS)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            st._conn.execute("DELETE FROM runs")  # not even a raw statement writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_a_read_only_open_of_a_file_that_is_not_a_store_keeps_no_handle(tmp_path, monkeypatch):
    """On read-only media (no write access), opening a non-SQLite file left its connection open."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as on read-only media
    with pytest.raises(EvopruneError, match="not an evoprune store"):
        Store(junk, readonly=True)
    assert _open_handles(junk) == []


def test_an_interrupted_search_leaves_no_lock_file_beside_a_store_it_never_made(tmp_path):
    """Ctrl-C while the model loads (the lock is taken before) left runs.db.lock with no store."""
    from evoprune.store.lock import lock_path, search_lock

    store = tmp_path / "runs.db"
    with pytest.raises(KeyboardInterrupt), search_lock(store):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with Store(store) as st:  # once the store exists, its lock file stays, as SQLite's files do
        st.runs()
    with pytest.raises(KeyboardInterrupt), search_lock(store):
        raise KeyboardInterrupt
    assert lock_path(store).exists()
