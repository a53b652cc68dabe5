"""A round's verbs on SQLite: take runs' leases, read their histories and mail, claim due
timers, and write the round's ``Batch`` under the lease fence (``commit_round``, the batch
write: a fixed few ``executemany`` calls whatever the number of runs, every update naming the
owner, and nothing written if a run's lease moved).

``{marks}`` / ``{fids}`` in a statement: as many ``?`` as ids; ``{owner}``: the worker id,
quoted, inline (one prepared text per worker, so ``executemany`` reuses it). The texts and
their query plans were tuned: change one only with the benchmarks side by side. The verbs of
starts, emits and control, and the transaction itself, are in ``sqlite_tx``.
"""

from __future__ import annotations

from typing import Any

from ironflow.commands import kinds
from ironflow.history.events import HistoryEvent
from ironflow.runtime.store import rows
from ironflow.runtime.store.batch import Batch
from ironflow.runtime.store.errors import LeaseLost, StoreError
from ironflow.runtime.store.statements import StatementTransaction

# History (append-only: triggers refuse updates and deletes).
HISTORIES = "SELECT run_id, seq, type, ts_us, body FROM history WHERE {where} ORDER BY run_id, seq"

# Leases. A pending run is running from here (its first round starts its first steps, or
# parks or ends it): marked so in the same statement, not with one more update.
# ``{version}``: the taker's code version of each function (see ``take_runs``).
TAKE_RUNS = (
    "UPDATE runs SET lease_owner = ?, lease_until_us = ?{version}{clear}, "
    "status = CASE status WHEN 'pending' THEN 'running' ELSE status END "
    "WHERE id IN ({marks}) "
    "AND status NOT IN ('completed', 'failed', 'cancelled', 'blocked', 'queued') "
    # +function_id: by primary key, never by the function's index (without statistics, SQLite
    # prefers it for a list of ids, and walks every run of the function: O(n) per take).
    "AND +function_id IN ({fids}) "
    "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until_us < ?) "
    "RETURNING id, function_id, event_pos, parent_run_id, parent_step_id, "
    "notify_parent, status, trigger"
)
INSERT_HISTORY = "INSERT INTO history VALUES (?, ?, ?, ?, ?)"

# Mail.
CLEAR_READY = "UPDATE runs SET ready = 0 WHERE id IN ({marks})"
TAKE_MAIL = "DELETE FROM inbox WHERE run_id IN ({marks}) RETURNING pos, run_id, type, body"
MAIL_OF = "SELECT pos, run_id, type, body FROM inbox WHERE run_id IN ({marks}) ORDER BY pos"
DROP_MAIL = "DELETE FROM inbox WHERE pos IN ({marks})"
# Mail sent after the round read its mail keeps the run flagged: it is read next round.
UNREADY = (
    "UPDATE runs SET ready = 0 WHERE id IN ({marks}) "
    "AND NOT EXISTS (SELECT 1 FROM inbox WHERE inbox.run_id = runs.id)"
)
# A parent that already ended (its invoke timed out, say) is not told.
NOTIFY_PARENT = (
    "INSERT INTO inbox (run_id, type, ts_us, body) SELECT ?, ?, ?, ? WHERE EXISTS "
    "(SELECT 1 FROM runs WHERE id = ?1 "
    "AND status NOT IN ('completed', 'failed', 'cancelled'))"
)
WAKE_PARENT = (
    "UPDATE runs SET ready = 1 WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')"
)

# A round's commit (under the lease fence: every update names the owner).
FENCED = "SELECT COUNT(*) FROM runs WHERE id IN ({marks}) AND lease_owner = ?"
MARK_RUNNING = (
    "UPDATE runs SET status = 'running', updated_us = ? WHERE id = ? AND lease_owner = '{owner}'"
)
MARK_WAITING = (
    "UPDATE runs SET status = 'waiting', updated_us = ?, "
    "lease_owner = NULL, lease_until_us = NULL WHERE id = ? "
    "AND lease_owner = '{owner}'"
)
MARK_ENDED = (
    "UPDATE runs SET status = ?, output = ?, error = ?, ready = 0, "
    "updated_us = ?, ended_us = ?, lease_owner = NULL, lease_until_us = NULL "
    "WHERE id = ? AND lease_owner = '{owner}'"
)
DROP_OF_ENDED = ("timers", "waits", "inbox")
DROP_ALL_OF = "DELETE FROM {table} WHERE run_id IN ({marks})"

# Timers and waits a round claims or drops.
DELETE_TIMER = "DELETE FROM timers WHERE run_id = ? AND step_id = ?"
DELETE_WAIT = "DELETE FROM waits WHERE run_id = ? AND step_id = ?"
CLAIM_WAIT = "DELETE FROM waits WHERE run_id = ? AND step_id = ? RETURNING run_id"
CLAIM_TIMER = "DELETE FROM timers WHERE run_id = ? AND step_id = ? AND due_us <= ? RETURNING kind"


def marks(values: Any) -> str:
    return ",".join("?" * len(values))


def chunks(values: list[str], size: int = 400) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _quote(text: str) -> str:
    return text.replace("'", "''")


def read_histories(
    conn: Any, where: str, params: Any, corrupt: dict[str, StoreError] | None = None
) -> dict[str, list[HistoryEvent]]:
    with rows.gc_paused():  # over the fetch too: its rows are many objects at once
        found = conn.execute(HISTORIES.format(where=where), params).fetchall()
        return rows.decode_histories(found, corrupt)


class SQLiteRound(StatementTransaction):
    """The round's verbs of ``SQLiteTransaction`` (which runs them on its connection).

    A round's transaction is ``fenced`` once it takes runs or commits a batch: a constraint
    that fails in it means another worker wrote to a run of the batch, and is ``LeaseLost``."""

    __slots__ = ()

    # --- a round --------------------------------------------------------------------------

    def take_runs(
        self,
        run_ids: list[str],
        mail: set[str],
        owner: str,
        until_us: int,
        now_us: int,
        functions: tuple[str, ...],
        versions: tuple[str, ...] = (),
    ) -> list[tuple[Any, ...]]:
        self.fenced = True
        conn = self.conn
        fids = marks(functions)
        # The row is rewritten anyway (the lease): recording the code version costs nothing.
        version = ""
        pairs: list[str] = []
        if versions:
            version = (
                ", code_version = CASE function_id"
                + " WHEN ? THEN ?" * len(versions)
                + " ELSE code_version END"
            )
            for fid, code in zip(functions, versions, strict=True):
                pairs += (fid, code)
        with_mail = [run_id for run_id in run_ids if run_id in mail]
        without = [run_id for run_id in run_ids if run_id not in mail]
        groups = [(chunk, ", ready = 0") for chunk in chunks(with_mail)]
        groups += [(chunk, "") for chunk in chunks(without)]
        taken: list[tuple[Any, ...]] = []
        for chunk, clear in groups:
            taken += conn.execute(
                TAKE_RUNS.format(version=version, clear=clear, marks=marks(chunk), fids=fids),
                (owner, until_us, *pairs, *chunk, *functions, owner, now_us),
            ).fetchall()
        return taken

    def histories(
        self, run_ids: list[str], corrupt: dict[str, StoreError] | None = None
    ) -> dict[str, list[HistoryEvent]]:
        if len(run_ids) <= 400:
            return read_histories(self.conn, f"run_id IN ({marks(run_ids)})", run_ids, corrupt)
        found: dict[str, list[HistoryEvent]] = {}
        for chunk in chunks(run_ids):
            found.update(read_histories(self.conn, f"run_id IN ({marks(chunk)})", chunk, corrupt))
        return found

    def append_history(self, rows: list[tuple[Any, ...]]) -> None:
        self.conn.executemany(INSERT_HISTORY, rows)

    def take_mail(self, run_ids: list[str], warm: list[str]) -> list[tuple[Any, ...]]:
        conn = self.conn
        if warm:
            conn.execute(CLEAR_READY.format(marks=marks(warm)), warm)
        return sorted(conn.execute(TAKE_MAIL.format(marks=marks(run_ids)), run_ids).fetchall())

    def take_timers(self, keys: list[tuple[str, str, str]], now_us: int) -> set[tuple[str, str]]:
        conn = self.conn
        claimed = set()
        for run_id, step_id, kind in keys:
            # A wait's timer fires only while its wait is there (no event took it first).
            wait = kind == kinds.TIMER_WAIT
            if wait and conn.execute(CLAIM_WAIT, (run_id, step_id)).fetchone() is None:
                continue
            if conn.execute(CLAIM_TIMER, (run_id, step_id, now_us)).fetchone() is not None:
                claimed.add((run_id, step_id))
        return claimed

    def mail_of(self, run_ids: list[str]) -> list[tuple[Any, ...]]:
        conn = self.conn
        found: list[tuple[Any, ...]] = []
        for chunk in chunks(run_ids):
            found += conn.execute(MAIL_OF.format(marks=marks(chunk)), chunk).fetchall()
        if len(run_ids) > 400:
            found.sort()
        return found

    def drop_mail(self, positions: list[int], run_ids: list[str]) -> None:
        conn = self.conn
        for start in range(0, len(positions), 400):
            chunk = positions[start : start + 400]
            conn.execute(DROP_MAIL.format(marks=marks(chunk)), chunk)
        for ids in chunks(run_ids):
            conn.execute(UNREADY.format(marks=marks(ids)), ids)

    def commit_round(self, batch: Batch, owner: str) -> None:
        self.fenced = True
        conn = self.conn
        if batch.timers_done:
            conn.executemany(DELETE_TIMER, batch.timers_done)
        if batch.waits_done:
            conn.executemany(DELETE_WAIT, batch.waits_done)
        if batch.history:
            conn.executemany(INSERT_HISTORY, batch.history)
        expected = len(batch.running) + len(batch.waiting) + len(batch.ended) + len(batch.fenced)
        changed = 0
        for chunk in chunks(batch.fenced):
            changed += conn.execute(FENCED.format(marks=marks(chunk)), (*chunk, owner)).fetchone()[
                0
            ]
        quoted = _quote(owner)
        if batch.running:
            changed += conn.executemany(MARK_RUNNING.format(owner=quoted), batch.running).rowcount
        if batch.waiting:
            changed += conn.executemany(MARK_WAITING.format(owner=quoted), batch.waiting).rowcount
        if batch.ended:
            changed += conn.executemany(MARK_ENDED.format(owner=quoted), batch.ended).rowcount
            for chunk in chunks(batch.finished):
                in_chunk = marks(chunk)
                for table in DROP_OF_ENDED:
                    conn.execute(DROP_ALL_OF.format(table=table, marks=in_chunk), chunk)
        if changed != expected:
            # A run's lease moved to another worker under us: write nothing of this batch.
            raise LeaseLost(f"lease lost: {changed} of {expected} runs still ours")
        if batch.notify:
            conn.executemany(NOTIFY_PARENT, batch.notify)
            conn.executemany(WAKE_PARENT, [(row[0],) for row in batch.notify])
