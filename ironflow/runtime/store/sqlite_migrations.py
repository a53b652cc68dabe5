"""The SQLite schema's versions: v1 created, then each upgrade, run in order by
``SQLiteDatabase._migrate`` (``sqlite_schema``) in one transaction.
"""

from __future__ import annotations

import sqlite3

import sqlite_utils

# (table, columns in v1 order, primary key, indexes) of the tables v2 rebuilds.
_WITHOUT_ROWID = (
    (
        "timers",
        "run_id TEXT NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL, "
        "due_us INTEGER NOT NULL, attempt INTEGER",
        "run_id, step_id",
        ("CREATE INDEX timers_due ON timers (due_us)",),
    ),
    (
        "waits",
        "run_id TEXT NOT NULL, step_id TEXT NOT NULL, event_name TEXT NOT NULL, "
        "match_path TEXT, match_key TEXT, seq INTEGER NOT NULL",
        "run_id, step_id",
        ("CREATE INDEX waits_match ON waits (event_name, match_path, match_key)",),
    ),
    ("consumed", "run_id TEXT NOT NULL, event_id TEXT NOT NULL", "run_id, event_id", ()),
)


# The events page (issue 14) reads which runs consumed each listed event: a seek by event id,
# not a scan of every consumed row (the key leads with the run id).
CONSUMED_BY_EVENT = "CREATE INDEX consumed_event ON consumed (event_id, run_id)"

# Listing runs newest first, unfiltered, by status or by function: each a seek on one index.
RUN_LIST_INDEXES = (
    "CREATE INDEX runs_created ON runs (created_us DESC, id)",
    "CREATE INDEX runs_status_created ON runs (status, created_us DESC, id)",
    "CREATE INDEX runs_function_created ON runs (function_id, created_us DESC, id)",
)


def create_v1(conn: sqlite3.Connection, db: sqlite_utils.Database) -> None:
    """The tables of schema v1, in an empty database."""
    db.create_table("ironflow_meta", {"key": str, "value": str}, pk="key")
    db.create_table(
        "runs",
        {
            "id": str,
            "function_id": str,
            "status": str,
            "parent_run_id": str,
            "parent_step_id": str,
            "notify_parent": int,
            "trigger": str,
            "output": str,
            "error": str,
            "created_us": int,
            "updated_us": int,
            "ended_us": int,
            "next_seq": int,
            "ready": int,
            "lease_owner": str,
            "lease_until_us": int,
            "event_pos": int,
        },
        pk="id",
        not_null={"function_id", "status", "next_seq", "ready", "created_us"},
    )
    db["runs"].create_index(["ready", "status"], index_name="runs_ready")
    db["runs"].create_index(["status", "lease_until_us"], index_name="runs_status_lease")
    db["runs"].create_index(["function_id", "status"], index_name="runs_function")
    db["runs"].create_index(["parent_run_id"], index_name="runs_parent")
    conn.execute(
        "CREATE TABLE history (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        "type TEXT NOT NULL, ts_us INTEGER NOT NULL, body TEXT NOT NULL, "
        "PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
    )
    # History is append-only: the database itself refuses updates and deletes.
    conn.execute(
        "CREATE TRIGGER history_no_update BEFORE UPDATE ON history "
        "BEGIN SELECT RAISE(ABORT, 'history is append-only'); END"
    )
    conn.execute(
        "CREATE TRIGGER history_no_delete BEFORE DELETE ON history "
        "BEGIN SELECT RAISE(ABORT, 'history is append-only'); END"
    )
    db.create_table(
        "timers",
        {"run_id": str, "step_id": str, "kind": str, "due_us": int, "attempt": int},
        pk=("run_id", "step_id"),
        not_null={"kind", "due_us"},
    )
    db["timers"].create_index(["due_us"], index_name="timers_due")
    db.create_table(
        "waits",
        {
            "run_id": str,
            "step_id": str,
            "event_name": str,
            "match_path": str,
            "match_key": str,
            "seq": int,
        },
        pk=("run_id", "step_id"),
        not_null={"event_name", "seq"},
    )
    db["waits"].create_index(["event_name", "match_path", "match_key"], index_name="waits_match")
    conn.execute(
        "CREATE TABLE events (pos INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "name TEXT NOT NULL, data TEXT NOT NULL, ts_us INTEGER NOT NULL, "
        "idempotency_key TEXT UNIQUE, started TEXT NOT NULL DEFAULT '[]')"
    )
    db["events"].create_index(["name", "pos"], index_name="events_name")
    db.create_table("consumed", {"run_id": str, "event_id": str}, pk=("run_id", "event_id"))
    conn.execute(
        "CREATE TABLE inbox (pos INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
        "type TEXT NOT NULL, ts_us INTEGER NOT NULL, body TEXT NOT NULL)"
    )
    db["inbox"].create_index(["run_id", "pos"], index_name="inbox_run")


def upgrade_to_v2(conn: sqlite3.Connection) -> None:
    """v1 to v2: leaner indexes, keyed tables without a rowid, no ``runs.next_seq``."""
    # Fewer index pages per started run: listing by function scans (rarely used, cheap),
    # and only child runs are in the parent index.
    conn.execute("DROP INDEX IF EXISTS runs_function")
    conn.execute("DROP INDEX IF EXISTS runs_parent")
    conn.execute("CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL")
    # Taking or renewing a lease must not rewrite an index entry: orphans are found among
    # the active runs, and only a change of status touches this index.
    # Only runs with mail are in the ready index: starting a run or parking one does not
    # write to it.
    conn.execute("DROP INDEX IF EXISTS runs_ready")
    conn.execute("CREATE INDEX runs_ready ON runs (status) WHERE ready = 1")
    # v1 kept each run's history length in its row; v2 reads it off the history.
    conn.execute("ALTER TABLE runs DROP COLUMN next_seq")
    conn.execute("DROP INDEX IF EXISTS runs_status_lease")
    conn.execute("CREATE INDEX runs_active ON runs (status) WHERE status IN ('pending', 'running')")
    # Keyed tables without a rowid: one b-tree per row written instead of a table and
    # its key index (an emit deletes a wait and a timer and adds a consumed row).
    for table, columns, key, indexes in _WITHOUT_ROWID:
        conn.execute(f"CREATE TABLE {table}_v2 ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID")
        names = ", ".join(column.split()[0] for column in columns.split(", "))
        conn.execute(f"INSERT INTO {table}_v2 ({names}) SELECT {names} FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
        for index in indexes:
            conn.execute(index)


def upgrade_to_v3(conn: sqlite3.Connection) -> None:
    """v2 to v3: the function registry, the workers' heartbeats, ``runs.code_version``."""
    # The function registry (issue 11): what register() recorded, so that an emit from a
    # process without the code starts the functions; the latest registration of an id
    # wins. registry_version counts registrations: an emit re-reads the registry only
    # when it moved. Workers' heartbeats say which functions some live worker has.
    conn.execute(
        "CREATE TABLE functions (id TEXT PRIMARY KEY, triggers TEXT NOT NULL, "
        "settings TEXT NOT NULL, code_version TEXT NOT NULL, "
        "registered_us INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE workers (id TEXT PRIMARY KEY, functions TEXT NOT NULL, "
        "seen_us INTEGER NOT NULL, until_us INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute("ALTER TABLE runs ADD COLUMN code_version TEXT")
    conn.execute(
        "INSERT OR IGNORE INTO ironflow_meta (key, value) VALUES ('registry_version', '0')"
    )


def upgrade_to_v5(conn: sqlite3.Connection) -> None:
    """v4 to v5: ``runs.source_run_id`` and the indexes that page run listings."""
    # The server (issue 14): a rerun or fork links back to the run it came from, and run
    # listings page by (created_us, id) through an index whatever the filter: newest
    # first, a page's cursor a seek, never a scan of the table. The status index is
    # rewritten when a run changes status (a few times per run, not per step).
    conn.execute("ALTER TABLE runs ADD COLUMN source_run_id TEXT")
    for statement in RUN_LIST_INDEXES:
        conn.execute(statement)


def upgrade_to_v6(conn: sqlite3.Connection) -> None:
    """v5 to v6: ``events.traceparent`` and the index that finds an event's consumers."""
    # Observability (issue 15): the W3C traceparent of the emitter's span, stored with the
    # event, so that a run flow control starts later (debounce, batch, an arrival deferred
    # to a worker with the code) joins the emitter's trace. NULL: none (tracing off).
    conn.execute("ALTER TABLE events ADD COLUMN traceparent TEXT")
    conn.execute(CONSUMED_BY_EVENT)
