"""The PostgreSQL store's session: its one connection, opened, replaced when the server closed
it, and the driver's errors turned into the store's.

**Connections.** A ``PostgresStore`` holds one connection, used under ``lock`` as the SQLite store
uses its one: the engine drives one round at a time, so a pool would only add connections
contending for the same rows; one the server closed is replaced at its next use
(``connection``). A serving worker's wake-up listener (``listen``, see ``postgres_listen``) adds
one more, idle: a worker holds two, ten workers twenty of the default 100 (``max_connections``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ironflow.runtime.store.base import StoreError, StoreUnavailable
from ironflow.runtime.store.postgres_schema import first_line

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("ironflow.engine")
T = TypeVar("T")


class Begun:
    """A transaction begun by a plain ``BEGIN`` (``PostgresSession.begin``): not psycopg's
    ``transaction()``, which sends its ``BEGIN`` alone, a round trip of its own. Ended by
    ``COMMIT``, or ``ROLLBACK`` if it failed (``end``)."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    # BEGIN, COMMIT and ROLLBACK are sent unprepared (``prepare=False``): psycopg would prepare
    # the bare ones after five uses, each a prepared statement a pooler has to track.

    def end(self, failed: bool, before_commit: str = "") -> None:
        """``COMMIT``, after ``before_commit`` (statements without parameters, each ending in
        ``;``) in the same round trip; or ``ROLLBACK`` if ``failed`` (quietly: the failure
        is what is raised)."""
        import psycopg

        if failed:
            rollback(self.conn)
            return
        try:
            self.conn.execute(before_commit + "COMMIT", prepare=False)
        except psycopg.Error:
            rollback(self.conn)  # a statement before COMMIT failed: the transaction is aborted
            raise


def rollback(conn: psycopg.Connection[Any]) -> None:
    """``ROLLBACK`` if a transaction is open, quietly: a session that cannot is closed (and
    replaced at its next use)."""
    import psycopg

    if conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK", prepare=False)
    except psycopg.Error:
        conn.close()


class PostgresSession:
    """The connection of a ``PostgresStore``, used under ``lock``: what the store and its
    transactions send statements on."""

    url: str
    _dsn: str
    _connect_timeout: float
    durability: str
    read_only: bool
    lock: threading.RLock
    outage: bool
    conn: psycopg.Connection[Any]
    # The round's cursor and the connection it belongs to (``cursor``).
    _cursor: psycopg.Cursor[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        """A new session, set up as every session of this store is."""
        import psycopg

        conn = psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
        )
        try:
            if self.durability == "normal":
                # A crash may lose the last commits (never corrupt): as SQLite's NORMAL.
                conn.execute("SET synchronous_commit = off")
            if self.read_only:
                # Every transaction of this session refuses writes: reads only, by construction.
                conn.execute("SET default_transaction_read_only = on")
        except BaseException:
            conn.close()
            raise
        return conn

    # --- the connection lost and found again (under ``lock``) ------------------------------

    def connection(self) -> psycopg.Connection[Any]:
        """The session, replaced first if the server closed it (a restart, a terminated
        backend, a proxy's timeout); ``StoreUnavailable`` if no new one can be opened now.
        What was under way when it closed failed whole, with ``StoreUnavailable``."""
        conn = self.conn
        if not conn.broken:
            return conn
        import psycopg

        try:
            fresh = self._connect()
        except psycopg.Error as exc:
            self._lost(exc)
            raise StoreUnavailable(
                f"cannot reach the PostgreSQL database {self.url}: {first_line(exc)}"
            ) from None
        conn.close()
        self.conn = fresh
        if self.outage:
            self.outage = False
            log.info("connected to the PostgreSQL database %s again", self.url)
        return fresh

    def begin(self, setup: str = "") -> tuple[psycopg.Connection[Any], Begun]:
        """``BEGIN`` on the session, with ``setup`` (statements without parameters, each
        after a ``;``) in the same round trip: the connection and its transaction. A session
        found closed by its ``BEGIN`` is replaced and ``BEGIN`` sent again (nothing ran yet)."""
        import psycopg

        begin = "BEGIN" + setup
        conn = self.connection()
        try:
            conn.execute(begin, prepare=False)
        except psycopg.Error as exc:
            if not conn.broken:
                rollback(conn)  # the setup failed after BEGIN: not left open, aborted
                raise
            self._lost(exc)
            conn = self.connection()
            try:
                conn.execute(begin, prepare=False)
            except psycopg.Error:
                rollback(conn)
                raise
        return conn, Begun(conn)

    def _lost(self, exc: BaseException) -> None:
        """One WARNING per outage: the first failure says so, later ones are quiet until a
        session is open again (``connection``)."""
        if not self.outage:
            self.outage = True
            log.warning(
                "lost the connection to the PostgreSQL database %s (%s); what was under way "
                "failed whole, nothing of it written; connecting again at the next use",
                self.url,
                first_line(exc),
            )

    def reraise(self, exc: BaseException) -> None:
        """Raise the ``StoreError`` a driver error means (the server gone, a read-only
        database), if it means one."""
        import psycopg

        if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
            raise StoreError(f"cannot write to the database {self.url}: it is open read-only")
        if not isinstance(exc, psycopg.OperationalError):
            return
        if self.conn.broken:
            self._lost(exc)
            raise StoreUnavailable(
                f"lost the PostgreSQL database {self.url}: {first_line(exc)}"
            ) from exc
        if (exc.sqlstate or "08").startswith("08"):  # this store was closed
            raise StoreError(f"lost the PostgreSQL database {self.url}: {first_line(exc)}") from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def cursor(self, conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
        """A cursor of ``conn`` kept for the round's statement (one per session, not one per
        step: a step's commit makes no cursor object)."""
        cursor = self._cursor
        if cursor is None or cursor.connection is not conn:
            cursor = self._cursor = conn.cursor()
        return cursor

    def _backend_pid(self) -> int:
        """The server process of this store's connection (0 if it has none now)."""
        try:
            return self.conn.info.backend_pid
        except Exception:  # closed, or being replaced: no notification is skipped
            return 0

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        """Run one statement on its own and fetch its rows (see ``reading``)."""

        def run(conn: psycopg.Connection[Any]) -> list[Any]:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

        return self.reading(run)

    def reading(self, read: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``read`` on the session, under the lock; run once more on a new session if its own
        turns out closed. Only for reads, and writes that may run twice (a heartbeat, leases
        renewed or let go): ``query`` and ``history``."""
        with self.lock:
            conn = self.connection()
            try:
                return read(conn)
            except Exception as exc:
                if not conn.broken:
                    self.reraise(exc)
                    raise
                self._lost(exc)
            try:
                return read(self.connection())
            except Exception as exc:
                self.reraise(exc)
                raise
