"""The flow-control tables (schema v4) and their verbs, on both stores.

Only functions with start gates (``concurrency``, ``throttle``, ``priority``,
``timeouts``) touch these tables; every other run costs nothing here.

- ``flow_queue``: runs held back by a limit, stored with status ``queued`` (shown as
  ``pending``): out of the ``runs_active`` index, so discovery never walks them, and ordered
  per function and queue key by (priority desc, arrival). ``reason`` is ``Run.waiting_for``.
- ``flow_slots``: the runs admitted past a concurrency limit, per key. A slot is held while
  its run is not ended (the count joins ``runs``), so a run whose worker died keeps it until
  the run is taken over and ends; nothing leaks with the worker.
- ``flow_starts``: when runs started, per throttle key (rows older than the window go).
- ``flow_singletons``: the run that holds a singleton key (it holds it until it ends).

Statements are written once with ``{p}`` for the store's parameter mark. A decision about a
limit (count, then admit) runs under ``flow_lock``: SQLite's write lock already serializes
every write transaction; PostgreSQL takes one transaction-level advisory lock for all flow
decisions of the schema (READ COMMITTED re-reads the count once it is granted; row locks
cannot stop a phantom insert into a count; one lock rather than one per function and key,
because a round frees slots and creates runs of several keys in one commit, in no fixed
order, and per-key locks would let two such rounds deadlock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

TERMINAL = "('completed', 'failed', 'cancelled')"

SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS flow_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "run_id TEXT NOT NULL UNIQUE, function_id TEXT NOT NULL, qkey TEXT NOT NULL, "
    "ckey TEXT, tkey TEXT, priority INTEGER NOT NULL, reason TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS flow_queue_order "
    "ON flow_queue (function_id, qkey, priority DESC, seq)",
    "CREATE TABLE IF NOT EXISTS flow_slots (function_id TEXT NOT NULL, key TEXT NOT NULL, "
    "run_id TEXT NOT NULL, PRIMARY KEY (function_id, key, run_id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS flow_slots_run ON flow_slots (run_id)",
    "CREATE TABLE IF NOT EXISTS flow_starts (function_id TEXT NOT NULL, key TEXT NOT NULL, "
    "started_us INTEGER NOT NULL, run_id TEXT NOT NULL, "
    "PRIMARY KEY (function_id, key, started_us, run_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS flow_singletons (function_id TEXT NOT NULL, key TEXT NOT NULL, "
    "run_id TEXT NOT NULL, PRIMARY KEY (function_id, key)) WITHOUT ROWID",
)

POSTGRES_DDL = (
    "CREATE TABLE IF NOT EXISTS flow_queue (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "run_id TEXT NOT NULL UNIQUE, function_id TEXT NOT NULL, qkey TEXT NOT NULL, ckey TEXT, "
    "tkey TEXT, priority BIGINT NOT NULL, reason TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS flow_queue_order "
    "ON flow_queue (function_id, qkey, priority DESC, seq)",
    "CREATE TABLE IF NOT EXISTS flow_slots (function_id TEXT NOT NULL, key TEXT NOT NULL, "
    "run_id TEXT NOT NULL, PRIMARY KEY (function_id, key, run_id))",
    "CREATE INDEX IF NOT EXISTS flow_slots_run ON flow_slots (run_id)",
    "CREATE TABLE IF NOT EXISTS flow_starts (function_id TEXT NOT NULL, key TEXT NOT NULL, "
    "started_us BIGINT NOT NULL, run_id TEXT NOT NULL, "
    "PRIMARY KEY (function_id, key, started_us, run_id))",
    "CREATE TABLE IF NOT EXISTS flow_singletons (function_id TEXT NOT NULL, key TEXT NOT NULL, "
    "run_id TEXT NOT NULL, PRIMARY KEY (function_id, key))",
)
FLOW_TABLES = ("flow_queue", "flow_slots", "flow_starts", "flow_singletons")

_STATEMENTS = {
    "QUEUE_HEAD": (
        "SELECT run_id, ckey, tkey FROM flow_queue WHERE function_id = {p} AND qkey = {p} "
        "ORDER BY priority DESC, seq LIMIT 1"
    ),
    "QUEUED_AHEAD": ("SELECT 1 FROM flow_queue WHERE function_id = {p} AND qkey = {p} LIMIT 1"),
    "ENQUEUE": (
        "INSERT INTO flow_queue (run_id, function_id, qkey, ckey, tkey, priority, reason) "
        "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
    ),
    "DEQUEUE": "DELETE FROM flow_queue WHERE run_id = {p} RETURNING function_id, qkey",
    "SET_REASON": "UPDATE flow_queue SET reason = {p} WHERE run_id = {p}",
    "QUEUE_ROW": "SELECT function_id, qkey FROM flow_queue WHERE run_id = {p}",
    "COUNT_SLOTS": (
        "SELECT COUNT(*) FROM flow_slots s JOIN runs r ON r.id = s.run_id "
        f"WHERE s.function_id = {{p}} AND s.key = {{p}} AND r.status NOT IN {TERMINAL}"
    ),
    "ADD_SLOT": "INSERT INTO flow_slots VALUES ({p}, {p}, {p}) ON CONFLICT DO NOTHING",
    "HAS_SLOT": "SELECT 1 FROM flow_slots WHERE run_id = {p}",
    "FREE_SLOT": "DELETE FROM flow_slots WHERE run_id = {p} RETURNING function_id, key",
    "FORGET_STARTS": (
        "DELETE FROM flow_starts WHERE function_id = {p} AND key = {p} AND started_us <= {p}"
    ),
    "STARTS_IN_WINDOW": (
        "SELECT started_us FROM flow_starts WHERE function_id = {p} AND key = {p} "
        "ORDER BY started_us"
    ),
    "ADD_START": "INSERT INTO flow_starts VALUES ({p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
    "SET_STATUS": "UPDATE runs SET status = {p}, updated_us = {p} WHERE id = {p} AND status = {p}",
    "UNTAKE": (
        "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until_us = NULL "
        "WHERE id = {p}"
    ),
    "CLAIM_FLOW_TIMER": (
        "DELETE FROM timers WHERE run_id = {p} AND step_id = {p} AND due_us <= {p} RETURNING kind"
    ),
    "RUN_ROW": "SELECT status, trigger, created_us, lease_owner FROM runs WHERE id = {p}",
    "END_UNSTARTED": (
        "UPDATE runs SET status = 'cancelled', error = {p}, ended_us = {p}, updated_us = {p}, "
        "ready = 0 WHERE id = {p} AND status IN ('queued', 'pending') AND lease_owner IS NULL"
    ),
    "DROP_TIMERS": "DELETE FROM timers WHERE run_id = {p}",
    "FAIL_BLOCKED": (
        "UPDATE runs SET status = 'failed', error = {p}, ended_us = {p}, updated_us = {p}, "
        "ready = 0 WHERE id = {p} AND status = 'blocked' "
        "RETURNING parent_run_id, parent_step_id, notify_parent"
    ),
    "DROP_WAITS": "DELETE FROM waits WHERE run_id = {p}",
    "DROP_MAIL": "DELETE FROM inbox WHERE run_id = {p}",
    "REASONS": "SELECT run_id, reason FROM flow_queue WHERE run_id IN ({marks})",
    "SINGLETON_HOLDER": (
        "SELECT s.run_id FROM flow_singletons s JOIN runs r ON r.id = s.run_id "
        f"WHERE s.function_id = {{p}} AND s.key = {{p}} AND r.status NOT IN {TERMINAL}"
    ),
    "SET_SINGLETON": (
        "INSERT INTO flow_singletons VALUES ({p}, {p}, {p}) "
        "ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id"
    ),
}


def statements(mark: str) -> dict[str, str]:
    """The flow statements with ``mark`` as the parameter placeholder."""
    return {
        name: text.replace("{p}", mark) if "{marks}" in text else text.format(p=mark)
        for name, text in _STATEMENTS.items()
    }


class FlowVerbs:
    """The flow-control verbs of a write transaction (mixed into both stores' transactions;
    each sets ``FLOW`` to its statements)."""

    __slots__ = ()

    FLOW: ClassVar[dict[str, str]]
    conn: Any

    def _one(self, name: str, params: tuple[Any, ...]) -> Any:
        return self.conn.execute(self.FLOW[name], params).fetchone()

    def flow_lock(self, function_id: str, key: str) -> None:
        """Serialize decisions about one limit (SQLite: its write lock already does)."""

    def flow_queue_head(self, function_id: str, qkey: str) -> tuple[Any, ...] | None:
        """``(run_id, ckey, tkey)`` of the run first in line, or ``None``."""
        return self._one("QUEUE_HEAD", (function_id, qkey))  # type: ignore[no-any-return]

    def flow_queued(self, function_id: str, qkey: str) -> bool:
        """Whether any run waits in the queue ``qkey`` of ``function_id``."""
        return self._one("QUEUED_AHEAD", (function_id, qkey)) is not None

    def flow_enqueue(
        self,
        run_id: str,
        function_id: str,
        qkey: str,
        ckey: str | None,
        tkey: str | None,
        priority: int,
        reason: str,
        now_us: int,
        status: str,
    ) -> None:
        """Queue ``run_id`` (now ``status``: pending, or running just taken) as ``queued``."""
        self.conn.execute(
            self.FLOW["ENQUEUE"], (run_id, function_id, qkey, ckey, tkey, priority, reason)
        )
        if status == "running":
            self.conn.execute(self.FLOW["UNTAKE"], (run_id,))
        else:
            self.conn.execute(self.FLOW["SET_STATUS"], ("queued", now_us, run_id, status))

    def flow_untake(self, run_id: str) -> None:
        """Let go of a run just taken that will not start (stored ``queued``, no lease)."""
        self.conn.execute(self.FLOW["UNTAKE"], (run_id,))

    def flow_dequeue(self, run_id: str, now_us: int) -> None:
        """Take ``run_id`` out of its queue: pending again, to be taken by a worker."""
        self.conn.execute(self.FLOW["DEQUEUE"], (run_id,)).fetchall()
        self.conn.execute(self.FLOW["SET_STATUS"], ("pending", now_us, run_id, "queued"))

    def flow_set_reason(self, run_id: str, reason: str) -> None:
        self.conn.execute(self.FLOW["SET_REASON"], (reason, run_id))

    def flow_queue_row(self, run_id: str) -> tuple[Any, ...] | None:
        """``(function_id, qkey)`` of a queued run, or ``None``."""
        return self._one("QUEUE_ROW", (run_id,))  # type: ignore[no-any-return]

    def flow_slots_held(self, function_id: str, key: str) -> int:
        """How many admitted runs of ``key`` have not ended."""
        return int(self._one("COUNT_SLOTS", (function_id, key))[0])

    def flow_add_slot(self, function_id: str, key: str, run_id: str) -> None:
        self.conn.execute(self.FLOW["ADD_SLOT"], (function_id, key, run_id))

    def flow_has_slot(self, run_id: str) -> bool:
        return self._one("HAS_SLOT", (run_id,)) is not None

    def flow_free_slot(self, run_id: str) -> tuple[str, str] | None:
        """Drop an ended run's slot; its ``(function_id, key)``, or ``None`` if it had none."""
        found = self.conn.execute(self.FLOW["FREE_SLOT"], (run_id,)).fetchall()
        return (found[0][0], found[0][1]) if found else None

    def flow_starts(self, function_id: str, key: str, after_us: int) -> list[int]:
        """The start times of ``key`` after ``after_us`` (older ones are forgotten)."""
        self.conn.execute(self.FLOW["FORGET_STARTS"], (function_id, key, after_us))
        found = self.conn.execute(self.FLOW["STARTS_IN_WINDOW"], (function_id, key))
        return [row[0] for row in found.fetchall()]

    def flow_add_start(self, function_id: str, key: str, now_us: int, run_id: str) -> None:
        self.conn.execute(self.FLOW["ADD_START"], (function_id, key, now_us, run_id))

    def flow_claim_timer(self, run_id: str, step_id: str, now_us: int) -> bool:
        """Delete a due flow timer; whether it was still there (it fires once)."""
        found = self.conn.execute(self.FLOW["CLAIM_FLOW_TIMER"], (run_id, step_id, now_us))
        return bool(found.fetchall())

    def flow_run(self, run_id: str) -> tuple[Any, ...] | None:
        """``(status, trigger, created_us, lease_owner)`` of a run."""
        return self._one("RUN_ROW", (run_id,))  # type: ignore[no-any-return]

    def flow_end_unstarted(self, run_id: str, error: str, now_us: int) -> bool:
        """Cancel a run that never left pending; whether it was still unstarted."""
        done = self.conn.execute(self.FLOW["END_UNSTARTED"], (error, now_us, now_us, run_id))
        if done.rowcount != 1:
            return False
        self.conn.execute(self.FLOW["DEQUEUE"], (run_id,)).fetchall()
        self.conn.execute(self.FLOW["DROP_TIMERS"], (run_id,))
        return True

    def flow_fail_blocked(self, run_id: str, error: str, now_us: int) -> tuple[Any, ...] | None:
        """End a blocked run ``failed`` with ``error`` and drop its timers, waits and mail;
        ``(parent_run_id, parent_step_id, notify_parent)``, or ``None`` if it was not
        blocked."""
        found = self.conn.execute(
            self.FLOW["FAIL_BLOCKED"], (error, now_us, now_us, run_id)
        ).fetchone()
        if found is None:
            return None
        for name in ("DROP_TIMERS", "DROP_WAITS", "DROP_MAIL"):
            self.conn.execute(self.FLOW[name], (run_id,))
        return tuple(found)

    def flow_singleton(self, function_id: str, key: str) -> str | None:
        """The run of ``key`` that holds the singleton and has not ended, or ``None``."""
        found = self._one("SINGLETON_HOLDER", (function_id, key))
        return None if found is None else str(found[0])

    def flow_set_singleton(self, function_id: str, key: str, run_id: str) -> None:
        self.conn.execute(self.FLOW["SET_SINGLETON"], (function_id, key, run_id))


class FlowReads:
    """The store-level read of ``Run.waiting_for`` for held-back runs."""

    FLOW: ClassVar[dict[str, str]]
    MARK: ClassVar[str]

    if TYPE_CHECKING:  # each store has its own

        def query(self, sql: str, params: Any = ()) -> list[Any]: ...

    def flow_reasons(self, run_ids: list[str]) -> dict[str, str]:
        """Why each of ``run_ids`` that a limit holds back waits (absent: none does)."""
        if not run_ids:
            return {}
        sql = self.FLOW["REASONS"].replace("{marks}", ",".join([self.MARK] * len(run_ids)))
        try:
            return dict(self.query(sql, tuple(run_ids)))
        except Exception:  # an older database opened read-only has no flow tables
            return {}
