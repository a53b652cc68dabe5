"""The SQLite store's write transactions and the ids the engine gives runs and events."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid

import pytest

import ironflow
from ironflow import step
from ironflow.runtime import ids
from ironflow.runtime.store import SQLiteStore


@pytest.fixture
def store(tmp_path):
    store = SQLiteStore(str(tmp_path / "store.db"), durability="normal")
    store.conn.execute("CREATE TABLE scratch (k TEXT PRIMARY KEY)")
    yield store
    store.close()


def keys(store):
    return [row[0] for row in store.query("SELECT k FROM scratch ORDER BY k")]


def test_an_error_in_the_body_rolls_back_and_the_store_stays_usable(store):
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as conn:
        conn.execute("INSERT INTO scratch VALUES ('lost')")
        raise RuntimeError("boom")
    assert not store.conn.in_transaction
    with store.transaction() as conn:
        conn.execute("INSERT INTO scratch VALUES ('kept')")
    assert keys(store) == ["kept"]


def test_a_commit_that_fails_is_rolled_back_and_raises(store):
    # A deferred foreign key is checked at COMMIT: the one way to make COMMIT itself fail.
    conn = store.conn
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (pid TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    failing = pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY")
    with failing, store.transaction() as conn:
        conn.execute("INSERT INTO scratch VALUES ('lost')")
        conn.execute("INSERT INTO child VALUES ('nobody')")
    assert not store.conn.in_transaction
    with store.transaction() as conn:
        conn.execute("INSERT INTO scratch VALUES ('kept')")
    assert keys(store) == ["kept"]
    assert store.query("SELECT COUNT(*) FROM child") == [(0,)]


def test_the_lock_is_released_whatever_happens(store):
    with pytest.raises(KeyError), store.transaction():
        raise KeyError("x")
    # The lock is re-entrant, so this thread would get in anyway: ask from another one.
    acquired = []

    def probe():
        got = store.lock.acquire(timeout=5)
        acquired.append(got)
        if got:
            store.lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(10)
    assert acquired == [True]


def synchronous(store):
    """The connection's ``PRAGMA synchronous``: 2 is FULL, 1 NORMAL."""
    return store.conn.execute("PRAGMA synchronous").fetchone()[0]


def lock_is_free(store):
    acquired = []

    def probe():
        got = store.lock.acquire(timeout=5)
        acquired.append(got)
        if got:
            store.lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(10)
    return acquired == [True]


def test_a_take_transaction_under_full_commits_unsynced_and_puts_full_back(tmp_path):
    store = SQLiteStore(str(tmp_path / "store.db"), durability="full")
    try:
        store.conn.execute("CREATE TABLE scratch (k TEXT PRIMARY KEY)")
        assert synchronous(store) == 2
        with store.take_transaction() as tx:
            tx.conn.execute("INSERT INTO scratch VALUES ('kept')")
            assert synchronous(store) == 1  # for this transaction only
        assert synchronous(store) == 2
        with pytest.raises(KeyError), store.take_transaction() as tx:
            tx.conn.execute("INSERT INTO scratch VALUES ('lost')")
            raise KeyError("x")
        assert synchronous(store) == 2
        assert not store.conn.in_transaction
        assert lock_is_free(store)
        with store.transaction():
            assert synchronous(store) == 2  # every other transaction syncs its commit
        assert keys(store) == ["kept"]
    finally:
        store.close()


def test_a_take_transaction_under_normal_is_an_ordinary_one(store):
    with store.take_transaction() as tx:
        tx.conn.execute("INSERT INTO scratch VALUES ('kept')")
        assert synchronous(store) == 1
    assert synchronous(store) == 1
    assert keys(store) == ["kept"]


@ironflow.function(id="three-synced")
def three_synced(ctx):
    total = 0
    for n in range(3):
        total += yield step.run(f"s{n}", int, n)
    return total


def test_a_run_under_full_syncs_once_per_commit_and_not_for_its_take(tmp_path):
    engine = ironflow.Engine(str(tmp_path / "full.db"), durability="full")
    try:
        engine.register(three_synced)
        statements = []
        engine.store.conn.set_trace_callback(statements.append)
        run_id = engine.start("three-synced")
        engine.run_until_idle()
        engine.store.conn.set_trace_callback(None)
        assert engine.get_run(run_id).output == 3
    finally:
        engine.close()
    # Each transaction's statements, and whether its COMMIT ran under FULL.
    transactions, current, full = [], [], True
    for sql in statements:
        if sql.startswith("PRAGMA synchronous"):
            full = sql.endswith("FULL")
        elif sql == "COMMIT":
            transactions.append((current, full))
            current = []
        else:
            current.append(sql)
    takes = [full for body, full in transactions if any("SET lease_owner" in s for s in body)]
    assert takes == [False], statements  # the first round's take: synced by the commit next
    others = [full for body, full in transactions if not any("SET lease_owner" in s for s in body)]
    assert len(others) >= 5 and all(others), statements  # the start, each round's commit


def test_ids_are_uuid7_hex():
    value = ids.new_id()
    assert len(value) == 32 and int(value, 16) >= 0
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_ids_are_ordered_by_their_millisecond_and_unique(monkeypatch):
    clock = iter(range(1_790_000_000_000_000_000, 1_790_000_100_000_000_000, 1_000_000))
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock))
    made = [ids.new_id() for _ in range(2_000)]  # one per millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert int(made[0][:12], 16) == 1_790_000_000_000  # the millisecond, in the first 48 bits


def test_ids_made_in_one_millisecond_differ(monkeypatch):
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_790_000_000_000_000_000)
    made = {ids.new_id() for _ in range(10_000)}
    assert len(made) == 10_000
    assert {value[:12] for value in made} == {f"{1_790_000_000_000:012x}"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_its_own_random_bits():
    ids.new_id()  # the parent holds unused random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, ids.new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[12:] != ids.new_id()[12:]
