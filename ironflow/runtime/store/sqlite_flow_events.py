"""The SQLite store's flow-control tables (schema version 4) and the statements of
``flow_state``, named. One writer at a time (``BEGIN IMMEDIATE``) keeps a read of a flow
row and the write it decides together: no lock of their own is needed here.
"""

from __future__ import annotations

import sqlite3

# Version 4 (issue 13): flow_state holds keyed flow rows (see flow_state), flow_skips the
# events that started no run and why. Due rows are found by due time (partial index: windows
# without a due time are not in it).
UPGRADE_V4 = (
    "CREATE TABLE IF NOT EXISTS flow_state (function_id TEXT NOT NULL, kind TEXT NOT NULL, "
    "key TEXT NOT NULL, due_us INTEGER, first_us INTEGER NOT NULL, until_us INTEGER, "
    "body TEXT NOT NULL, PRIMARY KEY (function_id, kind, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS flow_state_due ON flow_state (due_us) WHERE due_us IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS flow_skips (pos INTEGER PRIMARY KEY AUTOINCREMENT, "
    "event_id TEXT NOT NULL, function_id TEXT NOT NULL, reason TEXT NOT NULL, "
    "detail TEXT NOT NULL, ts_us INTEGER NOT NULL)",
)

STATE_GET = (
    "SELECT due_us, first_us, until_us, body FROM flow_state "
    "WHERE function_id = ? AND kind = ? AND key = ?"
)
STATE_PUT = "INSERT OR REPLACE INTO flow_state VALUES (?, ?, ?, ?, ?, ?, ?)"
STATE_TAKE = (
    "DELETE FROM flow_state WHERE function_id = ? AND kind = ? AND key = ? AND due_us <= ? "
    "RETURNING first_us, body"
)
STATE_MOVE = (
    "UPDATE flow_state SET due_us = ?, body = ? "
    "WHERE function_id = ? AND kind = ? AND key = ? AND due_us = ?"
)
STATE_DROP = "DELETE FROM flow_state WHERE function_id = ? AND kind = ? AND key = ?"
STATE_KEYS = "SELECT key FROM flow_state WHERE function_id = ? AND kind = ?"
REGISTERED_SETTINGS = "SELECT id, settings FROM functions"
EVENT_STARTED_AT = "SELECT started FROM events WHERE pos = ?"
SET_EVENT_STARTED_AT = "UPDATE events SET started = ? WHERE pos = ?"
RECORD_SKIP = (
    "INSERT INTO flow_skips (event_id, function_id, reason, detail, ts_us) VALUES (?, ?, ?, ?, ?)"
)
# ``{fids}``: as many ``?`` as function ids.
STATE_DUE = (
    "SELECT function_id, kind, key, due_us FROM flow_state WHERE due_us <= ? "
    "AND function_id IN ({fids}) ORDER BY due_us, key LIMIT ?"
)
STATE_NEXT = "SELECT MIN(due_us) FROM flow_state WHERE due_us > ? AND function_id IN ({fids})"
STATE_PRUNE = "DELETE FROM flow_state WHERE due_us IS NULL AND until_us < ?"
LIST_SKIPS = (
    "SELECT s.event_id, e.name, e.data, e.ts_us, s.function_id, s.reason, s.detail, s.ts_us "
    "FROM flow_skips s JOIN events e ON e.id = s.event_id"
)


class SQLiteFlowStateStatements:
    """The texts ``FlowStateVerbs`` and ``FlowStateReads`` run on SQLite."""

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


def upgrade_to_v4(conn: sqlite3.Connection) -> None:
    """Create the flow-control tables (inside the migration's transaction)."""
    for statement in UPGRADE_V4:
        conn.execute(statement)
