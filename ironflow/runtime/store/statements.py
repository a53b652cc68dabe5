"""The reads and transaction verbs both stores run the same way: one statement (or a fixed few),
whose text is the store's own.

Each sibling (``sqlite_tx`` with ``sqlite_round``, ``postgres_tx``) keeps its statements named
at the top of its module and points these class attributes at them; it overrides only what
really differs (locks, notify, claims, the fence). A statement is read off ``self``: no extra
call layer.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, ClassVar

from ironflow.commands import kinds
from ironflow.runtime.store.base import Transaction

# The web view's reads, alike on both stores ({mark} is the store's parameter placeholder).
RECENT_EVENTS = "SELECT pos, id, name, data, ts_us, started FROM events"
EVENTS_BEFORE = " WHERE pos < {mark}"
EVENT_CONSUMERS = "SELECT event_id, run_id FROM consumed WHERE event_id IN ({marks})"
WORKERS = (
    "SELECT id, functions, seen_us, until_us FROM workers WHERE until_us >= {mark} ORDER BY id"
)


def storable(text: str) -> bool:
    """Whether every store can hold ``text``: PostgreSQL text holds no NUL, and no store a
    lone surrogate. A looked-up id that is not storable names no row (on every store alike,
    rather than an error from the database driver)."""
    if text.isprintable():  # the usual case, one C pass
        return True
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class StatementReads:
    """The store-level reads of runs both stores make alike, on the sibling's statements
    (``MARK`` is its parameter placeholder)."""

    GET_RUN: ClassVar[str]
    LIST_RUNS: ClassVar[str]
    COUNT_RUNS: ClassVar[str]
    LIVE_FUNCTIONS: ClassVar[str]
    MARK: ClassVar[str]
    legacy: bool  # a readable older schema: no code_version column, no workers table
    unsourced: bool  # a readable schema from before v5: no source_run_id column

    if TYPE_CHECKING:  # each store has its own

        def query(self, sql: str, params: Any = ()) -> list[Any]: ...

    def live_functions(self, now_us: int) -> list[str] | None:
        if self.legacy:
            return None
        return [row[0] for row in self.query(self.LIVE_FUNCTIONS, (now_us,))]

    def _columns(self) -> dict[str, str]:
        return {
            "code_version": "NULL" if self.legacy else "code_version",
            "source_run_id": "NULL" if self.unsourced else "source_run_id",
        }

    def get_run(self, run_id: str) -> tuple[Any, ...] | None:
        if not storable(run_id):
            return None
        found = self.query(self.GET_RUN.format(**self._columns()), (run_id,))
        return found[0] if found else None

    def list_runs(
        self, status: str | None, function_id: str | None, limit: int | None
    ) -> list[tuple[Any, ...]]:
        where, params = self._filter(status, function_id)
        sql = self.LIST_RUNS.format(**self._columns()) + where
        sql += " ORDER BY created_us DESC, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, params)

    LIMIT_EACH_STATUS: ClassVar[bool] = False  # see page_query

    def page_runs(
        self,
        status: str | None,
        function_id: str | None,
        since_us: int | None,
        until_us: int | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[tuple[Any, ...]]:
        sql, params = self.page_query(status, function_id, since_us, until_us, after, limit)
        return self.query(sql, params)

    def page_query(
        self,
        status: str | None,
        function_id: str | None,
        since_us: int | None,
        until_us: int | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> tuple[str, list[Any]]:
        """The statement ``page_runs`` runs, and its parameters (tests EXPLAIN it)."""
        bounds = (function_id, since_us, until_us, after)
        order = f" ORDER BY created_us DESC, id LIMIT {int(limit)}"
        if status != "pending":
            sql, params = self._page_select(status, *bounds)
            return sql + order, params
        # Runs a flow-control limit holds back are stored 'queued' and listed as pending: a
        # seek on the status index for each, merged in order (``IN`` would sort them all);
        # the columns are read past the merge, for the page's rows only.
        pending, params = self._page_select("pending", *bounds, "*")
        queued, more = self._page_select("queued", *bounds, "*")
        select = self.LIST_RUNS.format(**self._columns())[: -len(" runs")]
        # PostgreSQL costs a seek past a sort only with each status's page bounded; SQLite
        # merges the two seeks in order as they are.
        each = order if self.LIMIT_EACH_STATUS else ""
        merged = " UNION ALL ".join(
            f"SELECT * FROM ({one}{each}) AS s" for one in (pending, queued)
        )
        return f"{select} ({merged}) AS runs{order}", params + more

    def _page_select(
        self,
        status: str | None,
        function_id: str | None,
        since_us: int | None,
        until_us: int | None,
        after: tuple[int, str] | None,
        columns: str = "",
    ) -> tuple[str, list[Any]]:
        mark = self.MARK
        terms, params = [], []
        if status is not None:
            terms.append(f"status = {mark}")
            params.append(status)
        if function_id is not None:
            terms.append(f"function_id = {mark}")
            params.append(function_id)
        if since_us is not None:
            terms.append(f"created_us >= {mark}")
            params.append(since_us)
        if until_us is not None:
            terms.append(f"created_us < {mark}")
            params.append(until_us)
        if after is not None:
            # Past the cursor in (created_us DESC, id) order. The first term bounds the index
            # seek; the second only filters the rows of the cursor's own microsecond.
            terms.append(f"created_us <= {mark} AND (created_us < {mark} OR id > {mark})")
            params.extend((after[0], after[0], after[1]))
        sql = f"SELECT {columns} FROM runs" if columns else self.LIST_RUNS.format(**self._columns())
        if terms:
            sql += " WHERE " + " AND ".join(terms)
        return sql, params

    def count_runs(self, status: str | None, function_id: str | None) -> int:
        where, params = self._filter(status, function_id)
        return int(self.query(self.COUNT_RUNS + where, params)[0][0])

    def recent_events(self, limit: int, before_pos: int | None) -> list[tuple[Any, ...]]:
        sql, params = RECENT_EVENTS, []
        if before_pos is not None:
            sql += EVENTS_BEFORE.format(mark=self.MARK)
            params.append(before_pos)
        return self.query(sql + f" ORDER BY pos DESC LIMIT {int(limit)}", params)

    def event_consumers(self, event_ids: list[str]) -> list[tuple[str, str]]:
        if not event_ids:
            return []
        marks = ", ".join([self.MARK] * len(event_ids))
        return [tuple(row) for row in self.query(EVENT_CONSUMERS.format(marks=marks), event_ids)]

    def workers(self, now_us: int) -> list[tuple[Any, ...]]:
        if self.legacy:
            return []
        return [tuple(row) for row in self.query(WORKERS.format(mark=self.MARK), (now_us,))]

    def _filter(self, status: str | None, function_id: str | None) -> tuple[str, list[Any]]:
        where, params = [], []
        if status == "pending":  # a run a flow-control limit holds back is stored 'queued'
            where.append("status IN ('pending', 'queued')")
        elif status is not None:
            where.append(f"status = {self.MARK}")
            params.append(status)
        if function_id is not None:
            where.append(f"function_id = {self.MARK}")
            params.append(function_id)
        return (" WHERE " + " AND ".join(where) if where else ""), params


class StatementTransaction(Transaction):
    """A ``Transaction`` whose common verbs execute the sibling's statement texts on ``conn``."""

    __slots__ = ("conn", "fenced")

    conn: Any
    fenced: bool

    SET_TIMER: ClassVar[str]
    CREATE_RUN: ClassVar[str]
    RUN_FUNCTION: ClassVar[str]
    FIND_RUN: ClassVar[str]
    ACTIVE_CHILDREN: ClassVar[str]
    BLOCK: ClassVar[str]
    CANCEL_BLOCKED: ClassVar[str]
    RESUME_BLOCKED: ClassVar[str]
    RESUME_FAILED: ClassVar[str]
    LINK_RUN: ClassVar[str]
    REGISTER_FUNCTION: ClassVar[str]
    BUMP_REGISTRY: ClassVar[str]
    REGISTRY_VERSION: ClassVar[str]
    EVENT_STARTED: ClassVar[str]
    SET_EVENT_STARTED: ClassVar[str]
    EVENT_ID_OF_KEY: ClassVar[str]
    WAIT_PATHS: ClassVar[str]
    WAITS_ANY: ClassVar[str]
    WAITS_KEYED: ClassVar[str]
    CLAIM_WAIT: ClassVar[str]
    DELETE_TIMER: ClassVar[str]
    CONSUME: ClassVar[str]
    UNCONSUMED_EVENTS: ClassVar[str]
    ADD_WAIT: ClassVar[str]

    def execute(self, sql: str, params: Any = ()) -> Any:
        """Run one statement in this transaction (for tests and tools, not the engine)."""
        return self.conn.execute(sql, params)

    def fence(self) -> None:
        self.fenced = True

    def reserve(self, emits: Collection[str], waits: Collection[str], creates_runs: bool) -> None:
        return  # one writer at a time (SQLite): no per-name locks to take

    def set_timer(self, run_id: str, step_id: str, kind: str, due_us: int, attempt: int) -> None:
        self.conn.execute(self.SET_TIMER, (run_id, step_id, kind, due_us, attempt))

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
        self.conn.execute(
            self.CREATE_RUN,
            (
                run_id,
                function_id,
                parent_run_id,
                parent_step_id,
                int(notify_parent),
                trigger,
                now_us,
                now_us,
            ),
        )

    def run_function(self, run_id: str) -> str | None:
        found = self.conn.execute(self.RUN_FUNCTION, (run_id,)).fetchone()
        return None if found is None else found[0]

    def find_run(self, run_id: str) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = self.conn.execute(self.FIND_RUN, (run_id,)).fetchone()
        return found

    def active_children(self, run_id: str) -> list[str]:
        return [row[0] for row in self.conn.execute(self.ACTIVE_CHILDREN, (run_id,)).fetchall()]

    def block(self, run_id: str, error: str, now_us: int) -> str | None:
        found = self.conn.execute(self.BLOCK, (error, now_us, run_id)).fetchone()
        return None if found is None else found[0]

    def cancel_blocked(self, run_id: str, now_us: int) -> None:
        self.conn.execute(self.CANCEL_BLOCKED, (now_us, now_us, run_id))

    def resume_blocked(self, run_id: str, now_us: int) -> None:
        self.conn.execute(self.RESUME_BLOCKED, (now_us, run_id))

    def resume_failed(self, run_id: str, now_us: int) -> None:
        self.conn.execute(self.RESUME_FAILED, (now_us, run_id))

    def link_run(self, run_id: str, source_run_id: str) -> None:
        self.conn.execute(self.LINK_RUN, (source_run_id, run_id))

    # --- the function registry ------------------------------------------------------------

    def register_function(
        self, function_id: str, triggers: str, settings: str, code_version: str, now_us: int
    ) -> None:
        self.conn.execute(
            self.REGISTER_FUNCTION, (function_id, triggers, settings, code_version, now_us)
        )
        self.conn.execute(self.BUMP_REGISTRY)

    def registry_version(self) -> str | None:
        found = self.conn.execute(self.REGISTRY_VERSION).fetchone()
        return None if found is None else str(found[0])

    # --- mail, events and waits -----------------------------------------------------------

    def event_started(self, idempotency_key: str) -> str | None:
        found = self.conn.execute(self.EVENT_STARTED, (idempotency_key,)).fetchone()
        return None if found is None else found[0]

    def event_id_of(self, idempotency_key: str) -> str | None:
        found = self.conn.execute(self.EVENT_ID_OF_KEY, (idempotency_key,)).fetchone()
        return None if found is None else str(found[0])

    def set_event_started(self, pos: int, started: str) -> None:
        self.conn.execute(self.SET_EVENT_STARTED, (started, pos))

    def wait_paths(self, event_name: str) -> list[str | None]:
        return [row[0] for row in self.conn.execute(self.WAIT_PATHS, (event_name,)).fetchall()]

    def waits_for(
        self, event_name: str, path: str | None, key: str | None
    ) -> list[tuple[str, str, int]]:
        found: list[tuple[str, str, int]]
        if path is None:
            found = self.conn.execute(self.WAITS_ANY, (event_name,)).fetchall()
        else:
            found = self.conn.execute(self.WAITS_KEYED, (event_name, path, key)).fetchall()
        return found

    def deliver(self, run_id: str, step_id: str, event_id: str, ts_us: int, body: str) -> None:
        conn = self.conn
        if conn.execute(self.CLAIM_WAIT, (run_id, step_id)).fetchone() is None:
            return  # its timeout fired, or another emit took it first
        conn.execute(self.DELETE_TIMER, (run_id, step_id))
        conn.execute(self.CONSUME, (run_id, event_id))
        self.send_mail(run_id, kinds.MAIL_WAIT_MATCHED, ts_us, body)

    def unconsumed_events(self, name: str, after_pos: int, run_id: str) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = self.conn.execute(
            self.UNCONSUMED_EVENTS, (name, after_pos, run_id)
        ).fetchall()
        return found

    def consume(self, run_id: str, event_id: str) -> None:
        self.conn.execute(self.CONSUME, (run_id, event_id))

    def add_wait(
        self, run_id: str, step_id: str, name: str, path: str | None, key: str | None, seq: int
    ) -> None:
        self.conn.execute(self.ADD_WAIT, (run_id, step_id, name, path, key, seq))
