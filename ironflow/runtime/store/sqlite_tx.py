"""The SQLite store's write transaction: the statements a round, a start, an emit and the
control calls run, named, then the verbs that run them.

``{marks}`` / ``{fids}`` in a statement: as many ``?`` as ids; ``{owner}``: the worker id,
quoted, inline (one prepared text per worker, so ``executemany`` reuses it). The texts and
their query plans were tuned: change one only with the benchmarks side by side.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.history.events import HistoryEvent
from ironflow.runtime.store import rows
from ironflow.runtime.store.base import Batch, LeaseLost, StoreError
from ironflow.runtime.store.flow_sql import FlowVerbs, statements
from ironflow.runtime.store.sqlite_flow_events import SQLiteFlowStateStatements
from ironflow.runtime.store.sqlite_schema import reraise, rollback
from ironflow.runtime.store.statements import StatementTransaction

if TYPE_CHECKING:
    from ironflow.runtime.store.sqlite import SQLiteStore

# History (append-only: triggers refuse updates and deletes).
HISTORIES = "SELECT run_id, seq, type, ts_us, body FROM history WHERE {where} ORDER BY run_id, seq"

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

# Leases. A pending run is running from here (its first round starts its first steps, or
# parks or ends it): marked so in the same statement, not with one more update.
# ``{version}``: the taker's code version of each function (see ``take_runs``).
TAKE_RUNS = (
    "UPDATE runs SET lease_owner = ?, lease_until_us = ?{version}{clear}, "
    "status = CASE status WHEN 'pending' THEN 'running' ELSE status END "
    "WHERE id IN ({marks}) "
    "AND status NOT IN ('completed', 'failed', 'cancelled', 'blocked', 'queued') "
    # +function_id: by primary key, never by the function's index (without statistics, SQLite
    # prefers it for a list of ids, and walks every run of the function: O(n) per take).
    "AND +function_id IN ({fids}) "
    "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until_us < ?) "
    "RETURNING id, function_id, event_pos, parent_run_id, parent_step_id, "
    "notify_parent, status, trigger"
)
INSERT_HISTORY = "INSERT INTO history VALUES (?, ?, ?, ?, ?)"

# The function registry: the latest registration of an id sets its triggers and settings.
REGISTER_FUNCTION = "INSERT OR REPLACE INTO functions VALUES (?, ?, ?, ?, ?)"
BUMP_REGISTRY = (
    "UPDATE ironflow_meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
    "WHERE key = 'registry_version'"
)
REGISTRY_VERSION = "SELECT value FROM ironflow_meta WHERE key = 'registry_version'"
REGISTERED = "SELECT id, triggers FROM functions"

# Mail.
CLEAR_READY = "UPDATE runs SET ready = 0 WHERE id IN ({marks})"
TAKE_MAIL = "DELETE FROM inbox WHERE run_id IN ({marks}) RETURNING pos, run_id, type, body"
MAIL_OF = "SELECT pos, run_id, type, body FROM inbox WHERE run_id IN ({marks}) ORDER BY pos"
DROP_MAIL = "DELETE FROM inbox WHERE pos IN ({marks})"
# Mail sent after the round read its mail keeps the run flagged: it is read next round.
UNREADY = (
    "UPDATE runs SET ready = 0 WHERE id IN ({marks}) "
    "AND NOT EXISTS (SELECT 1 FROM inbox WHERE inbox.run_id = runs.id)"
)
SEND_MAIL = "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (?, ?, ?, ?)"
SET_READY = "UPDATE runs SET ready = 1 WHERE id = ?"
# A parent that already ended (its invoke timed out, say) is not told.
NOTIFY_PARENT = (
    "INSERT INTO inbox (run_id, type, ts_us, body) SELECT ?, ?, ?, ? WHERE EXISTS "
    "(SELECT 1 FROM runs WHERE id = ?1 "
    "AND status NOT IN ('completed', 'failed', 'cancelled'))"
)
WAKE_PARENT = (
    "UPDATE runs SET ready = 1 WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')"
)

# A round's commit (under the lease fence: every update names the owner).
FENCED = "SELECT COUNT(*) FROM runs WHERE id IN ({marks}) AND lease_owner = ?"
MARK_RUNNING = (
    "UPDATE runs SET status = 'running', updated_us = ? WHERE id = ? AND lease_owner = '{owner}'"
)
MARK_WAITING = (
    "UPDATE runs SET status = 'waiting', updated_us = ?, "
    "lease_owner = NULL, lease_until_us = NULL WHERE id = ? "
    "AND lease_owner = '{owner}'"
)
MARK_ENDED = (
    "UPDATE runs SET status = ?, output = ?, error = ?, ready = 0, "
    "updated_us = ?, ended_us = ?, lease_owner = NULL, lease_until_us = NULL "
    "WHERE id = ? AND lease_owner = '{owner}'"
)
DROP_OF_ENDED = ("timers", "waits", "inbox")
DROP_ALL_OF = "DELETE FROM {table} WHERE run_id IN ({marks})"

# Timers, waits, events.
SET_TIMER = "INSERT OR REPLACE INTO timers VALUES (?, ?, ?, ?, ?)"
DELETE_TIMER = "DELETE FROM timers WHERE run_id = ? AND step_id = ?"
DELETE_WAIT = "DELETE FROM waits WHERE run_id = ? AND step_id = ?"
CLAIM_WAIT = "DELETE FROM waits WHERE run_id = ? AND step_id = ? RETURNING run_id"
CLAIM_TIMER = "DELETE FROM timers WHERE run_id = ? AND step_id = ? AND due_us <= ? RETURNING kind"
ADD_WAIT = "INSERT OR REPLACE INTO waits VALUES (?, ?, ?, ?, ?, ?)"
WAIT_PATHS = "SELECT DISTINCT match_path FROM waits WHERE event_name = ?"
WAITS_ANY = "SELECT run_id, step_id, seq FROM waits WHERE event_name = ? AND match_path IS NULL"
WAITS_KEYED = (
    "SELECT run_id, step_id, seq FROM waits "
    "WHERE event_name = ? AND match_path = ? AND match_key = ?"
)
CONSUME = "INSERT OR IGNORE INTO consumed VALUES (?, ?)"
EVENT_STARTED = "SELECT started FROM events WHERE idempotency_key = ?"
RECORD_EVENT = "INSERT INTO events (id, name, data, ts_us, idempotency_key) VALUES (?, ?, ?, ?, ?)"
EVENT_ID_OF_KEY = "SELECT id FROM events WHERE idempotency_key = ?"
SET_EVENT_STARTED = "UPDATE events SET started = ? WHERE pos = ?"
UNCONSUMED_EVENTS = (
    "SELECT id, data, ts_us FROM events WHERE name = ? AND pos > ? AND id NOT IN "
    "(SELECT event_id FROM consumed WHERE run_id = ?) ORDER BY pos"
)


def marks(values: Any) -> str:
    return ",".join("?" * len(values))


def chunks(values: list[str], size: int = 400) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _quote(text: str) -> str:
    return text.replace("'", "''")


def read_histories(
    conn: Any, where: str, params: Any, corrupt: dict[str, StoreError] | None = None
) -> dict[str, list[HistoryEvent]]:
    with rows.gc_paused():  # over the fetch too: its rows are many objects at once
        found = conn.execute(HISTORIES.format(where=where), params).fetchall()
        return rows.decode_histories(found, corrupt)


class SQLiteTransaction(SQLiteFlowStateStatements, FlowVerbs, StatementTransaction):
    """A store's write transaction as a context manager (a class: the hot paths open one per
    start and per round, and a generator-based one costs several microseconds more).

    A round's transaction is ``fenced`` once it takes runs or commits a batch: a constraint
    that fails in it means another worker wrote to a run of the batch, and is ``LeaseLost``."""

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

    # --- a round --------------------------------------------------------------------------

    def take_runs(
        self,
        run_ids: list[str],
        mail: set[str],
        owner: str,
        until_us: int,
        now_us: int,
        functions: tuple[str, ...],
        versions: tuple[str, ...] = (),
    ) -> list[tuple[Any, ...]]:
        self.fenced = True
        conn = self.conn
        fids = marks(functions)
        # The row is rewritten anyway (the lease): recording the code version costs nothing.
        version = ""
        pairs: list[str] = []
        if versions:
            version = (
                ", code_version = CASE function_id"
                + " WHEN ? THEN ?" * len(versions)
                + " ELSE code_version END"
            )
            for fid, code in zip(functions, versions, strict=True):
                pairs += (fid, code)
        with_mail = [run_id for run_id in run_ids if run_id in mail]
        without = [run_id for run_id in run_ids if run_id not in mail]
        groups = [(chunk, ", ready = 0") for chunk in chunks(with_mail)]
        groups += [(chunk, "") for chunk in chunks(without)]
        taken: list[tuple[Any, ...]] = []
        for chunk, clear in groups:
            taken += conn.execute(
                TAKE_RUNS.format(version=version, clear=clear, marks=marks(chunk), fids=fids),
                (owner, until_us, *pairs, *chunk, *functions, owner, now_us),
            ).fetchall()
        return taken

    def histories(
        self, run_ids: list[str], corrupt: dict[str, StoreError] | None = None
    ) -> dict[str, list[HistoryEvent]]:
        if len(run_ids) <= 400:
            return read_histories(self.conn, f"run_id IN ({marks(run_ids)})", run_ids, corrupt)
        found: dict[str, list[HistoryEvent]] = {}
        for chunk in chunks(run_ids):
            found.update(read_histories(self.conn, f"run_id IN ({marks(chunk)})", chunk, corrupt))
        return found

    def append_history(self, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(INSERT_HISTORY, rows)

    def take_mail(self, run_ids: list[str], warm: list[str]) -> list[tuple[Any, ...]]:
        conn = self.conn
        if warm:
            conn.execute(CLEAR_READY.format(marks=marks(warm)), warm)
        return sorted(conn.execute(TAKE_MAIL.format(marks=marks(run_ids)), run_ids).fetchall())

    def take_timers(self, keys: list[tuple[str, str, str]], now_us: int) -> set[tuple[str, str]]:
        conn = self.conn
        claimed = set()
        for run_id, step_id, kind in keys:
            # A wait's timer fires only while its wait is there (no event took it first).
            wait = kind == kinds.TIMER_WAIT
            if wait and conn.execute(CLAIM_WAIT, (run_id, step_id)).fetchone() is None:
                continue
            if conn.execute(CLAIM_TIMER, (run_id, step_id, now_us)).fetchone() is not None:
                claimed.add((run_id, step_id))
        return claimed

    def mail_of(self, run_ids: list[str]) -> list[tuple[Any, ...]]:
        conn = self.conn
        found: list[tuple[Any, ...]] = []
        for chunk in chunks(run_ids):
            found += conn.execute(MAIL_OF.format(marks=marks(chunk)), chunk).fetchall()
        if len(run_ids) > 400:
            found.sort()
        return found

    def drop_mail(self, positions: list[int], run_ids: list[str]) -> None:
        conn = self.conn
        for start in range(0, len(positions), 400):
            chunk = positions[start : start + 400]
            conn.execute(DROP_MAIL.format(marks=marks(chunk)), chunk)
        for ids in chunks(run_ids):
            conn.execute(UNREADY.format(marks=marks(ids)), ids)

    def commit_round(self, batch: Batch, owner: str) -> None:
        self.fenced = True
        conn = self.conn
        if batch.timers_done:
            conn.executemany(DELETE_TIMER, batch.timers_done)
        if batch.waits_done:
            conn.executemany(DELETE_WAIT, batch.waits_done)
        if batch.history:
            conn.executemany(INSERT_HISTORY, batch.history)
        expected = len(batch.running) + len(batch.waiting) + len(batch.ended) + len(batch.fenced)
        changed = 0
        for chunk in chunks(batch.fenced):
            changed += conn.execute(FENCED.format(marks=marks(chunk)), (*chunk, owner)).fetchone()[
                0
            ]
        quoted = _quote(owner)
        if batch.running:
            changed += conn.executemany(MARK_RUNNING.format(owner=quoted), batch.running).rowcount
        if batch.waiting:
            changed += conn.executemany(MARK_WAITING.format(owner=quoted), batch.waiting).rowcount
        if batch.ended:
            changed += conn.executemany(MARK_ENDED.format(owner=quoted), batch.ended).rowcount
            for chunk in chunks(batch.finished):
                in_chunk = marks(chunk)
                for table in DROP_OF_ENDED:
                    conn.execute(DROP_ALL_OF.format(table=table, marks=in_chunk), chunk)
        if changed != expected:
            # A run's lease moved to another worker under us: write nothing of this batch.
            raise LeaseLost(f"lease lost: {changed} of {expected} runs still ours")
        if batch.notify:
            conn.executemany(NOTIFY_PARENT, batch.notify)
            conn.executemany(WAKE_PARENT, [(row[0],) for row in batch.notify])

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
        self, event_id: str, name: str, data: str, ts_us: int, idempotency_key: str | None
    ) -> int:
        cursor = self.conn.execute(RECORD_EVENT, (event_id, name, data, ts_us, idempotency_key))
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
