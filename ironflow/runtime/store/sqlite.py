"""The SQLite store: the statements of its own verbs (reads, discovery, leases), named, then
the store; a write transaction's statements and verbs are in ``sqlite_tx``, a round's in
``sqlite_round``.

One connection per engine, serialized by the store's lock; a write transaction is
``BEGIN IMMEDIATE`` … ``COMMIT`` (the writer lock is taken up front, so a check and the write
it guards cannot interleave with another process). The statements' texts and their query plans
were tuned (see the comments): change one only with the benchmarks side by side. SQLite-isms
(``INSERT OR IGNORE``/``OR REPLACE``, ``RETURNING``, the ``pos`` rowid as commit order,
``?1`` parameters) stay in this module. Opening and migrating are in ``sqlite_schema``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import sqlite_utils

from ironflow.history.events import HistoryEvent
from ironflow.runtime.store.base import Store, StoreError
from ironflow.runtime.store.flow_sql import FlowReads, statements
from ironflow.runtime.store.sqlite_flow_events import SQLiteFlowStateStatements
from ironflow.runtime.store.sqlite_round import chunks, marks, read_histories
from ironflow.runtime.store.sqlite_schema import (
    DURABILITY,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    TERMINAL,
    SQLiteDatabase,
    connect_readonly,
    probe,
    reraise,
    unusable,
)
from ironflow.runtime.store.sqlite_tx import (
    FIND_RUN,
    UNCONSUMED_EVENTS,
    SQLiteTransaction,
    UnsyncedTransaction,
)
from ironflow.runtime.store.statements import StatementReads, storable

__all__ = [
    "DURABILITY",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "TERMINAL",
    "ReadOnlySQLiteStore",
    "SQLiteStore",
    "SQLiteTransaction",
    "probe",
    "unusable",
]

# --- statements -------------------------------------------------------------------------------
# ``{marks}`` / ``{fids}``: as many ``?`` as ids.

# A running run's row is not rewritten per step: its last history event says when it moved.
RUN_COLUMNS = (
    "id, function_id, status, output, error, created_us, MAX(updated_us, COALESCE((SELECT "
    "ts_us FROM history WHERE run_id = runs.id ORDER BY seq DESC LIMIT 1), 0)), ended_us, "
    "parent_run_id, {code_version}, {source_run_id}"
)
GET_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"
LIST_RUNS = f"SELECT {RUN_COLUMNS} FROM runs"
COUNT_RUNS = "SELECT COUNT(*) FROM runs"
RUN_START_ROW = "SELECT function_id, trigger, parent_run_id FROM runs WHERE id = ?"

# Discovery. CROSS JOIN keeps SQLite walking timers by due time; +function_id keeps it off
# the function index (which would visit every run of the function, parked or ended). A blocked
# run's timers wait for its resume, but for flow control's (its timeouts.finish deadline).
DUE_TIMERS = (
    "SELECT t.run_id, t.step_id, t.kind, t.attempt FROM timers t "
    "CROSS JOIN runs r ON r.id = t.run_id WHERE t.due_us <= ? "
    "AND (r.status != 'blocked' OR t.kind = 'flow') "
    "AND +r.function_id IN ({fids}) AND (r.lease_owner IS NULL "
    "OR r.lease_owner = ? OR r.lease_until_us < ?) "
    "ORDER BY t.due_us LIMIT {limit}"
)
_LEASE_FREE = "(lease_owner IS NULL OR lease_owner = ? OR lease_until_us < ?)"
# Runs to drive: flagged ready (mail, a resume), or pending or orphaned. The parts are not
# merged (UNION ALL: a run may come twice, the caller takes it once), so the LIMIT stops the
# scan: a look reads about one page, however many runs wait (UNION would collect them all).
READY_RUNS = (
    "SELECT id FROM runs WHERE ready = 1 "
    "AND status NOT IN ('blocked', 'completed', 'failed', 'cancelled') "
    f"AND +function_id IN ({{fids}}) AND {_LEASE_FREE} "
    "UNION ALL SELECT id FROM runs WHERE status IN ('pending', 'running') "
    "AND (lease_owner IS NULL OR lease_until_us < ?) "
    f"AND +function_id IN ({{fids}}) AND {_LEASE_FREE} LIMIT {{limit}}"
)
NEXT_TIMER_AFTER = "SELECT MIN(due_us) FROM timers WHERE due_us > ?"
NEXT_TIMER = "SELECT MIN(due_us) FROM timers"
# Heartbeats: a worker is live until its row's until_us (judged on the looker's clock).
HEARTBEAT = "INSERT OR REPLACE INTO workers (id, functions, seen_us, until_us) VALUES (?, ?, ?, ?)"
FORGET_WORKER = "DELETE FROM workers WHERE id = ?"
REGISTRATION = "SELECT triggers, settings, code_version FROM functions WHERE id = ?"
LIVE_FUNCTIONS = "SELECT functions FROM workers WHERE until_us >= ?"
RENEW_LEASES = "UPDATE runs SET lease_until_us = ? WHERE id IN ({marks}) AND lease_owner = ?"
RELEASE_ALL = "UPDATE runs SET lease_owner = NULL, lease_until_us = NULL WHERE lease_owner = ?"


class SQLiteStore(SQLiteDatabase, SQLiteFlowStateStatements, StatementReads, FlowReads, Store):
    """One SQLite database holding runs, history, timers, waits, events and leases."""

    # A read-only opening of a database from before v3 has no registry: read as absent.
    legacy = False
    unsourced = False  # a read-only opening from before v5: no runs.source_run_id

    def transaction(self) -> SQLiteTransaction:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the store's lock; rolled back on error."""
        return SQLiteTransaction(self)

    def take_transaction(self) -> SQLiteTransaction:
        """Under ``durability="full"``, a transaction whose commit is not synced by itself
        (``UnsyncedTransaction``): a round's take costs no fsync of its own."""
        if self.durability == "full":
            return UnsyncedTransaction(self)
        return SQLiteTransaction(self)

    def listen(
        self, callback: Callable[[frozenset[str] | None], None], retry: float
    ) -> Callable[[], None] | None:
        """SQLite has no notifications: other processes' news is seen within a poll interval."""
        return None

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        """Run one statement and fetch its rows (for tests and tools, not the engine)."""
        with self.lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                reraise(self.path, exc)
                raise

    def discover(
        self, now_us: int, functions: tuple[str, ...], owner: str, limit: int
    ) -> tuple[list[tuple[Any, ...]], list[str], int | None]:
        fids = marks(functions)
        due = self.query(
            DUE_TIMERS.format(fids=fids, limit=limit), (now_us, *functions, owner, now_us)
        )
        ready = self.query(
            READY_RUNS.format(fids=fids, limit=limit),
            (*functions, owner, now_us, now_us, *functions, owner, now_us),
        )
        nearest = self.query(NEXT_TIMER_AFTER, (now_us,))
        return due, [row[0] for row in ready], nearest[0][0] if nearest else None

    def find_run(self, run_id: str) -> tuple[Any, ...] | None:
        found = self.query(FIND_RUN, (run_id,))
        return found[0] if found else None

    def unconsumed_events(self, name: str, after_pos: int, run_id: str) -> list[tuple[Any, ...]]:
        return self.query(UNCONSUMED_EVENTS, (name, after_pos, run_id))

    def next_due(self) -> int | None:
        row = self.query(NEXT_TIMER)
        return row[0][0] if row else None

    def renew_leases(self, run_ids: list[str], owner: str, until_us: int) -> None:
        with self.transaction() as tx:
            for chunk in chunks(run_ids):
                tx.conn.execute(RENEW_LEASES.format(marks=marks(chunk)), (until_us, *chunk, owner))

    def release_all(self, owner: str) -> None:
        with self.transaction() as tx:
            tx.conn.execute(RELEASE_ALL, (owner,))

    def registration(self, function_id: str) -> tuple[str, str, str] | None:
        found = self.query(REGISTRATION, (function_id,))
        if not found:
            return None
        triggers, settings, version = found[0]
        return triggers, settings, version

    def heartbeat(self, owner: str, functions: str, now_us: int, until_us: int) -> None:
        with self.transaction() as tx:
            tx.conn.execute(HEARTBEAT, (owner, functions, now_us, until_us))

    def forget_worker(self, owner: str) -> None:
        with self.transaction() as tx:
            tx.conn.execute(FORGET_WORKER, (owner,))

    GET_RUN = GET_RUN
    LIST_RUNS = LIST_RUNS
    COUNT_RUNS = COUNT_RUNS
    LIVE_FUNCTIONS = LIVE_FUNCTIONS
    MARK = "?"
    FLOW = statements("?")

    def history(self, run_id: str) -> tuple[tuple[Any, ...], list[HistoryEvent]] | None:
        if not storable(run_id):  # a lone surrogate: no such run (not an encoding error)
            return None
        with self.lock:
            found = self.query(RUN_START_ROW, (run_id,))
            if not found:
                return None
            try:
                stored = read_histories(self.conn, "run_id = ?", (run_id,))
            except sqlite3.Error as exc:
                store_error = unusable(self.path, exc)
                if store_error is None:
                    raise
                raise store_error from exc
        return found[0], stored.get(run_id, [])


class ReadOnlySQLiteStore(SQLiteStore):
    """The store on a read-only connection (see ``connect_readonly``): reads, and no writes."""

    def __init__(self, path: str) -> None:  # no super().__init__: it would migrate
        self.path = path
        self.durability = "full"
        self.lock = threading.RLock()
        try:
            self.conn = connect_readonly(path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None
        self.db = sqlite_utils.Database(self.conn)
        try:
            version = self.schema_version()
        except sqlite3.Error:
            version = None  # refused as unreadable by whatever reads next
        self.legacy = version is not None and version < 3
        self.state_legacy = version is not None and version < 4
        self.unsourced = version is not None and version < 5

    def transaction(self) -> SQLiteTransaction:
        raise RuntimeError(f"{self.path} is open read-only")
