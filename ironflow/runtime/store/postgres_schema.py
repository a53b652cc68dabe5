"""The PostgreSQL store's schema: URLs, opening checks, creating the tables, advisory locks.

A ``postgresql://`` (or ``postgres://``) URL is a psycopg 3 connection string: its
``options=-csearch_path=...`` picks the schema the tables live in. The tables are created on
first use, under a transaction-level advisory lock (many workers may start at once); a schema
holding tables of ironflow's names that are not ironflow's, or written by a newer ironflow, is
refused untouched.

**Types.** Times are ``BIGINT`` microseconds since the epoch, as on SQLite (one codec, exact, no
time zone conversion). JSON stays ``TEXT``: the history codec writes compact JSON whose exact text
is the export format, reads bodies back in one ``json.loads``, and never queries inside them
(event matching is done in Python against ``match_key``); ``JSONB`` would parse every row on
insert and re-render it on read, reorder keys, and buy nothing the engine uses. Flags are
``SMALLINT`` 0/1 as on SQLite, so the driver's batch rows fit both stores unchanged.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ironflow.errors import StoreError
from ironflow.runtime.store.flow_sql import FLOW_TABLES, POSTGRES_DDL
from ironflow.runtime.store.postgres_round import (
    LEASE_LOST_STATE,
    ROUND_FUNCTION,
    ROUND_FUNCTION_NAME,
)
from ironflow.runtime.store.sqlite_schema import SCHEMA_VERSION

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql", "postgres")
DURABILITY = ("full", "normal")
INSTALL_HINT = 'pip install "ironflow[postgres]"'
# Advisory lock keys are (class, object) pairs: the class is the schema's hash, so two apps in
# two schemas of one database do not share locks; the objects are the stripes and MIGRATE_LOCK.
STRIPES = 16
MIGRATE_LOCK = STRIPES
TABLES_V2 = ("ironflow_meta", "runs", "history", "timers", "waits", "events", "consumed", "inbox")
TABLES_V3 = (*TABLES_V2, "functions", "workers")
TABLES = (*TABLES_V3, "flow_state", "flow_skips", *FLOW_TABLES)
# The oldest version this store reads and migrates (it started at the SQLite store's 2).
OLDEST_VERSION = 2
FUNCTIONS = ("ironflow_fence", "ironflow_append_only", ROUND_FUNCTION_NAME)
# 'queued': held back by a flow-control limit (``flow_sql``); not drivable until admitted.
NOT_ENDED = "('completed', 'failed', 'cancelled', 'blocked', 'queued')"


def is_postgres_url(store: object) -> bool:
    return isinstance(store, str) and store.split("://", 1)[0].lower() in SCHEMES


def redact(url: str) -> str:
    """``url`` without its password (in the netloc or as a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        hidden = [(key, "***" if key == "password" else value) for key, value in pairs]
        query = urlencode(hidden, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def stripe(name: str) -> int:
    """The advisory lock stripe of event ``name`` (crc32: the same on every host and run)."""
    return zlib.crc32(name.encode()) % STRIPES


def lock_class(schema: str) -> int:
    """The advisory lock class of ``schema``: a signed 32-bit hash of its name."""
    value = zlib.crc32(schema.encode())
    return value - 2**32 if value >= 2**31 else value


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- schema ---------------------------------------------------------------------------------------

# One statement per object, in creation order. Why each index exists:
# - runs_ready: claiming runs flagged ready (a resumed run);
# - runs_active: claiming pending runs and those orphaned by a dead worker (expired lease);
# - runs_leased: a stopping worker releases its leases without scanning every run;
# - runs_parent: a parent's children (cancel, the child's end), only child runs in it;
# - timers_due: the next due timers in due order; waits_match: an emit finds its waits;
# - events_name: a wait finds the events of its name after its run's cut, in pos order;
# - inbox_run: a run's mail in pos order (and which runs have mail: see postgres.py).
# Lease renewal writes only lease_until_us, which no index holds: it stays a HOT update.
SCHEMA = (
    "CREATE TABLE ironflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE runs (id TEXT PRIMARY KEY, function_id TEXT NOT NULL, status TEXT NOT NULL, "
    "parent_run_id TEXT, parent_step_id TEXT, notify_parent SMALLINT, trigger TEXT, "
    "output TEXT, error TEXT, created_us BIGINT NOT NULL, updated_us BIGINT, ended_us BIGINT, "
    "ready SMALLINT NOT NULL DEFAULT 0, lease_owner TEXT, lease_until_us BIGINT, "
    "event_pos BIGINT)",
    "CREATE INDEX runs_ready ON runs (function_id) WHERE ready = 1",
    "CREATE INDEX runs_active ON runs (function_id) WHERE status IN ('pending', 'running')",
    "CREATE INDEX runs_leased ON runs (lease_owner) WHERE lease_owner IS NOT NULL",
    "CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL",
    "CREATE INDEX runs_created ON runs (created_us DESC, id)",
    "CREATE TABLE history (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, "
    "ts_us BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (run_id, seq))",
    # History is append-only: the database itself refuses updates, deletes and truncation.
    "CREATE FUNCTION ironflow_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'history is append-only'; END $$",
    "CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON history "
    "FOR EACH STATEMENT EXECUTE FUNCTION ironflow_append_only()",
    "CREATE TABLE timers (run_id TEXT NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL, "
    "due_us BIGINT NOT NULL, attempt INTEGER, PRIMARY KEY (run_id, step_id))",
    "CREATE INDEX timers_due ON timers (due_us)",
    "CREATE TABLE waits (run_id TEXT NOT NULL, step_id TEXT NOT NULL, event_name TEXT NOT NULL, "
    "match_path TEXT, match_key TEXT, seq INTEGER NOT NULL, PRIMARY KEY (run_id, step_id))",
    "CREATE INDEX waits_match ON waits (event_name, match_path, match_key)",
    # CACHE 1: a session must not hold a block of positions, or pos order would not be the
    # order in which the event locks were taken (see postgres.py).
    "CREATE TABLE events (pos BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY, "
    "id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, data TEXT NOT NULL, ts_us BIGINT NOT NULL, "
    "idempotency_key TEXT UNIQUE, started TEXT NOT NULL DEFAULT '[]')",
    "CREATE INDEX events_name ON events (name, pos)",
    "CREATE TABLE consumed (run_id TEXT NOT NULL, event_id TEXT NOT NULL, "
    "PRIMARY KEY (run_id, event_id))",
    "CREATE TABLE inbox (pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "run_id TEXT NOT NULL, type TEXT NOT NULL, ts_us BIGINT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX inbox_run ON inbox (run_id, pos)",
    # The lease fence: locks the round's runs (a claim skips them, a takeover waits) and
    # raises LEASE_LOST_STATE unless this worker holds every one of them.
    "CREATE FUNCTION ironflow_fence(owner TEXT, ids TEXT[]) RETURNS void LANGUAGE plpgsql AS $$ "
    "DECLARE held TEXT[]; BEGIN "
    "SELECT coalesce(array_agg(r.id), '{}') INTO held FROM (SELECT id FROM runs "
    "WHERE id = ANY(ids) AND lease_owner = owner ORDER BY id FOR NO KEY UPDATE) AS r; "
    "IF cardinality(held) <> cardinality(ids) THEN RAISE EXCEPTION USING "
    f"ERRCODE = '{LEASE_LOST_STATE}', "
    "MESSAGE = format('lease lost: %s of %s runs still held by %s', "
    "cardinality(held), cardinality(ids), owner), "
    "DETAIL = array_to_string(ARRAY(SELECT unnest(ids) EXCEPT SELECT unnest(held) "
    "ORDER BY 1), ' '); END IF; END $$",
)

# Version 3: the function registry (register() records id, triggers, settings and code
# version; the latest wins), the workers' heartbeats, and the code version that drove each run.
UPGRADE_V3 = (
    "CREATE TABLE functions (id TEXT PRIMARY KEY, triggers TEXT NOT NULL, "
    "settings TEXT NOT NULL, code_version TEXT NOT NULL, registered_us BIGINT NOT NULL)",
    "CREATE TABLE workers (id TEXT PRIMARY KEY, functions TEXT NOT NULL, "
    "seen_us BIGINT NOT NULL, until_us BIGINT NOT NULL)",
    "ALTER TABLE runs ADD COLUMN code_version TEXT",
    "INSERT INTO ironflow_meta (key, value) VALUES ('registry_version', '0') "
    "ON CONFLICT (key) DO NOTHING",
)

# Version 5: a rerun or fork links back to its source run; run listings by status or function
# page through an index (runs_created, from version 2, serves the unfiltered one).
UPGRADE_V5 = (
    "ALTER TABLE runs ADD COLUMN source_run_id TEXT",
    "CREATE INDEX runs_status_created ON runs (status, created_us DESC, id)",
    "CREATE INDEX runs_function_created ON runs (function_id, created_us DESC, id)",
)

# Version 6: the emitter's W3C traceparent stored with each event (a run flow control starts
# later joins the emitter's trace), and an index finding the runs that consumed an event (the
# events page; the key leads with the run id).
UPGRADE_V6 = (
    "ALTER TABLE events ADD COLUMN traceparent TEXT",
    "CREATE INDEX consumed_event ON consumed (event_id, run_id)",
)

SELECT_OURS = (
    "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
    "AND relkind IN ('r', 'p', 'v', 'm', 'f') AND relname = ANY(%s) ORDER BY relname"
)
SELECT_VERSION = "SELECT value FROM ironflow_meta WHERE key = 'schema_version'"
SELECT_META_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = 'ironflow_meta'::regclass "
    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
)
LOCK_MIGRATE = "SELECT pg_advisory_xact_lock(%s, %s)"
HAS_FUNCTION = (
    "SELECT 1 FROM pg_proc WHERE pronamespace = current_schema()::regnamespace AND proname = %s"
)
INSERT_VERSION = (
    "INSERT INTO ironflow_meta (key, value) VALUES ('schema_version', %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of the connection's schema, ``None`` if it holds no ironflow tables.

    ``StoreError`` if the tables found are not ironflow's, or from a newer ironflow."""
    found = [row[0] for row in conn.execute(SELECT_OURS, (list(TABLES),)).fetchall()]
    if not found:
        return None
    if "ironflow_meta" not in found:
        raise StoreError(
            f"schema {_schema(conn)!r} holds tables named like ironflow's ({', '.join(found)}) "
            f"but no ironflow_meta: they are not ironflow's; point ironflow at another schema "
            f"(?options=-csearch_path%3Dmyapp)"
        )
    columns = [row[0] for row in conn.execute(SELECT_META_COLUMNS).fetchall()]
    row = conn.execute(SELECT_VERSION).fetchone() if columns == ["key", "value"] else None
    try:
        version = int(row[0]) if row is not None else None
    except ValueError:
        version = None
    if version is None:
        raise StoreError(
            f"schema {_schema(conn)!r} has an ironflow_meta table that is not ironflow's "
            f"(no schema_version in it); point ironflow at another schema"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema {_schema(conn)!r} has ironflow schema version {version}, newer than this "
            f"ironflow understands ({SCHEMA_VERSION}); upgrade ironflow"
        )
    expected = TABLES if version >= 4 else TABLES_V3 if version >= 3 else TABLES_V2
    missing = sorted(set(expected) - set(found))
    if version < OLDEST_VERSION or missing:
        # The PostgreSQL store started at the SQLite store's version 2: nothing older exists.
        raise StoreError(
            f"schema {_schema(conn)!r} has ironflow schema version {version}"
            + (f" without tables {', '.join(missing)}" if missing else "")
            + f"; this ironflow writes version {SCHEMA_VERSION} and cannot use it"
        )
    return version


def migrate(conn: psycopg.Connection[Any], lock_class: int, url: str) -> None:
    """Create the schema if the connection's schema has none, or migrate an older one; refuse
    a foreign or newer one. Install this version's round function where it is missing.

    Many workers may start at once: the creation runs under a transaction-level advisory lock,
    and whoever gets it second finds the tables made and leaves them alone."""
    if schema_version(conn) == SCHEMA_VERSION and _has_round(conn):
        return
    with conn.transaction():
        conn.execute(LOCK_MIGRATE, (lock_class, MIGRATE_LOCK))
        version = schema_version(conn)
        if version != SCHEMA_VERSION:
            statements: tuple[str, ...] = ()
            if version is None:
                statements += SCHEMA
            if version is None or version < 3:
                statements += UPGRADE_V3
            if version is None or version < 4:
                statements += POSTGRES_DDL  # v4: flow control (issue 13): start gates
                # Version 4: the flow-control tables (kept with their statements; imported
                # here, as that module needs this one's stripes).
                from ironflow.runtime.store.postgres_flow_events import UPGRADE_V4

                statements += UPGRADE_V4
            if version is None or version < 5:
                statements += UPGRADE_V5  # v5: the server (issue 14)
            statements += UPGRADE_V6  # v6: events' trace context, their consumers (14, 15)
            for statement in statements:
                conn.execute(statement)
            conn.execute(INSERT_VERSION, (str(SCHEMA_VERSION),))
        if not _has_round(conn):
            # A function, not a table: a schema of this version written by an ironflow from
            # before it gets it on first open (older ironflows ignore it).
            conn.execute(ROUND_FUNCTION)


def _has_round(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute(HAS_FUNCTION, (ROUND_FUNCTION_NAME,)).fetchone() is not None


def _schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row else "?"
