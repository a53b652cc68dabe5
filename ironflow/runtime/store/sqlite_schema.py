"""The SQLite store's schema: opening a database, checking it is ours, migrating it.

Schema changes go through sqlite-utils; the store's statements (``sqlite.py``) are plain
prepared statements on the same connection. Also here: what a SQLite error means for the
database (``unusable``), and the read-only opening the CLI's reading commands use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from typing import Any

import sqlite_utils

from ironflow.errors import StoreError

SCHEMA_VERSION = 4
# Versions whose tables this code can read as they are (v2 changed indexes only; v3 added the
# function registry, the workers' heartbeats and runs.code_version, read as absent before; v4
# added runs.source_run_id, read as absent before, and the indexes that page run listings).
READABLE_VERSIONS = (1, 2, 3, 4)
TERMINAL = ("completed", "failed", "cancelled")

TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
SCHEMA_VERSION_ROW = "SELECT value FROM ironflow_meta WHERE key = 'schema_version'"
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


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


# Listing runs newest first, unfiltered, by status or by function: each a seek on one index.
RUN_LIST_INDEXES = (
    "CREATE INDEX runs_created ON runs (created_us DESC, id)",
    "CREATE INDEX runs_status_created ON runs (status, created_us DESC, id)",
    "CREATE INDEX runs_function_created ON runs (function_id, created_us DESC, id)",
)


# What an engine needs that a read-only database refuses, and what can still read one.
_READ_ONLY_HINT = (
    "an Engine must write to its database (ironflow runs list, show and export can read a "
    "read-only one)"
)


def unusable(path: str, exc: sqlite3.Error) -> StoreError | None:
    """The ``StoreError`` a SQLite error means for the database ``path``: it is not one, is
    damaged, or cannot be written. ``None`` for other errors (busy, a constraint, a bug)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_NOTADB":
        return StoreError(f"{path} is not a SQLite database ({exc})")
    if name.startswith("SQLITE_CORRUPT"):
        return StoreError(f"{path} is a damaged SQLite database ({exc}); restore it from a backup")
    if name == "SQLITE_READONLY_DIRECTORY":
        folder = os.path.dirname(os.path.abspath(path))
        base = os.path.basename(path)
        return StoreError(
            f"cannot write to the database {path}: its directory {folder} is not writable, "
            f"and SQLite must create {base}-wal and {base}-shm there; {_READ_ONLY_HINT}"
        )
    if name.startswith("SQLITE_READONLY"):
        return StoreError(
            f"cannot write to the database {path}: {exc} (a read-only file, -wal/-shm file "
            f"or file system); {_READ_ONLY_HINT}"
        )
    if name == "SQLITE_FULL":
        return StoreError(f"cannot write to the database {path}: {exc}")
    if name.startswith("SQLITE_CANTOPEN"):
        return StoreError(
            f"cannot open the database {path}: {exc} (does its directory exist, and may "
            f"this user create files there?)"
        )
    return None


# SQLITE_BUSY and SQLITE_LOCKED (primary result codes): another connection holds a lock.
_BUSY_CODES = (5, 6)


class SQLiteDatabase:
    """Opening a SQLite database: checked to be ours, configured, migrated (the store's base)."""

    def __init__(self, path: str, *, durability: str = "full", busy_timeout: float = 10.0):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.path = path
        self.durability = durability
        self.lock = threading.RLock()
        if path != ":memory:" and os.path.isfile(path) and not _may_write(path):
            # Refused before SQLite opens it: reading it would leave -wal/-shm files behind
            # that this user cannot write either, and they would trap a later writer.
            raise StoreError(
                f"cannot write to the database {path}: the file is read-only for this user "
                f"(permission denied); {_READ_ONLY_HINT}"
            )
        try:
            self.conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise unusable(path, exc) or StoreError(
                f"cannot open the database {path!r}: {exc}"
            ) from None
        try:
            self._open(busy_timeout)
        except sqlite3.Error as exc:
            self.conn.close()
            raise unusable(path, exc) or StoreError(
                f"cannot use the database {path}: {exc}"
            ) from None
        except BaseException:
            self.conn.close()
            raise

    def _open(self, busy_timeout: float) -> None:
        """Check, configure and migrate the database just connected to."""
        path = self.path
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self.db = sqlite_utils.Database(self.conn)
        self._check_ours()
        # Only now, knowing the file is ours (or new), may its journal mode change.
        if path != ":memory:":
            self.conn.execute("PRAGMA journal_mode = WAL")
            if self.durability == "normal":
                # Checkpoint every ~40 MB of WAL rather than every 4 MB: pages rewritten
                # often (run rows, index roots) are copied once per checkpoint, and commits
                # pay for a checkpoint ten times less often. Not with FULL: there every
                # commit syncs the WAL, and syncing a file that keeps growing costs twice
                # as much as syncing one that is reused from its start.
                self.conn.execute("PRAGMA wal_autocheckpoint = 10000")
        self.conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        self._migrate()
        if path != ":memory:":
            self._check_writable(busy_timeout)

    def _check_writable(self, busy_timeout: float) -> None:
        # A database SQLite can only read (a read-only file system, -wal/-shm files of
        # another user) opens and reads fine: say so now, not at the first start() or in a
        # worker's round. A write that changes nothing, rolled back, asks SQLite itself.
        # Without waiting: while another process holds the write lock the answer is "not
        # known", and opening must not wait for (or fail on) that process's transaction; a
        # read-only database is still refused at its first write (see ``unusable``).
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY_CODES:
                    return
                raise
            try:
                self.conn.execute("DELETE FROM ironflow_meta WHERE 0")
            finally:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # --- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        if "ironflow_meta" not in self.db.table_names():
            return None
        row = self.conn.execute(SCHEMA_VERSION_ROW).fetchone()
        return int(row[0]) if row else None

    def _check_ours(self) -> None:
        tables = set(self.db.table_names())
        version = self.schema_version()
        if version is None and tables:
            raise StoreError(
                f"{self.path} is a SQLite database but not an ironflow one "
                f"(it has tables {sorted(tables)[:5]} and no ironflow_meta)"
            )
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has ironflow schema version {version}, newer than this "
                f"ironflow understands ({SCHEMA_VERSION}); upgrade ironflow"
            )

    def _migrate(self) -> None:
        with self.lock:
            if self.schema_version() == SCHEMA_VERSION:
                return
            with self.transaction():
                # Read again under the write lock: another process may have just migrated.
                version = self.schema_version()
                if version == SCHEMA_VERSION:
                    return
                if version is None:
                    self._create_v1()
                    version = 1
                if version < 2:
                    self._upgrade_to_v2()
                if version < 3:
                    self._upgrade_to_v3()
                self._upgrade_to_v4()
                self.conn.execute(
                    "INSERT OR REPLACE INTO ironflow_meta (key, value) "
                    "VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )

    def _create_v1(self) -> None:
        db = self.db
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
        self.conn.execute(
            "CREATE TABLE history (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "type TEXT NOT NULL, ts_us INTEGER NOT NULL, body TEXT NOT NULL, "
            "PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
        )
        # History is append-only: the database itself refuses updates and deletes.
        self.conn.execute(
            "CREATE TRIGGER history_no_update BEFORE UPDATE ON history "
            "BEGIN SELECT RAISE(ABORT, 'history is append-only'); END"
        )
        self.conn.execute(
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
        db["waits"].create_index(
            ["event_name", "match_path", "match_key"], index_name="waits_match"
        )
        self.conn.execute(
            "CREATE TABLE events (pos INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
            "name TEXT NOT NULL, data TEXT NOT NULL, ts_us INTEGER NOT NULL, "
            "idempotency_key TEXT UNIQUE, started TEXT NOT NULL DEFAULT '[]')"
        )
        db["events"].create_index(["name", "pos"], index_name="events_name")
        db.create_table("consumed", {"run_id": str, "event_id": str}, pk=("run_id", "event_id"))
        self.conn.execute(
            "CREATE TABLE inbox (pos INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
            "type TEXT NOT NULL, ts_us INTEGER NOT NULL, body TEXT NOT NULL)"
        )
        db["inbox"].create_index(["run_id", "pos"], index_name="inbox_run")

    def _upgrade_to_v2(self) -> None:
        # Fewer index pages per started run: listing by function scans (rarely used, cheap),
        # and only child runs are in the parent index.
        self.conn.execute("DROP INDEX IF EXISTS runs_function")
        self.conn.execute("DROP INDEX IF EXISTS runs_parent")
        self.conn.execute(
            "CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL"
        )
        # Taking or renewing a lease must not rewrite an index entry: orphans are found among
        # the active runs, and only a change of status touches this index.
        # Only runs with mail are in the ready index: starting a run or parking one does not
        # write to it.
        self.conn.execute("DROP INDEX IF EXISTS runs_ready")
        self.conn.execute("CREATE INDEX runs_ready ON runs (status) WHERE ready = 1")
        # v1 kept each run's history length in its row; v2 reads it off the history.
        self.conn.execute("ALTER TABLE runs DROP COLUMN next_seq")
        self.conn.execute("DROP INDEX IF EXISTS runs_status_lease")
        self.conn.execute(
            "CREATE INDEX runs_active ON runs (status) WHERE status IN ('pending', 'running')"
        )
        # Keyed tables without a rowid: one b-tree per row written instead of a table and
        # its key index (an emit deletes a wait and a timer and adds a consumed row).
        for table, columns, key, indexes in _WITHOUT_ROWID:
            self.conn.execute(
                f"CREATE TABLE {table}_v2 ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID"
            )
            names = ", ".join(column.split()[0] for column in columns.split(", "))
            self.conn.execute(f"INSERT INTO {table}_v2 ({names}) SELECT {names} FROM {table}")
            self.conn.execute(f"DROP TABLE {table}")
            self.conn.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
            for index in indexes:
                self.conn.execute(index)

    def _upgrade_to_v3(self) -> None:
        # The function registry (issue 11): what register() recorded, so that an emit from a
        # process without the code starts the functions; the latest registration of an id
        # wins. registry_version counts registrations: an emit re-reads the registry only
        # when it moved. Workers' heartbeats say which functions some live worker has.
        self.conn.execute(
            "CREATE TABLE functions (id TEXT PRIMARY KEY, triggers TEXT NOT NULL, "
            "settings TEXT NOT NULL, code_version TEXT NOT NULL, "
            "registered_us INTEGER NOT NULL) WITHOUT ROWID"
        )
        self.conn.execute(
            "CREATE TABLE workers (id TEXT PRIMARY KEY, functions TEXT NOT NULL, "
            "seen_us INTEGER NOT NULL, until_us INTEGER NOT NULL) WITHOUT ROWID"
        )
        self.conn.execute("ALTER TABLE runs ADD COLUMN code_version TEXT")
        self.conn.execute(
            "INSERT OR IGNORE INTO ironflow_meta (key, value) VALUES ('registry_version', '0')"
        )

    def _upgrade_to_v4(self) -> None:
        # The server (issue 14): a rerun or fork links back to the run it came from, and run
        # listings page by (created_us, id) through an index whatever the filter: newest
        # first, a page's cursor a seek, never a scan of the table. The status index is
        # rewritten when a run changes status (a few times per run, not per step).
        self.conn.execute("ALTER TABLE runs ADD COLUMN source_run_id TEXT")
        for statement in RUN_LIST_INDEXES:
            self.conn.execute(statement)

    def transaction(self) -> Any:  # the store's (see sqlite.py)
        raise NotImplementedError


def reraise(path: str, exc: sqlite3.Error) -> None:
    """Raise the ``StoreError`` ``exc`` means (read-only, damaged, full), if it means one.

    Called on error paths only: a database that cannot be used is the caller's
    ``StoreError``, not a raw ``sqlite3`` error deep in a round."""
    found = unusable(path, exc)
    if found is not None:
        raise found from exc


def _may_write(path: str) -> bool:
    """Whether this process may open ``path`` for writing (its effective ids, if it can)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


def rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (some errors end the transaction themselves):
    # a second ROLLBACK would raise and hide the error that got us here.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def connect_readonly(path: str) -> sqlite3.Connection:
    """A connection that cannot write to ``path``.

    Through SQLite's read-only URI (``mode=ro``); when no ``-wal`` or ``-journal`` file sits
    beside the database (nobody has it open, everything is in the main file) with
    ``immutable=1`` too, so that not even the empty ``-wal``/``-shm`` side files a read-only
    WAL reader would leave behind are created. A worker that starts meanwhile writes to a new
    ``-wal`` file, not to the main file, so that snapshot stays consistent.
    """
    full = os.path.abspath(path)
    quiescent = not any(os.path.exists(full + suffix) for suffix in ("-wal", "-journal"))
    query = "mode=ro&immutable=1" if quiescent else "mode=ro"
    uri = f"file:{urllib.parse.quote(full)}?{query}"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def probe(path: str) -> tuple[set[str], str | None]:
    """The tables of the SQLite file ``path`` and its stored ironflow schema version (text,
    ``None`` without one), read without writing anything; ``StoreError`` if unreadable."""
    try:
        conn = connect_readonly(path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from None
    try:
        tables = {row[0] for row in conn.execute(TABLES)}
        if "ironflow_meta" not in tables:
            return tables, None
        row = conn.execute(SCHEMA_VERSION_ROW).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a usable ironflow database: {exc}") from None
    finally:
        conn.close()
    return tables, row[0] if row else None
