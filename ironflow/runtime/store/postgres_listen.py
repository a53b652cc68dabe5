"""Wake-ups across processes on PostgreSQL (issue 11, item 6): NOTIFY as a hint, polling as the
fallback.

- A write transaction that created runs, recorded events or sent mail (a child's end, a cancel,
  an event handed to a wait) or resumed a run sends **one** ``pg_notify`` on its schema's
  channel before it commits (``PostgresTransaction``). Never for an ordinary step commit: NOTIFY
  takes a database-wide lock at commit, and peers would hit a ceiling of a few hundred commits a
  second. Timers are not announced: the runs they belong to are held by the worker that set
  them, which knows its own next timer; another worker sees them within a poll interval.
- The payload names the runs the transaction left work for (``payload``: a JSON list of run
  ids; runs created, sent mail or resumed), so a worker drives those at once, with no discovery
  query in between (the shortest path from an emit to the resumed step). An empty payload (the
  transaction named no run, or too many for one notification) means "look everywhere".
- A serving worker listens on a connection of its own (so a worker holds two), from one thread
  (``Listener``): a batch of notifications calls back once, with the runs they name (``None``
  if any of them named none), and the worker drives those runs or marks discovery due, and
  wakes its loop. Notifications its own connection sent are skipped: that news is known in
  the process already.
- A hint only: a notification lost while the listener is down costs at most one poll interval.
  If the listening connection fails, the listener logs once, polling carries on, and it tries
  to connect again every poll interval (at least 1 s, at most 60 s apart).

The channel is derived from the schema, so two apps in two schemas of one database do not wake
each other (a NOTIFY reaches only the listeners of its database).
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from ironflow.runtime.store.postgres_schema import first_line, lock_class

__all__ = ["Listener", "channel", "named_runs", "notify_sql", "payload"]

log = logging.getLogger("ironflow.engine")

# PostgreSQL refuses a payload of 8000 bytes or more: a longer list says "look everywhere".
PAYLOAD_MAX = 7900
RETRY_MIN, RETRY_MAX = 1.0, 60.0
# A peer gone without a word (a cut network) shows as an error after about this long.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}


def channel(schema: str) -> str:
    """The wake-up channel of ``schema``: an identifier short enough whatever the name (a
    channel is at most 63 bytes), from the same hash as the schema's advisory locks."""
    return f"ironflow_wake_{lock_class(schema) & 0xFFFFFFFF:08x}"


def notify_sql(conn: Any, channel: str, text: str) -> str:
    """The ``pg_notify`` of ``text`` on ``channel`` as a statement without parameters (sent
    with the transaction's ``COMMIT``, one round trip), ending in ``;``."""
    from psycopg import sql

    return sql.SQL("SELECT pg_notify({}, {});").format(channel, text).as_string(conn)


def payload(run_ids: list[str]) -> str:
    """The payload naming ``run_ids``; empty (look everywhere) if none, or too many to name."""
    if not run_ids:
        return ""
    text = json.dumps(run_ids, separators=(",", ":"))
    return text if len(text.encode()) < PAYLOAD_MAX else ""


def named_runs(text: str) -> frozenset[str] | None:
    """The runs a payload names; ``None`` (look everywhere) for any other payload."""
    if not text.startswith("["):
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not isinstance(found, list) or not all(type(run_id) is str for run_id in found):
        return None
    return frozenset(found)


class Listener:
    """One thread listening on a connection of its own; ``callback`` on each batch of
    notifications (with the runs they name, or ``None``), and on each (re)connection with
    ``None`` (news may have been missed meanwhile). Notifications sent by the backend whose
    pid ``own_pid()`` gives (the worker's own connection) are skipped."""

    def __init__(
        self,
        dsn: str,
        url: str,
        channel: str,
        callback: Callable[[frozenset[str] | None], None],
        retry: float,
        connect_timeout: float,
        own_pid: Callable[[], int] = lambda: 0,
    ) -> None:
        self.dsn = dsn
        self.url = url  # redacted, for messages
        self.channel = channel
        self.callback = callback
        self.own_pid = own_pid
        self.retry = min(max(retry, RETRY_MIN), RETRY_MAX)
        self.connect_timeout = max(1, round(connect_timeout))
        self.stopping = threading.Event()
        # stop() writes here: a select() blocked on the connection returns at once.
        self.poke_r, self.poke_w = socket.socketpair()
        self.thread = threading.Thread(target=self.run, name="ironflow-listen", daemon=True)

    def start(self) -> Listener:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):  # the socket pair is ours: nothing else closes it
            self.poke_w.send(b"x")
        # Only a connection attempt under way delays it (bounded by its timeout); a thread
        # still in one is a daemon and ends there, its sockets left to it.
        self.thread.join(self.connect_timeout + 1)
        if not self.thread.is_alive():
            self.poke_r.close()
            self.poke_w.close()

    def run(self) -> None:
        import psycopg
        from psycopg import conninfo

        down = False
        while not self.stopping.is_set():
            try:
                conn = psycopg.connect(
                    conninfo.make_conninfo(
                        self.dsn, connect_timeout=self.connect_timeout, **KEEPALIVES
                    ),
                    autocommit=True,
                )
            except psycopg.Error as exc:
                down = self._down(down, exc)
                continue
            try:
                conn.execute(f'LISTEN "{self.channel}"')
                if down:
                    log.info("wake-ups: listening on %s again", self.url)
                    down = False
                self.callback(None)  # news sent while nobody listened is found now
                self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                down = self._down(down, exc)
            finally:
                conn.close()

    def _down(self, down: bool, exc: BaseException) -> bool:
        """Log the first failure of an outage, then wait to try again (or to stop)."""
        if not down:
            log.warning(
                "wake-ups: cannot listen on %s (%s); other processes' news is seen by "
                "polling until it can, trying again every %gs",
                self.url,
                first_line(exc),
                self.retry,
            )
        self.stopping.wait(self.retry)
        return True

    def _listen(self, conn: Any) -> None:
        pgconn = conn.pgconn
        sockets = [conn.fileno(), self.poke_r]
        while not self.stopping.is_set():
            ready, _, _ = select.select(sockets, [], [])
            if self.poke_r in ready:
                return
            pgconn.consume_input()  # raises if the connection is gone
            news = False
            runs: set[str] | None = set()
            own = self.own_pid()
            while (note := pgconn.notifies()) is not None:  # a burst wakes the worker once
                if note.be_pid == own:
                    continue  # this worker's own news: known in its process already
                news = True
                if runs is not None:
                    named = named_runs(note.extra.decode("utf-8", "replace"))
                    runs = None if named is None else runs | named
            if news:
                self.callback(None if runs is None else frozenset(runs))
            if pgconn.status != 0:  # CONNECTION_BAD: closed by the server
                raise OSError("the listening connection was closed")
