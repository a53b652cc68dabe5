"""The SQLite store's write transaction: how it begins and ends, and the statements a start,
an emit and the control calls run, named, then the verbs that run them. A round's verbs and
statements (the take, the batch write under the lease fence) are in ``sqlite_round``.

The texts and their query plans were tuned: change one only with the benchmarks side by side.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from ironflow.runtime.store.errors import LeaseLost
from ironflow.runtime.store.flow_sql import FlowVerbs, statements
from ironflow.runtime.store.sqlite_flow_events import SQLiteFlowStateStatements
from ironflow.runtime.store.sqlite_round import CLAIM_WAIT, DELETE_TIMER, SQLiteRound
from ironflow.runtime.store.sqlite_schema import reraise, rollback

if TYPE_CHECKING:
    from ironflow.runtime.store.sqlite import SQLiteStore

# Runs.
RUN_FUNCTION = "SELECT function_id FROM runs WHERE id = ?"
FIND_RUN = (
    "SELECT status, output, error, function_id, parent_run_id, parent_step_id "
    "FROM runs WHERE id = ?"
)
RUN_STATUS = (
    "SELECT status, (SELECT COUNT(*) FROM history WHERE run_id = ?1) FROM runs WHERE id = ?1"
)
ACTIVE_CHILDREN = (
    "SELECT id FROM runs WHERE parent_run_id = ? AND status NOT IN "
    "('completed', 'failed', 'cancelled')"
)
CREATE_RUN = (
    "INSERT INTO runs (id, function_id, status, parent_run_id, parent_step_id, "
    "notify_parent, trigger, created_us, updated_us, ready, event_pos) "
    "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, 0, "
    "(SELECT COALESCE(MAX(pos), 0) FROM events))"
)
UNSTARTED = (
    "SELECT function_id, trigger, parent_run_id FROM runs WHERE id = ?1 "
    "AND NOT EXISTS (SELECT 1 FROM history WHERE run_id = ?1)"
)
BLOCK = (
    "UPDATE runs SET status = 'blocked', error = ?, ready = 0, lease_owner = NULL, "
    "lease_until_us = NULL, updated_us = ? WHERE id = ? RETURNING function_id"
)
CANCEL_BLOCKED = "UPDATE runs SET status = 'cancelled', ended_us = ?, updated_us = ? WHERE id = ?"
RESUME_BLOCKED = (
    "UPDATE runs SET status = 'running', error = NULL, ready = 1, "
    "lease_owner = NULL, updated_us = ? WHERE id = ?"
)
LINK_RUN = "UPDATE runs SET source_run_id = ? WHERE id = ?"
RESUME_FAILED = (
    "UPDATE runs SET status = 'running', error = NULL, ended_us = NULL, "
    "ready = 1, lease_owner = NULL, lease_until_us = NULL, updated_us = ? "
    "WHERE id = ?"
)

# The function registry: the latest registration of an id sets its triggers and settings.
REGISTER_FUNCTION = "INSERT OR REPLACE INTO functions VALUES (?, ?, ?, ?, ?)"
BUMP_REGISTRY = (
    "UPDATE ironflow_meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
    "WHERE key = 'registry_version'"
)
REGISTRY_VERSION = "SELECT value FROM ironflow_meta WHERE key = 'registry_version'"
REGISTERED = "SELECT id, triggers FROM functions"

# Mail.
SEND_MAIL = "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (?, ?, ?, ?)"
SET_READY = "UPDATE runs SET ready = 1 WHERE id = ?"

# Timers, waits, events.
SET_TIMER = "INSERT OR REPLACE INTO timers VALUES (?, ?, ?, ?, ?)"
ADD_WAIT = "INSERT OR REPLACE INTO waits VALUES (?, ?, ?, ?, ?, ?)"
WAIT_PATHS = "SELECT DISTINCT match_path FROM waits WHERE event_name = ?"
WAITS_ANY = "SELECT run_id, step_id, seq FROM waits WHERE event_name = ? AND match_path IS NULL"
WAITS_KEYED = (
    "SELECT run_id, step_id, seq FROM waits "
    "WHERE event_name = ? AND match_path = ? AND match_key = ?"
)
CONSUME = "INSERT OR IGNORE INTO consumed VALUES (?, ?)"
EVENT_STARTED = "SELECT started FROM events WHERE idempotency_key = ?"
RECORD_EVENT = (
    "INSERT INTO events (id, name, data, ts_us, idempotency_key, traceparent) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
EVENT_ID_OF_KEY = "SELECT id FROM events WHERE idempotency_key = ?"
SET_EVENT_STARTED = "UPDATE events SET started = ? WHERE pos = ?"
UNCONSUMED_EVENTS = (
    "SELECT id, data, ts_us FROM events WHERE name = ? AND pos > ? AND id NOT IN "
    "(SELECT event_id FROM consumed WHERE run_id = ?) ORDER BY pos"
)


class SQLiteTransaction(SQLiteFlowStateStatements, FlowVerbs, SQLiteRound):
    """A store's write transaction as a context manager (a class: the hot paths open one per
    start and per round, and a generator-based one costs several microseconds more). Its
    round's verbs come from ``SQLiteRound``."""

    __slots__ = ("store",)

    FLOW = statements("?")
    # The statements the shared verbs run (``StatementTransaction``): this store's texts.
    SET_TIMER = SET_TIMER
    CREATE_RUN = CREATE_RUN
    RUN_FUNCTION = RUN_FUNCTION
    FIND_RUN = FIND_RUN
    ACTIVE_CHILDREN = ACTIVE_CHILDREN
    BLOCK = BLOCK
    CANCEL_BLOCKED = CANCEL_BLOCKED
    RESUME_BLOCKED = RESUME_BLOCKED
    RESUME_FAILED = RESUME_FAILED
    LINK_RUN = LINK_RUN
    REGISTER_FUNCTION = REGISTER_FUNCTION
    BUMP_REGISTRY = BUMP_REGISTRY
    REGISTRY_VERSION = REGISTRY_VERSION
    EVENT_STARTED = EVENT_STARTED
    SET_EVENT_STARTED = SET_EVENT_STARTED
    EVENT_ID_OF_KEY = EVENT_ID_OF_KEY
    WAIT_PATHS = WAIT_PATHS
    WAITS_ANY = WAITS_ANY
    WAITS_KEYED = WAITS_KEYED
    CLAIM_WAIT = CLAIM_WAIT
    DELETE_TIMER = DELETE_TIMER
    CONSUME = CONSUME
    UNCONSUMED_EVENTS = UNCONSUMED_EVENTS
    ADD_WAIT = ADD_WAIT

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.conn: sqlite3.Connection = store.conn
        self.fenced = False

    def __enter__(self) -> SQLiteTransaction:
        store = self.store
        store.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            store.lock.release()
            if isinstance(exc, sqlite3.Error):
                reraise(store.path, exc)
            raise
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        conn = self.conn
        try:
            if kind is None:
                try:
                    conn.execute("COMMIT")
                    return
                except BaseException as error:
                    rollback(conn)  # a failed commit leaves the transaction open
                    if isinstance(error, sqlite3.Error):
                        self._reraise(error)
                    raise
            rollback(conn)
            if isinstance(exc, sqlite3.Error):
                self._reraise(exc)
        finally:
            self.store.lock.release()

    def _reraise(self, exc: sqlite3.Error) -> None:
        reraise(self.store.path, exc)
        if self.fenced and isinstance(exc, sqlite3.IntegrityError):
            raise LeaseLost(f"lease lost: {exc}") from exc

    # --- runs -----------------------------------------------------------------------------

    def run_status(self, run_id: str) -> tuple[str, int]:
        status, length = self.conn.execute(RUN_STATUS, (run_id,)).fetchone()
        return status, length

    def unstarted(self, run_id: str) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = self.conn.execute(UNSTARTED, (run_id,)).fetchone()
        return found

    # --- the function registry ------------------------------------------------------------

    def registered(self) -> list[tuple[str, str]]:
        return self.conn.execute(REGISTERED).fetchall()

    # --- mail, events and waits -----------------------------------------------------------

    def send_mail(self, run_id: str, kind: str, ts_us: int, body: str) -> None:
        self.conn.execute(SEND_MAIL, (run_id, kind, ts_us, body))
        self.conn.execute(SET_READY, (run_id,))

    def record_event(
        self,
        event_id: str,
        name: str,
        data: str,
        ts_us: int,
        idempotency_key: str | None,
        traceparent: str | None = None,
    ) -> int:
        params = (event_id, name, data, ts_us, idempotency_key, traceparent)
        cursor = self.conn.execute(RECORD_EVENT, params)
        pos: int = cursor.lastrowid  # type: ignore[assignment]
        return pos


class UnsyncedTransaction(SQLiteTransaction):
    """A transaction committed without a sync of its own (``synchronous = NORMAL`` for it
    alone: the setting is the connection's, so it is set and put back under the store's lock,
    around this transaction only). Sound in WAL mode: frames are appended in order, and the
    next ``FULL`` commit syncs the whole log, this transaction's frames with it; a crash
    before then loses this transaction whole, never part of it. For a round's take, whose
    round commits next (``Store.take_transaction``)."""

    __slots__ = ()

    def __enter__(self) -> SQLiteTransaction:
        self.store.lock.acquire()  # held until put back (the store's lock is reentrant)
        try:
            self.conn.execute("PRAGMA synchronous = NORMAL")
            return super().__enter__()
        except BaseException:
            self._put_back()
            raise

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            super().__exit__(kind, exc, tb)
        finally:
            self._put_back()

    def _put_back(self) -> None:
        try:
            self.conn.execute("PRAGMA synchronous = FULL")
        finally:
            self.store.lock.release()
