"""A round's commit on PostgreSQL as one multi-statement query: the lease fence first (it locks
the round's runs, or raises ``LEASE_LOST_STATE`` and nothing is written), then the round's
writes in bulk, each an array statement (``unnest``), whatever the number of runs.

One query is one network round trip; psycopg's ``ClientCursor`` binds the parameters
client-side (literals quoted by its dumpers), as a multi-statement query needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ironflow.runtime.store.base import Batch

_TERMINAL = "('completed', 'failed', 'cancelled')"

INSERT_HISTORY = (
    "INSERT INTO history (run_id, seq, type, ts_us, body) "
    "SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::bigint[], %s::text[])"
)

# A round's commit, one query: the fence first (it locks the runs, or raises LEASE_LOST_STATE
# and nothing is written), then the writes in bulk.
FENCE = "SELECT ironflow_fence(%s, %s::text[])"
DELETE_TIMERS = (
    "DELETE FROM timers t USING unnest(%s::text[], %s::text[]) AS u(r, s) "
    "WHERE t.run_id = u.r AND t.step_id = u.s"
)
DELETE_WAITS = (
    "DELETE FROM waits w USING unnest(%s::text[], %s::text[]) AS u(r, s) "
    "WHERE w.run_id = u.r AND w.step_id = u.s"
)
MARK_RUNNING = (
    "UPDATE runs SET status = 'running', updated_us = u.ts FROM unnest(%s::bigint[], %s::text[]) "
    "AS u(ts, id) WHERE runs.id = u.id AND lease_owner = %s"
)
MARK_WAITING = (
    "UPDATE runs SET status = 'waiting', updated_us = u.ts, lease_owner = NULL, "
    "lease_until_us = NULL FROM unnest(%s::bigint[], %s::text[]) AS u(ts, id) "
    "WHERE runs.id = u.id AND lease_owner = %s"
)
MARK_ENDED = (
    "UPDATE runs SET status = u.status, output = u.output, error = u.error, ready = 0, "
    "updated_us = u.ts, ended_us = u.ended, lease_owner = NULL, lease_until_us = NULL "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[]) "
    "AS u(status, output, error, ts, ended, id) WHERE runs.id = u.id AND lease_owner = %s"
)
DROP_OF_ENDED = tuple(
    f"DELETE FROM {table} WHERE run_id = ANY(%s::text[])" for table in ("timers", "waits", "inbox")
)
# A parent that already ended (its invoke timed out, say) is not told.
NOTIFY_PARENTS = (
    "INSERT INTO inbox (run_id, type, ts_us, body) SELECT u.r, u.t, u.ts, u.b "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[]) WITH ORDINALITY "
    "AS u(r, t, ts, b, n) JOIN runs ON runs.id = u.r "
    f"WHERE runs.status NOT IN {_TERMINAL} ORDER BY u.n"
)


def columns(found: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as columns (the arrays ``unnest`` takes)."""
    return [list(column) for column in zip(*found, strict=True)]


def round_query(batch: Batch, owner: str) -> tuple[list[str], list[Any]]:
    """The statements and parameters of ``batch``'s commit, the fence first."""
    statements: list[str] = []
    params: list[Any] = []
    fenced = {*batch.fenced}
    fenced.update(row[1] for row in batch.running)
    fenced.update(row[1] for row in batch.waiting)
    fenced.update(row[5] for row in batch.ended)
    if fenced:
        statements.append(FENCE)
        params += [owner, sorted(fenced)]
    if batch.timers_done:
        statements.append(DELETE_TIMERS)
        params += columns(batch.timers_done)
    if batch.waits_done:
        statements.append(DELETE_WAITS)
        params += columns(batch.waits_done)
    if batch.history:
        statements.append(INSERT_HISTORY)
        params += columns(batch.history)
    for rows_, statement in (
        (batch.running, MARK_RUNNING),
        (batch.waiting, MARK_WAITING),
        (batch.ended, MARK_ENDED),
    ):
        if rows_:
            statements.append(statement)
            params += [*columns(rows_), owner]
    if batch.finished:
        for statement in DROP_OF_ENDED:
            statements.append(statement)
            params.append(list(batch.finished))
    if batch.notify:
        statements.append(NOTIFY_PARENTS)
        params += columns(batch.notify)
    return statements, params
