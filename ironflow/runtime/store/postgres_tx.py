"""The PostgreSQL store's write transaction: its statements, named, then the verbs that run them.

Same semantics as ``sqlite_tx``, verb by verb; what differs is how concurrent writers are kept
apart (SQLite has one writer at a time, PostgreSQL many):

- ``take_runs`` skips runs another transaction holds (``FOR UPDATE SKIP LOCKED``);
- ``commit_round`` is one multi-statement query whose first statement is the lease fence;
- events, run creation and wait registration take the advisory stripes (see ``postgres.py``);
- a wait is claimed by deleting its row (``DELETE ... RETURNING``): an emit delivers to it, or
  a round fires its timeout (``take_timers``), never both;
- a transaction that leaves work for other workers (runs created, events recorded, mail sent,
  a run resumed) sends one NOTIFY before it commits, at most one (``wakes``); a step commit
  sends none (see ``postgres_listen``);
- mail does not touch the run's row (which the run's round may hold): a run has mail iff it
  has inbox rows, and discovery looks there. A round reads its runs' mail in its take
  (``mail_of``) and deletes what it read in its commit (``drop_mail``): mail sent in between
  stays, and discovery finds it.

Arrays carry the rows (``unnest``): one statement per verb, not one per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ironflow.history.events import HistoryEvent
from ironflow.runtime.store import rows
from ironflow.runtime.store.base import Batch, LeaseLost, StoreError
from ironflow.runtime.store.postgres_listen import NOTIFY
from ironflow.runtime.store.postgres_round import INSERT_HISTORY, columns, round_query
from ironflow.runtime.store.postgres_schema import (
    LEASE_LOST_STATE,
    LOCK_STRIPES,
    NOT_ENDED,
    STRIPES,
    first_line,
    stripe,
)
from ironflow.runtime.store.statements import StatementTransaction

if TYPE_CHECKING:
    import psycopg

    from ironflow.runtime.store.postgres import PostgresStore

_TERMINAL = "('completed', 'failed', 'cancelled')"

# History (append-only: a trigger refuses updates and deletes).
HISTORIES = (
    "SELECT run_id, seq, type, ts_us, body FROM history WHERE run_id = ANY(%s::text[]) "
    "ORDER BY run_id, seq"
)

# Runs.
RUN_FUNCTION = "SELECT function_id FROM runs WHERE id = %s"
FIND_RUN = (
    "SELECT status, output, error, function_id, parent_run_id, parent_step_id "
    "FROM runs WHERE id = %s"
)
RUN_STATUS = (
    "SELECT status, (SELECT COUNT(*) FROM history WHERE run_id = %(id)s) FROM runs "
    "WHERE id = %(id)s"
)
ACTIVE_CHILDREN = f"SELECT id FROM runs WHERE parent_run_id = %s AND status NOT IN {_TERMINAL}"
# The cut is read in this statement, after the locks statement: its snapshot sees every event
# whose lock was released, and no event of any stripe is in flight.
CREATE_RUN = (
    "INSERT INTO runs (id, function_id, status, parent_run_id, parent_step_id, notify_parent, "
    "trigger, created_us, updated_us, ready, event_pos) "
    "VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s, %s, 0, "
    "(SELECT coalesce(max(pos), 0) FROM events))"
)
UNSTARTED = (
    "SELECT function_id, trigger, parent_run_id FROM runs WHERE id = %(id)s "
    "AND NOT EXISTS (SELECT 1 FROM history WHERE run_id = %(id)s)"
)
BLOCK = (
    "UPDATE runs SET status = 'blocked', error = %s, ready = 0, lease_owner = NULL, "
    "lease_until_us = NULL, updated_us = %s WHERE id = %s RETURNING function_id"
)
CANCEL_BLOCKED = (
    "UPDATE runs SET status = 'cancelled', ended_us = %s, updated_us = %s WHERE id = %s"
)
RESUME_BLOCKED = (
    "UPDATE runs SET status = 'running', error = NULL, ready = 1, "
    "lease_owner = NULL, updated_us = %s WHERE id = %s"
)
RESUME_FAILED = (
    "UPDATE runs SET status = 'running', error = NULL, ended_us = NULL, ready = 1, "
    "lease_owner = NULL, lease_until_us = NULL, updated_us = %s WHERE id = %s"
)

# Leases: a claim locks the rows it takes and skips rows another transaction holds, so two
# workers never wait for each other over a run. The WHERE is checked again on the newest row
# version when the lock is taken (READ COMMITTED): a run taken meanwhile is not taken twice.
# A pending run is running from here (as on SQLite).
TAKE_RUNS = (
    "UPDATE runs SET lease_owner = %(owner)s, lease_until_us = %(until)s, "
    "code_version = coalesce((SELECT u.v FROM unnest(%(fids)s::text[], %(versions)s::text[]) "
    "AS u(f, v) WHERE u.f = runs.function_id), code_version), "
    "ready = CASE WHEN id = ANY(%(mail)s::text[]) THEN 0 ELSE ready END, "
    "status = CASE status WHEN 'pending' THEN 'running' ELSE status END "
    "WHERE id IN (SELECT id FROM runs WHERE id = ANY(%(ids)s::text[]) "
    f"AND function_id = ANY(%(fids)s::text[]) AND status NOT IN {NOT_ENDED} "
    "AND (lease_owner IS NULL OR lease_owner = %(owner)s OR lease_until_us < %(now)s) "
    "FOR UPDATE SKIP LOCKED) RETURNING id, function_id, event_pos, parent_run_id, "
    "parent_step_id, notify_parent, status, trigger"
)

# The function registry: the latest registration of an id sets its triggers and settings.
REGISTER_FUNCTION = (
    "INSERT INTO functions VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
    "triggers = excluded.triggers, settings = excluded.settings, "
    "code_version = excluded.code_version, registered_us = excluded.registered_us"
)
BUMP_REGISTRY = (
    "UPDATE ironflow_meta SET value = (value::bigint + 1)::text WHERE key = 'registry_version'"
)
REGISTRY_VERSION = "SELECT value FROM ironflow_meta WHERE key = 'registry_version'"
REGISTERED = "SELECT id, triggers FROM functions"

# Mail.
CLEAR_READY = "UPDATE runs SET ready = 0 WHERE id = ANY(%s::text[]) AND ready = 1"
TAKE_MAIL = "DELETE FROM inbox WHERE run_id = ANY(%s::text[]) RETURNING pos, run_id, type, body"
SEND_MAIL = "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (%s, %s, %s, %s)"
MAIL_OF = "SELECT pos, run_id, type, body FROM inbox WHERE run_id = ANY(%s::text[]) ORDER BY pos"
DROP_MAIL = "DELETE FROM inbox WHERE pos = ANY(%s::bigint[])"

# Timers, waits, events. A wait is claimed by whoever deletes its row; one held by another
# transaction (an emit delivering to it, a round firing its timeout) is skipped, not waited
# for: that transaction claims it.
SET_TIMER = (
    "INSERT INTO timers VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, step_id) "
    "DO UPDATE SET kind = excluded.kind, due_us = excluded.due_us, attempt = excluded.attempt"
)
CLAIM_WAIT = (
    "DELETE FROM waits WHERE (run_id, step_id) IN (SELECT run_id, step_id FROM waits "
    "WHERE run_id = %s AND step_id = %s FOR UPDATE SKIP LOCKED) RETURNING run_id"
)
DELETE_TIMER = "DELETE FROM timers WHERE run_id = %s AND step_id = %s"
CLAIM_WAITS = (
    "DELETE FROM waits WHERE (run_id, step_id) IN (SELECT w.run_id, w.step_id FROM waits w "
    "JOIN unnest(%s::text[], %s::text[]) AS u(r, s) ON w.run_id = u.r AND w.step_id = u.s "
    "ORDER BY 1, 2 FOR UPDATE OF w SKIP LOCKED) RETURNING run_id, step_id"
)
CLAIM_TIMERS = (
    "DELETE FROM timers WHERE (run_id, step_id) IN (SELECT t.run_id, t.step_id FROM timers t "
    "JOIN unnest(%s::text[], %s::text[]) AS u(r, s) ON t.run_id = u.r AND t.step_id = u.s "
    "WHERE t.due_us <= %s ORDER BY 1, 2 FOR UPDATE OF t SKIP LOCKED) RETURNING run_id, step_id"
)
ADD_WAIT = (
    "INSERT INTO waits VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, step_id) "
    "DO UPDATE SET event_name = excluded.event_name, match_path = excluded.match_path, "
    "match_key = excluded.match_key, seq = excluded.seq"
)
WAIT_PATHS = "SELECT DISTINCT match_path FROM waits WHERE event_name = %s"
WAITS_ANY = "SELECT run_id, step_id, seq FROM waits WHERE event_name = %s AND match_path IS NULL"
WAITS_KEYED = (
    "SELECT run_id, step_id, seq FROM waits "
    "WHERE event_name = %s AND match_path = %s AND match_key = %s"
)
CONSUME = "INSERT INTO consumed VALUES (%s, %s) ON CONFLICT DO NOTHING"
EVENT_STARTED = "SELECT started FROM events WHERE idempotency_key = %s"
RECORD_EVENT = (
    "INSERT INTO events (id, name, data, ts_us, idempotency_key) VALUES (%s, %s, %s, %s, %s) "
    "RETURNING pos"
)
SET_EVENT_STARTED = "UPDATE events SET started = %s WHERE pos = %s"
UNCONSUMED_EVENTS = (
    "SELECT id, data, ts_us FROM events WHERE name = %s AND pos > %s AND id NOT IN "
    "(SELECT event_id FROM consumed WHERE run_id = %s) ORDER BY pos"
)


class PostgresTransaction(StatementTransaction):
    """A store's write transaction (``BEGIN`` … ``COMMIT`` under the store's lock).

    A round's transaction is ``fenced`` once it takes runs or commits a batch: a unique key
    that fails in it means another worker wrote to a run of the batch, and is ``LeaseLost``.
    ``shared``/``exclusive`` are the advisory stripes it holds (taken once each). ``wakes``:
    it left work for other workers, and announces it once before it commits (``notified``
    once the round's query did)."""

    __slots__ = ("exclusive", "notified", "shared", "store", "tx", "wakes")

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
    REGISTER_FUNCTION = REGISTER_FUNCTION
    BUMP_REGISTRY = BUMP_REGISTRY
    REGISTRY_VERSION = REGISTRY_VERSION
    EVENT_STARTED = EVENT_STARTED
    SET_EVENT_STARTED = SET_EVENT_STARTED
    WAIT_PATHS = WAIT_PATHS
    WAITS_ANY = WAITS_ANY
    WAITS_KEYED = WAITS_KEYED
    CLAIM_WAIT = CLAIM_WAIT
    DELETE_TIMER = DELETE_TIMER
    CONSUME = CONSUME
    UNCONSUMED_EVENTS = UNCONSUMED_EVENTS
    ADD_WAIT = ADD_WAIT

    tx: AbstractContextManager[Any]

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.conn: psycopg.Connection[Any] = store.conn
        self.fenced = False
        self.shared: set[int] = set()
        self.exclusive: set[int] = set()
        self.wakes = False
        self.notified = False

    def __enter__(self) -> PostgresTransaction:
        store = self.store
        store.lock.acquire()
        try:
            self.tx = self.conn.transaction()
            self.tx.__enter__()
        except BaseException as exc:
            store.lock.release()
            store.reraise(exc)
            raise
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if exc is None and self.wakes and not self.notified:
            # In the transaction: sent on commit, dropped on rollback (no news, no hint).
            try:
                self.conn.execute(NOTIFY, (self.store.channel,))
            except BaseException as error:
                self._end(type(error), error, error.__traceback__)
                raise
        self._end(kind, exc, tb)

    def _end(self, kind: Any, exc: Any, tb: Any) -> None:
        """Commit (or roll back on ``exc``), and let go of the store's lock."""
        try:
            try:
                self.tx.__exit__(kind, exc, tb)
            except BaseException as error:
                self._reraise(error)
                raise
            if exc is not None:
                self._reraise(exc)
        finally:
            self.store.lock.release()

    def _reraise(self, exc: BaseException) -> None:
        import psycopg

        if not isinstance(exc, psycopg.Error):
            return
        if exc.sqlstate == LEASE_LOST_STATE:
            detail = exc.diag.message_detail or ""
            raise LeaseLost(str(exc.diag.message_primary), tuple(detail.split())) from None
        if self.fenced and isinstance(exc, psycopg.errors.UniqueViolation):
            raise LeaseLost(f"lease lost: {first_line(exc)}") from exc
        self.store.reraise(exc)

    def lock(self, exclusive: int | None = None, shared: Sequence[int] = ()) -> None:
        """Take advisory stripes not held yet, in one statement, in key order. A first emit
        or run creation takes every stripe shared at once (the emit's own exclusive): taking
        more later, one by one, could deadlock with another transaction doing the same."""
        wanted: dict[int, bool] = {}
        if exclusive is not None and exclusive not in self.exclusive:
            wanted[exclusive] = True
        for key in shared:
            if key not in self.shared and key not in self.exclusive:
                wanted.setdefault(key, False)
        if not wanted:
            return
        keys = sorted(wanted)
        lock_class = self.store.lock_class
        self.conn.execute(LOCK_STRIPES, (lock_class, lock_class, keys, [wanted[k] for k in keys]))
        for key in keys:
            (self.exclusive if wanted[key] else self.shared).add(key)

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
        params = {
            # unnest pads the shorter array with NULLs: no versions keeps each run's own.
            "versions": list(versions),
            "owner": owner,
            "until": until_us,
            "now": now_us,
            "ids": run_ids,
            "mail": [run_id for run_id in run_ids if run_id in mail],
            "fids": list(functions),
        }
        return self.conn.execute(TAKE_RUNS, params).fetchall()

    def histories(
        self, run_ids: list[str], corrupt: dict[str, StoreError] | None = None
    ) -> dict[str, list[HistoryEvent]]:
        with rows.gc_paused():  # over the fetch too: its rows are many objects at once
            found = self.conn.execute(HISTORIES, (run_ids,)).fetchall()
            return rows.decode_histories(found, corrupt)

    def append_history(self, rows_: list[tuple[Any, ...]]) -> None:
        if rows_:
            self.conn.execute(INSERT_HISTORY, columns(rows_))

    def take_mail(self, run_ids: list[str], warm: list[str]) -> list[tuple[Any, ...]]:
        if warm:
            self.conn.execute(CLEAR_READY, (warm,))
        return sorted(self.conn.execute(TAKE_MAIL, (run_ids,)).fetchall())

    def mail_of(self, run_ids: list[str]) -> list[tuple[Any, ...]]:
        return self.conn.execute(MAIL_OF, (run_ids,)).fetchall()

    def drop_mail(self, positions: list[int], run_ids: list[str]) -> None:
        if positions:
            self.conn.execute(DROP_MAIL, (positions,))
        if run_ids:
            # Mail sent since ``mail_of`` is an inbox row, which discovery finds: the flag (a
            # resume's) is cleared whatever came since, only where set (no row rewritten).
            self.conn.execute(CLEAR_READY, (run_ids,))

    def take_timers(self, keys: list[tuple[str, str, str]], now_us: int) -> set[tuple[str, str]]:
        waits = [(run_id, step_id) for run_id, step_id, kind in keys if kind == "wait"]
        lost: set[tuple[str, str]] = set()
        if waits:
            claimed = {tuple(row) for row in self.conn.execute(CLAIM_WAITS, columns(waits))}
            lost = {key for key in waits if key not in claimed}
        wanted = [(run_id, step_id) for run_id, step_id, _ in keys if (run_id, step_id) not in lost]
        if not wanted:
            return set()
        found = self.conn.execute(CLAIM_TIMERS, (*columns(wanted), now_us)).fetchall()
        return {(row[0], row[1]) for row in found}

    def commit_round(self, batch: Batch, owner: str) -> None:
        self.fenced = True
        statements, params = round_query(batch, owner)
        if not statements:
            return
        if batch.notify or (self.wakes and not self.notified):
            # Parents told of a child's end: announced in the same round trip.
            statements.append(NOTIFY)
            params.append(self.store.channel)
            self.wakes = self.notified = True
        import psycopg

        psycopg.ClientCursor(self.conn).execute("; ".join(statements), params)

    # --- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        function_id: str,
        trigger: str,
        now_us: int,
        parent_run_id: str | None,
        parent_step_id: str | None,
        notify_parent: bool,
    ) -> None:
        self.lock(shared=range(STRIPES))
        self.wakes = True
        super().create_run(
            run_id, function_id, trigger, now_us, parent_run_id, parent_step_id, notify_parent
        )

    def run_status(self, run_id: str) -> tuple[str, int]:
        status, length = self.conn.execute(RUN_STATUS, {"id": run_id}).fetchone()  # type: ignore[misc]
        return status, length

    def unstarted(self, run_id: str) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = self.conn.execute(UNSTARTED, {"id": run_id}).fetchone()
        return found

    def resume_blocked(self, run_id: str, now_us: int) -> None:
        self.wakes = True
        super().resume_blocked(run_id, now_us)

    def resume_failed(self, run_id: str, now_us: int) -> None:
        self.wakes = True
        super().resume_failed(run_id, now_us)

    # --- the function registry ------------------------------------------------------------

    def registered(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self.conn.execute(REGISTERED).fetchall()]

    # --- mail, events and waits -----------------------------------------------------------

    def send_mail(self, run_id: str, kind: str, ts_us: int, body: str) -> None:
        self.wakes = True
        self.conn.execute(SEND_MAIL, (run_id, kind, ts_us, body))

    def record_event(
        self, event_id: str, name: str, data: str, ts_us: int, idempotency_key: str | None
    ) -> int:
        # Every stripe shared with its own exclusive, at once: an emit may start runs next.
        self.lock(exclusive=stripe(name), shared=range(STRIPES))
        self.wakes = True
        found = self.conn.execute(RECORD_EVENT, (event_id, name, data, ts_us, idempotency_key))
        pos: int = found.fetchone()[0]  # type: ignore[index]
        return pos

    def unconsumed_events(self, name: str, after_pos: int, run_id: str) -> list[tuple[Any, ...]]:
        # A wait registration: the name's stripe shared, so no event of it is in flight and
        # one emitted later sees the wait this transaction adds.
        self.lock(shared=(stripe(name),))
        return super().unconsumed_events(name, after_pos, run_id)

    def add_wait(
        self, run_id: str, step_id: str, name: str, path: str | None, key: str | None, seq: int
    ) -> None:
        self.lock(shared=(stripe(name),))
        super().add_wait(run_id, step_id, name, path, key, seq)
