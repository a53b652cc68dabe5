"""The PostgreSQL store's write transaction: its statements, named, then the verbs that run them.

Same semantics as ``sqlite_tx``, verb by verb; what differs is how concurrent writers are kept
apart (SQLite has one writer at a time, PostgreSQL many):

- ``take_runs`` skips runs another transaction holds (``FOR UPDATE SKIP LOCKED``);
- ``commit_round`` is one call of the schema's round function, the lease fence first (see
  ``postgres_round``), sent alone in autocommit when the transaction has nothing else to do
  (``postgres_commit``);
- events, run creation and wait registration take the advisory stripes (``postgres_locks``);
- a wait is claimed by deleting its row (``DELETE ... RETURNING``): an emit delivers to it, or
  a round fires its timeout (``take_timers``), never both;
- a transaction that leaves work for other workers (runs created, events recorded, mail sent,
  a run resumed) sends one NOTIFY before it commits, at most one (``wakes``), naming the runs
  it left work for (``targets``); a step commit sends none (see ``postgres_listen``);
- mail does not touch the run's row (which the run's round may hold): a run has mail iff it
  has inbox rows, and discovery looks there. A round reads its runs' mail in its take
  (``mail_of``) and deletes what it read in its commit (``drop_mail``): mail sent in between
  stays, and discovery finds it.

Arrays carry the rows (``unnest``): one statement per verb, not one per row.
"""

from __future__ import annotations

from typing import Any

from ironflow.commands import kinds
from ironflow.history.events import HistoryEvent
from ironflow.runtime.store import rows
from ironflow.runtime.store.base import StoreError
from ironflow.runtime.store.flow_sql import FlowVerbs, statements
from ironflow.runtime.store.postgres_commit import PostgresCommit
from ironflow.runtime.store.postgres_emit import PostgresEmit
from ironflow.runtime.store.postgres_flow_events import PostgresFlowStateStatements
from ironflow.runtime.store.postgres_locks import ALL_STRIPES
from ironflow.runtime.store.postgres_round import CLEAR_READY, INSERT_HISTORY, columns
from ironflow.runtime.store.postgres_schema import NOT_ENDED, STRIPES, stripe

FLOW_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
FLOW_LOCK_KEY = STRIPES + 1  # beside the stripes (0..STRIPES-1) and the migration's (STRIPES)

_TERMINAL = "('completed', 'failed', 'cancelled')"

# A round's take (``PostgresStore.take_transaction``) is begun with this, in the same round
# trip. ``TAKE_RUNS`` and ``HISTORIES`` are prepared there and always run their generic plan
# (a custom plan of ``TAKE_RUNS`` cost the server about 0.4 ms per take to plan, and the plan
# cache kept making custom ones). Sequential scans are off for it: a generic plan made while
# the tables were tiny, seq scans allowed, would read them whole at every take as they grow
# (rows read grew with the square of the runs); every statement of a take finds its rows by a
# key. Its commit need not wait for the disk: the round's commit, next, takes it there (a crash
# in between loses leases only, taken again). In any other transaction the two are sent
# unprepared, planned each time.
TAKE_SETUP = (
    "; SELECT set_config('enable_seqscan', 'off', true), "
    "set_config('plan_cache_mode', 'force_generic_plan', true), "
    "set_config('synchronous_commit', 'off', true)"
)

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
LINK_RUN = "UPDATE runs SET source_run_id = %s WHERE id = %s"
RESUME_FAILED = (
    "UPDATE runs SET status = 'running', error = NULL, ended_us = NULL, ready = 1, "
    "lease_owner = NULL, lease_until_us = NULL, updated_us = %s WHERE id = %s"
)

# Leases: a take locks the rows it takes and skips free rows another transaction holds, so two
# workers never wait for each other over a run. The WHERE is checked again on the newest row
# version when the lock is taken (READ COMMITTED): a run taken meanwhile is not taken twice.
# A row its claim already took for this worker (``CLAIM_RUNS``: leased here, running, this
# code version) is only read (``kept``): written once, by the claim. The lease fence at the
# commit guards it as any other. Other rows leased to this worker already are waited for, never
# skipped: a concurrent claim that looked at one and found it leased may hold its lock for a
# moment (a lock taken before that check stays until its statement ends), and no one else
# takes it. They are locked first, and a skipping take never waits: no cycle. Pending is
# running from here.
# Runs are found by id (the primary key) only: the other conditions are one ``IS TRUE`` test,
# which no index serves. Unanalyzed, the planner guesses a function's or an owner's runs are few
# and reads them all through the function_id or lease_owner index, every take (rows read grew
# with the square of the runs). ``IS TRUE`` is false for NULL, as WHERE takes it.
_TAKEN = (
    "id = ANY(%(ids)s::text[]) AND (function_id = ANY(%(fids)s::text[]) "
    f"AND status NOT IN {NOT_ENDED}"
)
_TAKEN_COLUMNS = (
    "id, function_id, event_pos, parent_run_id, parent_step_id, notify_parent, status, trigger"
)
# This worker's code version of the row's function (unnest pads the shorter array with NULLs).
_VERSION = (
    "(SELECT u.v FROM unnest(%(fids)s::text[], %(versions)s::text[]) AS u(f, v) "
    "WHERE u.f = runs.function_id)"
)
TAKE_RUNS = (
    f"WITH kept AS (SELECT {_TAKEN_COLUMNS} FROM runs WHERE {_TAKEN} "
    "AND lease_owner = %(owner)s AND status = 'running' AND lease_until_us >= %(now)s "
    "AND id <> ALL(%(mail)s::text[]) "
    f"AND code_version IS NOT DISTINCT FROM coalesce({_VERSION}, code_version)) IS TRUE), "
    f"mine AS (SELECT id FROM runs WHERE {_TAKEN} AND lease_owner = %(owner)s "
    "AND id NOT IN (SELECT id FROM kept)) IS TRUE FOR UPDATE), "
    f"free AS (SELECT id FROM runs WHERE {_TAKEN} AND lease_owner IS DISTINCT FROM %(owner)s "
    "AND (lease_owner IS NULL OR lease_until_us < %(now)s)) IS TRUE FOR UPDATE SKIP LOCKED), "
    "taken AS (UPDATE runs SET lease_owner = %(owner)s, lease_until_us = %(until)s, "
    f"code_version = coalesce({_VERSION}, code_version), "
    "ready = CASE WHEN id = ANY(%(mail)s::text[]) THEN 0 ELSE ready END, "
    "status = CASE status WHEN 'pending' THEN 'running' ELSE status END "
    "WHERE id IN (SELECT id FROM mine UNION ALL SELECT id FROM free) "
    f"RETURNING {_TAKEN_COLUMNS}) "
    "SELECT * FROM taken UNION ALL SELECT * FROM kept"
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
TAKE_MAIL = "DELETE FROM inbox WHERE run_id = ANY(%s::text[]) RETURNING pos, run_id, type, body"
MAIL_OF = "SELECT pos, run_id, type, body FROM inbox WHERE run_id = ANY(%s::text[]) ORDER BY pos"

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
EVENT_ID_OF_KEY = "SELECT id FROM events WHERE idempotency_key = %s"
SET_EVENT_STARTED = "UPDATE events SET started = %s WHERE pos = %s"
UNCONSUMED_EVENTS = (
    "SELECT id, data, ts_us FROM events WHERE name = %s AND pos > %s AND id NOT IN "
    "(SELECT event_id FROM consumed WHERE run_id = %s) ORDER BY pos"
)


class PostgresTransaction(PostgresEmit, PostgresFlowStateStatements, FlowVerbs, PostgresCommit):
    """A store's write transaction: the verbs, on this store's statements (how it begins and
    commits: ``PostgresCommit``)."""

    __slots__ = ("seen_paths", "seen_version")  # see ``PostgresEmit``

    FLOW = statements("%s")

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        # What an emit read with its row or its wait paths, for its next reads (``wait_paths``,
        # ``registry_version``): the event's name and its waits' paths; the registry's version
        # (in a box).
        self.seen_paths: tuple[str, list[str | None]] | None = None
        self.seen_version: tuple[str | None] | None = None

    def flow_lock(self, function_id: str, key: str) -> None:
        # One advisory lock for every flow-control decision in this schema, held to the end
        # of the transaction (taking it again is free): a count and the admission it guards
        # are one decision across all workers, and READ COMMITTED re-reads the count once the
        # lock is granted (row locks cannot stop a phantom insert into a count). One lock, not
        # one per function and key: a round may free slots of several keys and create runs of
        # several functions in one commit, in no fixed order, and per-key locks taken so would
        # deadlock two such rounds; each decision is a few index reads, so waits are short.
        self.conn.execute(FLOW_LOCK, (self.store.lock_class, FLOW_LOCK_KEY))

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

    # --- a round --------------------------------------------------------------------------

    def _prepare(self) -> bool | None:
        """How to send ``TAKE_RUNS`` and ``HISTORIES`` (see ``TAKE_SETUP``): by psycopg's
        default (prepared from the sixth time) in a take, unprepared anywhere else."""
        return None if self.setup is TAKE_SETUP else False

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
        return self.conn.execute(TAKE_RUNS, params, prepare=self._prepare()).fetchall()

    def histories(
        self, run_ids: list[str], corrupt: dict[str, StoreError] | None = None
    ) -> dict[str, list[HistoryEvent]]:
        with rows.gc_paused():  # over the fetch too: its rows are many objects at once
            found = self.conn.execute(HISTORIES, (run_ids,), prepare=self._prepare()).fetchall()
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
        if self.tx is None and self.conn is not self.store.conn:  # nothing sent yet
            self.mail = (positions, run_ids)  # held back for the round's plain statement
            return
        self.send_mail_drop(self.conn, (positions, run_ids))

    def take_timers(self, keys: list[tuple[str, str, str]], now_us: int) -> set[tuple[str, str]]:
        waits = [(run_id, step_id) for run_id, step_id, kind in keys if kind == kinds.TIMER_WAIT]
        lost: set[tuple[str, str]] = set()
        if waits:
            claimed = {tuple(row) for row in self.conn.execute(CLAIM_WAITS, columns(waits))}
            lost = {key for key in waits if key not in claimed}
        wanted = [(run_id, step_id) for run_id, step_id, _ in keys if (run_id, step_id) not in lost]
        if not wanted:
            return set()
        found = self.conn.execute(CLAIM_TIMERS, (*columns(wanted), now_us)).fetchall()
        return {(row[0], row[1]) for row in found}

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
        self.lock(shared=ALL_STRIPES)
        self.wakes = True
        self.targets.append(run_id)
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
        self.targets.append(run_id)
        super().resume_blocked(run_id, now_us)

    def resume_failed(self, run_id: str, now_us: int) -> None:
        self.wakes = True
        self.targets.append(run_id)
        super().resume_failed(run_id, now_us)

    # --- the function registry ------------------------------------------------------------

    def registered(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self.conn.execute(REGISTERED).fetchall()]

    # --- mail, events and waits -----------------------------------------------------------

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
