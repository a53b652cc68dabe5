"""The PostgreSQL store: its own verbs (reads, discovery, leases), named, then the store; a write
transaction's statements and verbs are in ``postgres_tx`` (how it is sent: ``postgres_commit``;
a round's commit: ``postgres_round``; advisory locks: ``postgres_locks``), the schema in
``postgres_schema``, its connection in ``postgres_session``. Same semantics as the SQLite store,
verb by verb.

**Event order is commit order** (issue 11, item 4). A run's ``event_pos`` is its cut: an event of
the run's waits counts as "emitted after the run started" iff its ``pos`` is above the cut. On
SQLite one writer at a time makes ``pos`` order commit order. On PostgreSQL a sequence hands out
``pos`` before commit, so concurrent emitters commit out of ``pos`` order, and a run created in
between would take a cut above an event that commits after it: that event would be lost to the
run. The rule that closes this:

- Event names hash onto ``STRIPES`` transaction-level advisory locks. Inserting an event takes its
  stripe *exclusive*, before ``nextval`` and until commit.
- Creating a run takes *every* stripe *shared*, then reads ``MAX(pos)`` in a later statement (so
  under READ COMMITTED its snapshot is taken after the locks are granted), until commit.
- Registering a wait for a name takes that name's stripe *shared*, then looks for events after
  the cut and inserts the wait.
- A transaction takes the advisory locks it needs in one statement, in key order, each once and
  in the strongest mode it needs (``postgres_locks``): a round declares every name it will wait
  for and publish first (``reserve``). An emit may start runs right after it records its event,
  so recording an event takes every stripe shared along with its own exclusive, at once: taking
  the rest later would let two emits each hold one stripe and wait for the other's. So emits
  take turns on PostgreSQL (each holds the stripes for its short transaction); runs never wait
  for runs (shared with shared).

So an event insert and a run creation never overlap: one commits (and, PostgreSQL releasing locks
after making the commit visible, is seen) before the other starts. An event committed before the
run is at or below its cut; one committed after it took its ``pos`` after the cut was read, and
the sequence (``CACHE 1``: no per-session blocks) only grows, so it is above. An emit sees every
wait committed before it, a wait registration sees every event committed before it, so an event
is never lost between a wait and an emit; the wait row's delete (``DELETE ... RETURNING``, by the
emit or by the round firing the wait's timeout) and the ``consumed`` key deliver it at most once.
A snapshot cut (``pg_current_snapshot``) would need no lock but counts an event that commits
between the run's snapshot and its commit as "after", which is not commit order.

**Mail** never writes the run's row (the run's round may hold it, and an emit waiting for that
round while the round waits for the emit's stripe would deadlock): a run has mail iff it has inbox
rows, and discovery looks there as well as at the ``ready`` flag (which a resume sets).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ironflow.history.events import HistoryEvent
from ironflow.runtime.store import rows
from ironflow.runtime.store.base import Store, StoreError
from ironflow.runtime.store.flow_sql import FlowReads, statements
from ironflow.runtime.store.postgres_flow_events import PostgresFlowStateStatements
from ironflow.runtime.store.postgres_listen import Listener, channel
from ironflow.runtime.store.postgres_schema import (
    DURABILITY,
    INSTALL_HINT,
    NOT_ENDED,
    first_line,
    is_postgres_url,
    lock_class,
    migrate,
    redact,
    schema_version,
)
from ironflow.runtime.store.postgres_session import PostgresSession
from ironflow.runtime.store.postgres_tx import (
    FIND_RUN,
    HISTORIES,
    TAKE_SETUP,
    UNCONSUMED_EVENTS,
    PostgresTransaction,
)
from ironflow.runtime.store.statements import StatementReads, storable

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore", "PostgresTransaction", "is_postgres_url", "redact"]

# A running run's row is not rewritten per step: its last history event says when it moved.
RUN_COLUMNS = (
    "id, function_id, status, output, error, created_us, GREATEST(updated_us, COALESCE((SELECT "
    "ts_us FROM history WHERE run_id = runs.id ORDER BY seq DESC LIMIT 1), 0)), ended_us, "
    "parent_run_id, {code_version}, {source_run_id}"
)
GET_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = %s"
LIST_RUNS = f"SELECT {RUN_COLUMNS} FROM runs"
COUNT_RUNS = "SELECT COUNT(*) FROM runs"
RUN_START_ROW = "SELECT function_id, trigger, parent_run_id FROM runs WHERE id = %s"

# Discovery: reads, no locks (``take_runs`` claims what it finds, skipping held rows), and the
# claim of runs waiting for any worker.
_LEASE_FREE = "(r.lease_owner IS NULL OR r.lease_owner = %(owner)s OR r.lease_until_us < %(now)s)"
# Due timers in due order, each run looked up by key (OFFSET 0: a per-row nested loop, never a
# hash join that reads every run first). A blocked run's timers wait for its resume, but for
# flow control's (its timeouts.finish deadline).
DUE_TIMERS = (
    "SELECT t.run_id, t.step_id, t.kind, t.attempt FROM timers t CROSS JOIN LATERAL "
    "(SELECT 1 FROM runs r WHERE r.id = t.run_id AND (r.status != 'blocked' OR t.kind = 'flow') "
    f"AND r.function_id = ANY(%(fids)s) AND {_LEASE_FREE} OFFSET 0) r "
    "WHERE t.due_us <= %(now)s ORDER BY t.due_us LIMIT %(limit)s"
)
# Runs with news: flagged ready (a resume) or with mail (inbox rows). The parts are not merged
# (UNION ALL: a run may come twice, the caller takes it once), so the LIMIT stops the scan: a
# look reads about one page, however many runs wait. The mail part walks inbox rows and looks
# up each one's run by key (OFFSET 0 keeps the lookup a per-row nested loop the planner cannot
# turn into a join of both whole tables). Runs waiting for any worker are ``CLAIM_RUNS``'s.
READY_RUNS = (
    "SELECT r.id FROM runs r WHERE r.ready = 1 AND r.function_id = ANY(%(fids)s) "
    f"AND r.status NOT IN {NOT_ENDED} AND {_LEASE_FREE} "
    "UNION ALL SELECT r.id FROM inbox i CROSS JOIN LATERAL (SELECT id FROM runs r "
    f"WHERE r.id = i.run_id AND r.function_id = ANY(%(fids)s) AND r.status NOT IN {NOT_ENDED} "
    f"AND {_LEASE_FREE} OFFSET 0) r LIMIT %(limit)s"
)
# Runs waiting for any worker (pending, or orphaned: a lease run out), leased in one statement
# that commits, rows another worker's claim holds skipped (``SKIP LOCKED``): workers looking at
# once each get runs of their own instead of all reading one page and racing for it (measured:
# 4 workers lost 77% of their claims that way). The WHERE is checked again on a row's newest
# version when it is locked (READ COMMITTED), so a run claimed meanwhile is not claimed twice,
# and the LIMIT counts rows locked. The claim is the whole take (``TAKE_RUNS``): lease, status
# running, the claimer's code version. The round's take then only reads the row, so it is
# written once: every write of a ``runs`` row rewrites all its indexes (status and lease_owner
# are indexed, so no update of them is HOT), ~25-30 µs of server CPU a run. The claimer keeps
# the ids it claimed until a take of them commits (``Driver.claimed``): a round that fails
# before takes them in the next one; a claimer that dies passes them on with its lease.
CLAIM_RUNS = (
    "WITH c AS (SELECT r.id FROM runs r WHERE r.status IN ('pending', 'running') "
    "AND r.function_id = ANY(%(fids)s) AND (r.lease_owner IS NULL OR r.lease_until_us < %(now)s) "
    "LIMIT %(most)s FOR UPDATE SKIP LOCKED) "
    "UPDATE runs SET lease_owner = %(owner)s, lease_until_us = %(until)s, "
    "code_version = coalesce((SELECT u.v FROM unnest(%(fids)s::text[], %(versions)s::text[]) "
    "AS u(f, v) WHERE u.f = runs.function_id), code_version), "
    # A function with start gates stays pending here: its take admits or holds the run in one
    # transaction, so a run held back is never seen running.
    "status = CASE WHEN runs.function_id = ANY(%(gated)s::text[]) THEN runs.status "
    "ELSE 'running' END "
    "FROM c WHERE runs.id = c.id RETURNING runs.id"
)
NEXT_TIMER_AFTER = "SELECT MIN(due_us) FROM timers WHERE due_us > %s"
NEXT_TIMER = "SELECT MIN(due_us) FROM timers"
# Heartbeats: a worker is live until its row's until_us (judged on the looker's clock).
HEARTBEAT = (
    "INSERT INTO workers (id, functions, seen_us, until_us) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET functions = excluded.functions, seen_us = excluded.seen_us, "
    "until_us = excluded.until_us"
)
FORGET_WORKER = "DELETE FROM workers WHERE id = %s"
REGISTRATION = "SELECT triggers, settings, code_version FROM functions WHERE id = %s"
LIVE_FUNCTIONS = "SELECT functions FROM workers WHERE until_us >= %s"
RENEW_LEASES = "UPDATE runs SET lease_until_us = %s WHERE id = ANY(%s::text[]) AND lease_owner = %s"
RELEASE_ALL = "UPDATE runs SET lease_owner = NULL, lease_until_us = NULL WHERE lease_owner = %s"


class PostgresStore(PostgresSession, PostgresFlowStateStatements, StatementReads, FlowReads, Store):
    """One PostgreSQL schema holding runs, history, timers, waits, events and leases."""

    read_only = False
    # A read-only opening of a schema from before v3 has no registry: read as absent.
    legacy = False
    unsourced = False  # a read-only opening from before v5: no runs.source_run_id
    LIMIT_EACH_STATUS = True  # see StatementReads.page_query
    CLAIMS = True  # runs waiting for any worker are claimed apart from discovery (``claim``)

    def __init__(self, url: str, *, durability: str = "full", connect_timeout: float = 10.0):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        if not is_postgres_url(url):
            raise ValueError(
                f"not a PostgreSQL URL: {redact(str(url))!r}; use 'postgresql://user@host/db'"
            )
        self.url = self.path = redact(url)
        self._dsn = url  # the listener's connection needs the credentials
        self._connect_timeout = connect_timeout
        self.durability = durability
        self.lock = threading.RLock()
        # A connection the server closed was warned about and is not replaced yet.
        self.outage = False
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                f"cannot open {self.url}: the PostgreSQL store needs psycopg 3; {INSTALL_HINT}"
            ) from None
        try:
            self.conn: psycopg.Connection[Any] = self._connect()
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the PostgreSQL database {self.url}: {first_line(exc)}"
            ) from None
        try:
            self._open()
        except psycopg.Error as exc:
            self.conn.close()
            raise StoreError(f"cannot use the PostgreSQL database {self.url}: {exc}") from None
        except BaseException:
            self.conn.close()
            raise

    def _open(self) -> None:
        schema = self.conn.execute("SELECT current_schema()").fetchone()
        if schema is None or schema[0] is None:
            path = self.conn.execute("SHOW search_path").fetchone()
            raise StoreError(
                f"{self.url}: no schema of its search_path ({path[0] if path else '?'}) "
                f"exists; create it first (CREATE SCHEMA ...)"
            )
        self.schema: str = schema[0]
        self.lock_class = lock_class(self.schema)
        self.channel = channel(self.schema)
        if self.read_only:
            version = schema_version(self.conn)
            if version is None:
                raise StoreError(f"{self.url} holds no ironflow database (no ironflow tables)")
            self.legacy = version < 3
            self.state_legacy = version < 4
            self.unsourced = version < 5
        else:
            migrate(self.conn, self.lock_class, self.url)

    def transaction(self) -> PostgresTransaction:
        """``BEGIN`` … ``COMMIT`` under the store's lock; rolled back on error."""
        return PostgresTransaction(self)

    def take_transaction(self) -> PostgresTransaction:
        """As ``transaction()``, begun with ``TAKE_SETUP`` (its plans, its commit)."""
        tx = PostgresTransaction(self)
        tx.setup = TAKE_SETUP
        return tx

    def listen(
        self, callback: Callable[[frozenset[str] | None], None], retry: float
    ) -> Callable[[], None] | None:
        """LISTEN on a connection of its own, from a thread, for other transactions' news."""
        listener = Listener(
            self._dsn,
            self.url,
            self.channel,
            callback,
            retry,
            self._connect_timeout,
            own_pid=self._backend_pid,
        )
        return listener.start().stop

    def schema_version(self) -> int | None:
        with self.lock:
            return schema_version(self.connection())

    def discover(
        self, now_us: int, functions: tuple[str, ...], owner: str, limit: int
    ) -> tuple[list[tuple[Any, ...]], list[str], int | None]:
        params = {"now": now_us, "fids": list(functions), "owner": owner, "limit": limit}
        due = self.query(DUE_TIMERS, params)
        ready = self.query(READY_RUNS, params)
        nearest = self.query(NEXT_TIMER_AFTER, (now_us,))
        return due, [row[0] for row in ready], nearest[0][0] if nearest else None

    def claim(
        self,
        now_us: int,
        functions: tuple[str, ...],
        owner: str,
        until_us: int,
        most: int,
        versions: tuple[str, ...] = (),
        gated: tuple[str, ...] = (),
    ) -> list[str] | None:
        params = {"now": now_us, "fids": list(functions), "owner": owner, "until": until_us}
        params["most"] = most
        params["gated"] = list(gated)
        params["versions"] = list(versions)  # unnest pads with NULLs: none keeps each run's
        # Not ``reading``: a claim that may have committed is not sent a second time (what it
        # leased passes on with its lease, see CLAIM_RUNS).
        with self.lock:
            conn = self.connection()
            try:
                return [row[0] for row in conn.execute(CLAIM_RUNS, params).fetchall()]
            except Exception as exc:
                self.reraise(exc)
                raise

    # A round's reads while folding: one autocommit statement each (the connection is in
    # autocommit: no transaction is left open on it), no advisory stripe taken. The round's
    # commit looks again under the stripes (``PostgresTransaction.unconsumed_events``).

    def find_run(self, run_id: str) -> tuple[Any, ...] | None:
        found = self.query(FIND_RUN, (run_id,))
        return tuple(found[0]) if found else None

    def unconsumed_events(self, name: str, after_pos: int, run_id: str) -> list[tuple[Any, ...]]:
        return self.query(UNCONSUMED_EVENTS, (name, after_pos, run_id))

    def next_due(self) -> int | None:
        row = self.query(NEXT_TIMER)
        return row[0][0] if row else None

    def renew_leases(self, run_ids: list[str], owner: str, until_us: int) -> None:
        self.query(RENEW_LEASES, (until_us, run_ids, owner))

    def release_all(self, owner: str) -> None:
        self.query(RELEASE_ALL, (owner,))

    def registration(self, function_id: str) -> tuple[str, str, str] | None:
        found = self.query(REGISTRATION, (function_id,))
        if not found:
            return None
        triggers, settings, version = found[0]
        return triggers, settings, version

    def heartbeat(self, owner: str, functions: str, now_us: int, until_us: int) -> None:
        self.query(HEARTBEAT, (owner, functions, now_us, until_us))

    def forget_worker(self, owner: str) -> None:
        self.query(FORGET_WORKER, (owner,))

    GET_RUN = GET_RUN
    LIST_RUNS = LIST_RUNS
    COUNT_RUNS = COUNT_RUNS
    LIVE_FUNCTIONS = LIVE_FUNCTIONS
    MARK = "%s"
    FLOW = statements("%s")

    def history(self, run_id: str) -> tuple[tuple[Any, ...], list[HistoryEvent]] | None:
        if not storable(run_id):  # a NUL: no such run (not a driver error)
            return None

        # One repeatable-read transaction: the run's row and its history from one snapshot.
        def read(conn: psycopg.Connection[Any]) -> tuple[Any, Any] | None:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                found = conn.execute(RUN_START_ROW, (run_id,)).fetchone()
                if found is None:
                    return None
                with rows.gc_paused():  # its rows are many objects at once
                    return found, conn.execute(HISTORIES, ([run_id],)).fetchall()

        read_ = self.reading(read)
        if read_ is None:
            return None
        found, stored = read_
        return tuple(found), rows.decode_histories(stored).get(run_id, [])


class ReadOnlyPostgresStore(PostgresStore):
    """The store on a session whose transactions refuse writes; the schema is not created or
    migrated, and ``transaction()`` is refused."""

    read_only = True

    def transaction(self) -> PostgresTransaction:
        raise RuntimeError(f"{self.path} is open read-only")
