"""A round's commit on PostgreSQL: one call of ``ironflow_round_2``, a function installed with
the schema. It runs the lease fence first (it locks the round's runs, or raises
``LEASE_LOST_STATE`` and nothing is written), then the round's writes in bulk, each an array
statement (``unnest``) whatever the number of runs, then the wake-up NOTIFY if the round sends
one. A part the batch lacks is passed as NULL and skipped.

Why a function, not a multi-statement query: the call is one statement, prepared once per
connection (``prepare=True``) with its parameters sent binary, and plpgsql plans the statements
in it once per session; the server neither parses nor plans per round, and the client quotes
nothing. Sent alone in autocommit it is its own transaction: an ordinary step is one round trip
and one commit (see ``PostgresTransaction.commit_round``).

The name carries a version: a change to the function is a new name, so engines of two
versions sharing a database (a rolling deploy) each call their own.

**The plain step.** Most rounds are one run's step: its history rows (the step's result and the
next command), its lease checked, maybe its row set running, nothing else. That shape is one
plain statement instead (``plain_round``): the fence is a CTE that locks the run's row and keeps
it only if this worker holds it, and the rows are inserted from it, so a lease that moved inserts
nothing (the caller sees the row count and raises ``LeaseLost``). Scalar parameters, no arrays
and no plpgsql: the client encodes a few values, the server runs one prepared plan. A round that
read the run's mail (a resumed wait's first step) drops it in the same statement, only if the
lease held, and clears the run's ``ready`` flag in the fence's update (``MailDrop``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ironflow.runtime.store.base import Batch

# What the lease fence raises (a user-defined SQLSTATE: no standard class starts with IF).
LEASE_LOST_STATE = "IFL01"
# 2: ``enable_seqscan = off`` (``ROUND_FUNCTION``); 1 planned its statements by the tables'
# first size. An engine of version 1 sharing the database keeps calling its own.
ROUND_FUNCTION_NAME = "ironflow_round_2"
_TERMINAL = "('completed', 'failed', 'cancelled')"

INSERT_HISTORY = (
    "INSERT INTO history (run_id, seq, type, ts_us, body) "
    "SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::bigint[], %s::text[])"
)
# The lock is taken by id (the primary key), not by id and owner: the planner would pick the
# lease_owner index and scan every run the worker holds. Every statement here finds its rows by
# a key, so sequential scans are off for the call: plpgsql keeps one generic plan per statement
# for the session, planned while the tables may still be tiny (a burst on a fresh schema), and
# a seq scan planned then reads every run and every history row each round as the tables grow
# (rows read grew with the square of the runs). The setting costs the call a GUC save/restore.
# The updates check the owner as ``IS TRUE`` (no index condition): else they read every run the
# worker holds through the lease_owner index, not their runs by id.
# A parent that already ended (its invoke timed out, say) is not told of its child's end.
ROUND_FUNCTION = (
    f"CREATE OR REPLACE FUNCTION {ROUND_FUNCTION_NAME}(owner TEXT, fenced TEXT[], "
    "t_run TEXT[], t_step TEXT[], w_run TEXT[], w_step TEXT[], "
    "h_run TEXT[], h_seq INT[], h_type TEXT[], h_ts BIGINT[], h_body TEXT[], "
    "r_ts BIGINT[], r_id TEXT[], p_ts BIGINT[], p_id TEXT[], "
    "e_status TEXT[], e_output TEXT[], e_error TEXT[], e_ts BIGINT[], e_ended BIGINT[], "
    "e_id TEXT[], finished TEXT[], m_run TEXT[], m_type TEXT[], m_ts BIGINT[], m_body TEXT[], "
    "channel TEXT) RETURNS void LANGUAGE plpgsql SET enable_seqscan = off AS $$ "
    "DECLARE held TEXT[]; BEGIN "
    "IF fenced IS NOT NULL THEN "
    "SELECT coalesce(array_agg(r.id) FILTER (WHERE r.lease_owner = owner), '{}') INTO held "
    "FROM (SELECT id, lease_owner FROM runs WHERE id = ANY(fenced) ORDER BY id "
    "FOR NO KEY UPDATE) AS r; "
    "IF cardinality(held) <> cardinality(fenced) THEN RAISE EXCEPTION USING "
    f"ERRCODE = '{LEASE_LOST_STATE}', "
    "MESSAGE = format('lease lost: %s of %s runs still held by %s', "
    "cardinality(held), cardinality(fenced), owner), "
    "DETAIL = array_to_string(ARRAY(SELECT unnest(fenced) EXCEPT SELECT unnest(held) "
    "ORDER BY 1), ' '); END IF; END IF; "
    "IF t_run IS NOT NULL THEN DELETE FROM timers t USING unnest(t_run, t_step) AS u(r, s) "
    "WHERE t.run_id = u.r AND t.step_id = u.s; END IF; "
    "IF w_run IS NOT NULL THEN DELETE FROM waits w USING unnest(w_run, w_step) AS u(r, s) "
    "WHERE w.run_id = u.r AND w.step_id = u.s; END IF; "
    "IF h_run IS NOT NULL THEN INSERT INTO history (run_id, seq, type, ts_us, body) "
    "SELECT * FROM unnest(h_run, h_seq, h_type, h_ts, h_body); END IF; "
    "IF r_id IS NOT NULL THEN UPDATE runs SET status = 'running', updated_us = u.ts "
    "FROM unnest(r_ts, r_id) AS u(ts, id) WHERE runs.id = u.id AND (lease_owner = owner) IS TRUE; "
    "END IF; "
    "IF p_id IS NOT NULL THEN UPDATE runs SET status = 'waiting', updated_us = u.ts, "
    "lease_owner = NULL, lease_until_us = NULL FROM unnest(p_ts, p_id) AS u(ts, id) "
    "WHERE runs.id = u.id AND (lease_owner = owner) IS TRUE; END IF; "
    "IF e_id IS NOT NULL THEN UPDATE runs SET status = u.status, output = u.output, "
    "error = u.error, ready = 0, updated_us = u.ts, ended_us = u.ended, lease_owner = NULL, "
    "lease_until_us = NULL FROM unnest(e_status, e_output, e_error, e_ts, e_ended, e_id) "
    "AS u(status, output, error, ts, ended, id) "
    "WHERE runs.id = u.id AND (lease_owner = owner) IS TRUE; "
    "END IF; "
    "IF finished IS NOT NULL THEN DELETE FROM timers WHERE run_id = ANY(finished); "
    "DELETE FROM waits WHERE run_id = ANY(finished); "
    "DELETE FROM inbox WHERE run_id = ANY(finished); END IF; "
    "IF m_run IS NOT NULL THEN INSERT INTO inbox (run_id, type, ts_us, body) "
    "SELECT u.r, u.t, u.ts, u.b FROM unnest(m_run, m_type, m_ts, m_body) WITH ORDINALITY "
    "AS u(r, t, ts, b, n) JOIN runs ON runs.id = u.r "
    f"WHERE runs.status NOT IN {_TERMINAL} ORDER BY u.n; END IF; "
    "IF channel IS NOT NULL THEN PERFORM pg_notify(channel, ''); END IF; "
    "END $$"
)
ROUND = (
    f"SELECT {ROUND_FUNCTION_NAME}(%b, %b::text[], %b::text[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::int[], %b::text[], %b::bigint[], %b::text[], %b::bigint[], "
    "%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], "
    "%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], "
    "%b)"
)

_NONE2 = (None, None)


def columns(found: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as columns (the arrays ``unnest`` takes)."""
    return [list(column) for column in zip(*found, strict=True)]


def round_params(batch: Batch, owner: str, channel: str | None) -> list[Any] | None:
    """The arguments of ``ROUND`` for ``batch`` (NOTIFY on ``channel`` if given), or ``None``
    if it writes nothing."""
    fenced = {*batch.fenced}
    fenced.update(row[1] for row in batch.running)
    fenced.update(row[1] for row in batch.waiting)
    fenced.update(row[5] for row in batch.ended)
    history = batch.history
    if not (fenced or history or batch.timers_done or batch.waits_done or batch.notify) and not (
        batch.finished
    ):
        return None
    params: list[Any] = [owner, sorted(fenced) if fenced else None]
    params += columns(batch.timers_done) if batch.timers_done else _NONE2
    params += columns(batch.waits_done) if batch.waits_done else _NONE2
    params += columns(history) if history else (None,) * 5
    params += columns(batch.running) if batch.running else _NONE2
    params += columns(batch.waiting) if batch.waiting else _NONE2
    params += columns(batch.ended) if batch.ended else (None,) * 6
    params.append(list(batch.finished) if batch.finished else None)
    params += columns(batch.notify) if batch.notify else (None,) * 4
    params.append(channel)
    return params


# The plain step (see the module docstring): at most this many history rows; more go through
# the function (one prepared statement per row count and fence kind).
PLAIN_ROWS = 4
# Locked by id (the primary key), the owner checked on the locked (newest) row version, as in
# the function's fence. A run set running is fenced by its UPDATE (the same row lock).
_PLAIN_LOCK = "SELECT id, lease_owner FROM runs WHERE id = %s FOR NO KEY UPDATE"
_PLAIN_RUNNING = (
    "UPDATE runs SET status = 'running', updated_us = %s WHERE id = %s AND lease_owner = %s "
    "RETURNING id, lease_owner"
)


# With mail: the fence is an update that clears the ready flag (set running too, if asked),
# and the mail read is deleted only if the fence kept the row.
_PLAIN_MAIL = (
    "UPDATE runs SET ready = 0{running} WHERE id = %s AND lease_owner = %s "
    "RETURNING id, lease_owner"
)
_DROP_HELD_MAIL = (
    ", d AS (DELETE FROM inbox WHERE pos = ANY(%s::bigint[]) AND EXISTS (SELECT FROM f))"
)


def _plain_sql(rows: int, running: bool, mail: bool) -> str:
    values = ", ".join(
        ["(%s::int, %s::text, %s::bigint, %s::text)"] + ["(%s, %s, %s, %s)"] * (rows - 1)
    )
    if mail:
        setting = ", status = 'running', updated_us = %s" if running else ""
        fence = _PLAIN_MAIL.format(running=setting) + ")" + _DROP_HELD_MAIL
    else:
        fence = (_PLAIN_RUNNING if running else _PLAIN_LOCK) + ")"
    # Locked, not updated: the owner is the statement's last parameter.
    held = " WHERE f.lease_owner = %s" if not (running or mail) else ""
    return (
        f"WITH f AS ({fence} INSERT INTO history (run_id, seq, type, ts_us, body) "
        f"SELECT f.id, v.seq, v.type, v.ts, v.body FROM f CROSS JOIN (VALUES {values}) "
        f"AS v(seq, type, ts, body){held}"
    )


PLAIN = {
    (n, running, mail): _plain_sql(n, running, mail)
    for n in range(1, PLAIN_ROWS + 1)
    for running in (False, True)
    for mail in (False, True)
}

# Mail a round read (``Transaction.drop_mail``): the inbox rows' positions, the runs whose
# ``ready`` flag is cleared. The flag is cleared whatever came since, only where set (no row
# rewritten): mail sent since ``mail_of`` is an inbox row, which discovery finds.
MailDrop = tuple[list[int], list[str]]
CLEAR_READY = "UPDATE runs SET ready = 0 WHERE id = ANY(%s::text[]) AND ready = 1"
DROP_MAIL = "DELETE FROM inbox WHERE pos = ANY(%s::bigint[])"


def plain_round(
    batch: Batch, owner: str, mail: MailDrop | None = None
) -> tuple[str, list[Any], str, str] | None:
    """The plain statement for ``batch`` (dropping ``mail``), its parameters, its run and
    ``owner``, if ``batch`` is one run's step and the mail is that run's (see the module
    docstring); ``None`` otherwise. It inserts ``len(history)`` rows, or none (and drops no
    mail) if the run's lease moved."""
    history = batch.history
    rows = len(history)
    if not 0 < rows <= PLAIN_ROWS or batch.waiting or batch.ended or batch.notify:
        return None
    if batch.finished or batch.timers_done or batch.waits_done:
        return None
    run_id = history[0][0]
    if mail is not None and any(other != run_id for other in mail[1]):
        return None
    running = batch.running
    if len(running) > 1 or (running and running[0][1] != run_id):
        return None
    for fenced in batch.fenced:
        if fenced != run_id:
            return None
    if not (running or batch.fenced):
        return None
    params: list[Any] = [running[0][0], run_id, owner] if running else [run_id]
    if mail is not None:
        params += [mail[0]] if running else [owner, mail[0]]
    for row in history:
        if row[0] != run_id:
            return None
        params += row[1:]
    if not (running or mail is not None):
        params.append(owner)
    return PLAIN[rows, bool(running), mail is not None], params, run_id, owner
