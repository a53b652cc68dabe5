"""The PostgreSQL store's flow-control tables (schema version 4) and the statements of
``flow_state``, named.

Concurrent writers are kept apart by the advisory stripes (see ``postgres.py``): a
transaction takes every stripe shared before it touches a flow row (``state_lock``), as run
creation does, so a flow row is always locked after the stripes, never before (no deadlock
with an emit, which holds its stripe exclusive). Emits take turns on the stripes already, so
their read-then-write of a key (an idempotency key, a rate-limit log, a batch) is never
interleaved; a worker judging deferred arrivals also takes ``STATE_LOCK`` exclusive (one at
a time among them). Due rows are claimed by ``DELETE ... RETURNING`` or by an ``UPDATE``
that checks the due time it read: the row lock and the re-check under READ COMMITTED give
each due row to one transaction.
"""

from __future__ import annotations

from typing import Any

from ironflow.runtime.store.postgres_schema import STRIPES

# An advisory lock object after the stripes (0..STRIPES-1) and MIGRATE_LOCK (STRIPES).
STATE_LOCK = STRIPES + 1

UPGRADE_V4 = (
    "CREATE TABLE IF NOT EXISTS flow_state (function_id TEXT NOT NULL, kind TEXT NOT NULL, "
    "key TEXT NOT NULL, due_us BIGINT, first_us BIGINT NOT NULL, until_us BIGINT, "
    "body TEXT NOT NULL, PRIMARY KEY (function_id, kind, key))",
    "CREATE INDEX IF NOT EXISTS flow_state_due ON flow_state (due_us) WHERE due_us IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS flow_skips (pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "event_id TEXT NOT NULL, function_id TEXT NOT NULL, reason TEXT NOT NULL, "
    "detail TEXT NOT NULL, ts_us BIGINT NOT NULL)",
)

STATE_GET = (
    "SELECT due_us, first_us, until_us, body FROM flow_state "
    "WHERE function_id = %s AND kind = %s AND key = %s FOR UPDATE"
)
STATE_PUT = (
    "INSERT INTO flow_state VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (function_id, kind, key) DO UPDATE SET due_us = excluded.due_us, "
    "first_us = excluded.first_us, until_us = excluded.until_us, body = excluded.body"
)
STATE_TAKE = (
    "DELETE FROM flow_state WHERE function_id = %s AND kind = %s AND key = %s "
    "AND due_us <= %s RETURNING first_us, body"
)
STATE_MOVE = (
    "UPDATE flow_state SET due_us = %s, body = %s "
    "WHERE function_id = %s AND kind = %s AND key = %s AND due_us = %s"
)
STATE_DROP = "DELETE FROM flow_state WHERE function_id = %s AND kind = %s AND key = %s"
STATE_KEYS = "SELECT key FROM flow_state WHERE function_id = %s AND kind = %s"
REGISTERED_SETTINGS = "SELECT id, settings FROM functions"
EVENT_STARTED_AT = "SELECT started FROM events WHERE pos = %s"
SET_EVENT_STARTED_AT = "UPDATE events SET started = %s WHERE pos = %s"
RECORD_SKIP = (
    "INSERT INTO flow_skips (event_id, function_id, reason, detail, ts_us) "
    "VALUES (%s, %s, %s, %s, %s)"
)
STATE_DUE = (
    "SELECT function_id, kind, key, due_us FROM flow_state WHERE due_us <= %s "
    "AND function_id IN ({fids}) ORDER BY due_us, key LIMIT %s"
)
STATE_NEXT = "SELECT MIN(due_us) FROM flow_state WHERE due_us > %s AND function_id IN ({fids})"
STATE_PRUNE = "DELETE FROM flow_state WHERE due_us IS NULL AND until_us < %s"
LIST_SKIPS = (
    "SELECT s.event_id, e.name, e.data, e.ts_us, s.function_id, s.reason, s.detail, s.ts_us "
    "FROM flow_skips s JOIN events e ON e.id = s.event_id"
)


class PostgresFlowStateStatements:
    """The texts ``FlowStateVerbs`` and ``FlowStateReads`` run on PostgreSQL, and its
    ``state_lock``."""

    __slots__ = ()

    STATE_GET = STATE_GET
    STATE_PUT = STATE_PUT
    STATE_TAKE = STATE_TAKE
    STATE_MOVE = STATE_MOVE
    STATE_DROP = STATE_DROP
    STATE_KEYS = STATE_KEYS
    REGISTERED_SETTINGS = REGISTERED_SETTINGS
    EVENT_STARTED_AT = EVENT_STARTED_AT
    SET_EVENT_STARTED_AT = SET_EVENT_STARTED_AT
    RECORD_SKIP = RECORD_SKIP
    STATE_DUE = STATE_DUE
    STATE_NEXT = STATE_NEXT
    STATE_PRUNE = STATE_PRUNE
    LIST_SKIPS = LIST_SKIPS

    def state_lock(self, serialize: bool = False) -> None:
        lock: Any = getattr(self, "lock")  # noqa: B009  (PostgresTransaction.lock)
        lock(exclusive=(STATE_LOCK,) if serialize else (), shared=range(STRIPES))
