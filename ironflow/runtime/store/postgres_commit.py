"""How a PostgreSQL write transaction is sent and committed.

Inside ``with store.transaction() as tx:`` nothing is sent until the first statement, which
goes after ``BEGIN``; ``COMMIT`` (or ``ROLLBACK`` on an error) ends it. A round's commit
(``commit_round``, one call of the round function: see ``postgres_round``) is held back until
the transaction ends or another statement comes: a transaction that is only that call sends it
alone, in autocommit, where one statement is its own transaction (a plain step, one run's rows,
is one plain statement instead of the call: ``plain_round``, held back and sent the same way).
So an ordinary step costs one round trip and one commit, and the call commits whole or not at
all (the fence raises before any write). Driver errors leave as the store's own (``LeaseLost``,
``WriteConflict``, ``StoreError``).

Fewer exchanges still: ``BEGIN`` carries the transaction's ``setup`` (a take's settings, the
stripes a transaction takes first: ``first``) and ``COMMIT`` its wake-up ``NOTIFY``, each in
one exchange (``PostgresSession.begin``, ``Begun.end``); a round's mail drop is held back like
its call, and a plain step carries it (``drop_mail``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from ironflow.runtime.store.base import Batch, LeaseLost
from ironflow.runtime.store.postgres_listen import notify_sql, payload
from ironflow.runtime.store.postgres_locks import Stripes, conflict
from ironflow.runtime.store.postgres_round import (
    CLEAR_READY,
    DROP_MAIL,
    LEASE_LOST_STATE,
    ROUND,
    MailDrop,
    plain_round,
    round_params,
)
from ironflow.runtime.store.postgres_schema import first_line
from ironflow.runtime.store.statements import StatementTransaction

if TYPE_CHECKING:
    import psycopg

    from ironflow.runtime.store.postgres import PostgresStore
    from ironflow.runtime.store.postgres_session import Begun

# A round's statement, its parameters, the plain step's run (``None``: the function's call,
# whose fence raises itself) and the worker that sends it.
Call = tuple[str, list[Any], str | None, str]


class PostgresCommit(Stripes, StatementTransaction):
    """How ``PostgresTransaction`` begins and ends, under the store's lock: ``BEGIN`` …
    ``COMMIT`` around its statements, or its round's commit alone in autocommit.

    A round's transaction is ``fenced`` once it takes runs or commits a batch: a unique key
    that fails in it means another worker wrote to a run of the batch, and is ``LeaseLost``.
    ``shared``/``exclusive`` are the advisory stripes it holds (taken once each). ``wakes``:
    it left work for other workers, and announces it once before it commits (``notified``
    once the round's call did), naming the runs in ``targets``. ``round``: the round's call,
    held back until the transaction ends or another statement comes."""

    __slots__ = (
        "exclusive",
        "mail",
        "notified",
        "round",
        "setup",
        "shared",
        "store",
        "targets",
        "tx",
        "wakes",
    )

    tx: Begun | None
    round: Call | None
    mail: MailDrop | None

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        # The connection; inside ``with``, until the first statement, a stand-in that sends
        # ``BEGIN`` with it (``_Begin``).
        self.conn: psycopg.Connection[Any] = store.conn
        self.tx = None
        self.round = None
        self.mail = None  # ``drop_mail`` held back: for the round's plain statement
        self.setup = ""  # sent with ``BEGIN`` (``PostgresSession.begin``)
        self.fenced = False
        self.shared: set[int] = set()
        self.exclusive: set[int] = set()
        self.wakes = False
        self.notified = False
        self.targets: list[str] = []

    def __enter__(self) -> Self:
        self.store.lock.acquire()
        self.conn = _Begin(self)  # type: ignore[assignment]
        return self

    def begin(self) -> psycopg.Connection[Any]:
        """Send ``BEGIN`` (and the round's call held back, if any): statements follow."""
        try:
            # The store's session, replaced first if the server closed it (``store.begin``).
            conn, tx = self.store.begin(self.setup)
        except BaseException as exc:
            self._reraise(exc)
            raise
        self.conn = conn
        self.tx = tx
        if self.mail is not None:
            mail, self.mail = self.mail, None
            self.send_mail_drop(conn, mail)
        if self.round is not None:
            call, self.round = self.round, None
            self._send(conn, call)
        return conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self.tx is None and self.mail is not None and exc is None:
            try:
                self.begin()  # mail no round's statement took: dropped in a transaction
            except BaseException as error:
                if self.tx is None:  # BEGIN failed (``begin`` said why): nothing is open
                    self.store.lock.release()
                    raise
                self._end(error)  # the drop or the round failed: rolled back, said as ours
                raise
        if self.tx is None:
            self._exit_unbegun(exc)
            return
        notify = ""
        if exc is None and self.wakes and not self.notified:
            # In the transaction, with its COMMIT: sent on commit, dropped on rollback (no
            # news, no hint).
            notify = notify_sql(self.conn, self.store.channel, payload(self.targets))
        self._end(exc, notify)

    def first(self, statement: str) -> bool:
        if self.tx is not None or self.conn is self.store.conn or self.round or self.mail:
            return False
        self.setup += "; " + statement
        return True

    def _exit_unbegun(self, exc: Any) -> None:
        """Nothing sent yet: the round's call alone is the transaction (a multi-statement
        function call in autocommit commits whole or not at all), if there is one."""
        call, self.round = self.round, None
        try:
            if exc is None and call is not None:
                self.conn = self.store.connection()  # replaced first if the server closed it
                try:
                    self._send(self.conn, call)
                except BaseException as error:
                    self._reraise(error)
                    raise
            elif exc is not None:
                self._reraise(exc)
        finally:
            self.store.lock.release()

    def _end(self, exc: Any, before_commit: str = "") -> None:
        """Commit, after ``before_commit`` (or roll back on ``exc``), and let go of the
        store's lock."""
        assert self.tx is not None
        try:
            try:
                self.tx.end(exc is not None, before_commit)
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
        aborted = conflict(exc, self.store.url)
        if aborted is not None:
            raise aborted from exc
        self.store.reraise(exc)

    def commit_round(self, batch: Batch, owner: str) -> None:
        self.fenced = True
        # Parents told of a child's end, or news from this transaction: announced by the call.
        notify = bool(batch.notify) or (self.wakes and not self.notified)
        call: Call | None = None if notify else plain_round(batch, owner, self.mail)
        if call is not None:
            self.mail = None  # dropped by the plain statement
        else:
            params = round_params(batch, owner, self.store.channel if notify else None)
            if params is None:
                return
            if notify:
                self.wakes = self.notified = True
            call = (ROUND, params, None, owner)
        conn = self.conn
        if self.tx is None and conn is not self.store.conn:  # in ``with``, nothing sent yet
            if self.round is None and not self.setup:  # no locks waiting for ``BEGIN``
                self.round = call  # sent alone when the transaction ends, if nothing follows
                return
            conn = self.begin()
        self._send(conn, call)

    def send_mail_drop(self, conn: psycopg.Connection[Any], mail: MailDrop) -> None:
        positions, run_ids = mail
        if positions:
            conn.execute(DROP_MAIL, (positions,))
        if run_ids:
            conn.execute(CLEAR_READY, (run_ids,))

    def _send(self, conn: psycopg.Connection[Any], call: Call) -> None:
        """Run a round's statement; a plain step that inserted nothing found its run's lease
        moved (``LeaseLost``, as the function's fence says it)."""
        sql, params, run_id, owner = call
        cursor = self.store.cursor(conn)
        cursor.execute(sql, params, prepare=True)
        if run_id is not None and cursor.rowcount <= 0:
            raise LeaseLost(f"lease lost: 0 of 1 runs still held by {owner}", (run_id,))


class _Begin:
    """A transaction's connection until its first statement, which it sends after ``BEGIN``."""

    __slots__ = ("tx",)

    def __init__(self, tx: PostgresCommit) -> None:
        self.tx = tx

    def execute(self, sql: str, params: Any = (), prepare: bool | None = None) -> Any:
        tx = self.tx
        conn = tx.begin() if tx.tx is None else tx.store.conn  # kept by a caller: begun once
        return conn.execute(sql, params, prepare=prepare)
