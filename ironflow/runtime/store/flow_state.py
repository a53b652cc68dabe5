"""The store verbs of flow control applied when an event arrives or a time comes (issue 13):
keyed flow state, events that started no run, and cancel_on watches. Both stores run them
alike, on their own statement texts (``sqlite_flow_events``, ``postgres_flow_events``).

**Flow state** is one row per (function, kind, key): ``kind`` is ``idempotency``,
``rate_limit``, ``batch``, ``debounce``, ``cron`` or ``arrival``; ``key`` the canonical JSON
text of the key value (a cron schedule's expression and zone; an arrival's event position).
A row with a ``due_us`` falls due then (a batch's timeout, a debounced run, the next cron
tick, an arrival a worker with the code must judge); one without is a window that expires at
``until_us`` (an idempotency key, a rate-limit log). Whoever deletes a due row (``state_take``)
or moves its due time from the value it read (``state_move``) owns what it stood for: one run
per batch, per debounced burst, per cron tick, across every worker.

**Skips** record an event that started no run of a function, and why (``record_skip``):
``reason`` is one word (``idempotency``, ``rate_limit``, ``singleton``, ``key_error``),
``detail`` a line for people. ``engine.list_events()`` and ``ironflow events list`` read them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

# The reasons ``record_skip`` is given (other gates may add theirs).
SKIP_REASONS = ("idempotency", "rate_limit", "singleton", "key_error")


class FlowStateVerbs:
    """Transaction verbs of flow control; a store's transaction mixes this in and binds the
    statements (class attributes) to its own texts. ``state_lock`` is what a store must do
    before writing flow rows (PostgreSQL: take the advisory stripes every run creation
    takes, so that flow rows are always locked after them, never before)."""

    __slots__ = ()

    conn: Any

    STATE_GET: ClassVar[str]
    STATE_PUT: ClassVar[str]
    STATE_TAKE: ClassVar[str]
    STATE_MOVE: ClassVar[str]
    STATE_DROP: ClassVar[str]
    STATE_KEYS: ClassVar[str]
    REGISTERED_SETTINGS: ClassVar[str]
    EVENT_STARTED_AT: ClassVar[str]
    SET_EVENT_STARTED_AT: ClassVar[str]
    RECORD_SKIP: ClassVar[str]
    CLAIM_WAIT: ClassVar[str]

    def state_lock(self, serialize: bool = False) -> None:
        """Before flow rows are read to be written; ``serialize``: also one at a time with
        every other transaction that asked so (judging deferred arrivals)."""

    def state_get(self, function_id: str, kind: str, key: str) -> tuple[Any, ...] | None:
        """``(due_us, first_us, until_us, body)`` of a flow row, or ``None``."""
        self.state_lock()
        found: tuple[Any, ...] | None = self.conn.execute(
            self.STATE_GET, (function_id, kind, key)
        ).fetchone()
        return found

    def state_put(
        self,
        function_id: str,
        kind: str,
        key: str,
        due_us: int | None,
        first_us: int,
        until_us: int | None,
        body: str,
    ) -> None:
        """Write (or replace) a flow row."""
        self.state_lock()
        self.conn.execute(
            self.STATE_PUT, (function_id, kind, key, due_us, first_us, until_us, body)
        )

    def state_take(
        self, function_id: str, kind: str, key: str, now_us: int
    ) -> tuple[Any, ...] | None:
        """Delete a flow row that is due at ``now_us``: ``(first_us, body)``, or ``None`` if it
        is gone or was moved later meanwhile (someone else took it, an event moved it)."""
        self.state_lock()
        found: tuple[Any, ...] | None = self.conn.execute(
            self.STATE_TAKE, (function_id, kind, key, now_us)
        ).fetchone()
        return found

    def state_move(
        self, function_id: str, kind: str, key: str, was_us: int, due_us: int, body: str
    ) -> bool:
        """Move a flow row's due time from ``was_us`` to ``due_us`` (and set its body); False
        if its due time is no longer ``was_us`` (another worker moved it first)."""
        self.state_lock()
        cursor = self.conn.execute(self.STATE_MOVE, (due_us, body, function_id, kind, key, was_us))
        return bool(cursor.rowcount == 1)

    def state_drop(self, function_id: str, kind: str, key: str) -> None:
        """Delete a flow row, due or not."""
        self.state_lock()
        self.conn.execute(self.STATE_DROP, (function_id, kind, key))

    def state_keys(self, function_id: str, kind: str) -> list[str]:
        """The keys of a function's flow rows of ``kind``."""
        return [row[0] for row in self.conn.execute(self.STATE_KEYS, (function_id, kind))]

    def registered_settings(self) -> list[tuple[str, str]]:
        """``(function_id, settings)`` of every registered function."""
        return [(row[0], row[1]) for row in self.conn.execute(self.REGISTERED_SETTINGS).fetchall()]

    def add_event_started(self, pos: int, run_ids: list[str]) -> None:
        """Add runs a worker started for the event at ``pos`` (deferred by an emitter without
        the code) to the event's ``started`` list, after those its emit started."""
        found = self.conn.execute(self.EVENT_STARTED_AT, (pos,)).fetchone()
        try:
            known = json.loads(found[0]) if found is not None and found[0] else []
        except (TypeError, ValueError):
            known = []  # a damaged list: what the worker started is still worth keeping
        self.conn.execute(self.SET_EVENT_STARTED_AT, (json.dumps([*known, *run_ids]), pos))

    def record_skip(
        self, event_id: str, function_id: str, reason: str, detail: str, ts_us: int
    ) -> None:
        """Record that event ``event_id`` started no run of ``function_id``: ``reason`` one
        word (``SKIP_REASONS``), ``detail`` one line for people."""
        self.conn.execute(self.RECORD_SKIP, (event_id, function_id, reason, detail, ts_us))

    def claim_watch(self, run_id: str, step_id: str) -> bool:
        """Delete a watch (a wait row the runtime set, such as a cancel_on); whether it was
        still there (an emit that finds it gone does nothing)."""
        return self.conn.execute(self.CLAIM_WAIT, (run_id, step_id)).fetchone() is not None


class FlowStateReads:
    """Store-level reads (and the prune) of flow control, on the sibling's statements."""

    STATE_DUE: ClassVar[str]
    STATE_NEXT: ClassVar[str]
    STATE_PRUNE: ClassVar[str]
    LIST_SKIPS: ClassVar[str]
    MARK: ClassVar[str]
    # A read-only opening of a database from before flow control (schema v3 or older).
    state_legacy = False

    if TYPE_CHECKING:  # each store has its own

        def query(self, sql: str, params: Any = ()) -> list[Any]: ...

    def state_due(
        self, now_us: int, functions: tuple[str, ...], limit: int
    ) -> tuple[list[tuple[Any, ...]], int | None]:
        """Due flow rows of ``functions`` as ``(function_id, kind, key, due_us)`` in due order
        (at most ``limit``), and the next due time after ``now_us``."""
        due = self.query(self._in(self.STATE_DUE, functions), (now_us, *functions, limit))
        nearest = self.query(self._in(self.STATE_NEXT, functions), (now_us, *functions))
        return due, nearest[0][0] if nearest else None

    def state_prune(self, now_us: int) -> None:
        """Delete windows (idempotency keys, rate-limit logs) that expired before ``now_us``."""
        self.query(self.STATE_PRUNE, (now_us,))

    def list_skips(
        self, name: str | None, function_id: str | None, limit: int | None
    ) -> list[tuple[Any, ...]]:
        """Skips, newest first: ``(event_id, event_name, data, event_ts_us, function_id,
        reason, detail, ts_us)``; ``[]`` on a database from before flow control."""
        if self.state_legacy:
            return []
        where, params = [], []
        if name is not None:
            where.append(f"e.name = {self.MARK}")
            params.append(name)
        if function_id is not None:
            where.append(f"s.function_id = {self.MARK}")
            params.append(function_id)
        sql = self.LIST_SKIPS + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY s.pos DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, params)

    def _in(self, sql: str, functions: tuple[str, ...]) -> str:
        return sql.replace("{fids}", ", ".join([self.MARK] * len(functions)))
