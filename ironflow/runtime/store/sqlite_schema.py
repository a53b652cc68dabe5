"""The SQLite store's schema: opening a database, checking it is ours, migrating it (each
version's steps are in ``sqlite_migrations``).

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
from ironflow.runtime.store import sqlite_migrations
from ironflow.runtime.store.flow_sql import SQLITE_DDL
from ironflow.runtime.store.sqlite_flow_events import upgrade_to_v4

SCHEMA_VERSION = 6
# Versions whose tables this code can read as they are (v2 changed indexes only; v3 added the
# function registry, the workers' heartbeats and runs.code_version, read as absent before;
# v4 the flow-control tables (``flow_sql``, ``sqlite_flow_events``), read as empty before; v5
# added runs.source_run_id, read as absent before, and the indexes that page run listings; v6
# events.traceparent, which no read needs, and the index finding an event's consumers).
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
TERMINAL = ("completed", "failed", "cancelled")

TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
SCHEMA_VERSION_ROW = "SELECT value FROM ironflow_meta WHERE key = 'schema_version'"
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


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
                    sqlite_migrations.create_v1(self.conn, self.db)
                    version = 1
                if version < 2:
                    sqlite_migrations.upgrade_to_v2(self.conn)
                if version < 3:
                    sqlite_migrations.upgrade_to_v3(self.conn)
                if version < 4:
                    for statement in SQLITE_DDL:  # v4: flow control (issue 13)
                        self.conn.execute(statement)
                    upgrade_to_v4(self.conn)
                if version < 5:
                    sqlite_migrations.upgrade_to_v5(self.conn)  # v5: the server (issue 14)
                sqlite_migrations.upgrade_to_v6(self.conn)  # v6: events' trace, consumers
                self.conn.execute(
                    "INSERT OR REPLACE INTO ironflow_meta (key, value) "
                    "VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )

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
