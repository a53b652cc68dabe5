"""Schema v6 on both stores: ``events.traceparent`` and the ``consumed_event`` index.

A v5 database opens, migrates in place and keeps its runs, events and consumers; the events
page's read of which runs consumed each event seeks the new index (EXPLAIN, as
``test_runs_paging`` does for the run listings), never scanning the consumed table.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import ironflow
from ironflow import Engine, step
from ironflow.runtime.store import open_store
from ironflow.runtime.store.sqlite_schema import SCHEMA_VERSION
from ironflow.runtime.store.statements import EVENT_CONSUMERS
from ironflow.testing import VirtualClock


@ironflow.function(id="await-pay")
def await_pay(ctx: Any) -> Any:
    paid = yield step.wait_for_event("paid", "order.paid", timeout="1d")
    return paid.data


def _is_sqlite(store: Any) -> bool:
    return type(store).__name__.startswith("SQLite")


def _indexes(store: Any) -> set[str]:
    if _is_sqlite(store):
        return {row[0] for row in store.query("SELECT name FROM sqlite_master WHERE type='index'")}
    found = store.query("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {row[0] for row in found}


def _back_to_v5(store: Any) -> None:
    for statement in (
        "DROP INDEX consumed_event",
        "ALTER TABLE events DROP COLUMN traceparent",
        "UPDATE ironflow_meta SET value = '5' WHERE key = 'schema_version'",
    ):
        store.query(statement)


def test_a_v5_database_migrates_to_v6_keeping_its_events_and_runs(
    store_url: str, clock: VirtualClock
) -> None:
    engine = Engine(store_url, clock=clock)
    engine.register(await_pay)
    woken = engine.start("await-pay")
    engine.run_until_idle()
    paid_id, _ = engine.emit_event("order.paid", {"order": 1})
    engine.run_until_idle()
    assert engine.wait(woken) == {"order": 1}
    waiting = engine.start("await-pay")
    engine.run_until_idle()
    engine.close()

    raw: Any = open_store(store_url)
    _back_to_v5(raw)
    assert "consumed_event" not in _indexes(raw)
    raw.close()
    # Read-only (the CLI's reading commands) a v5 database is read as it is.
    reader = Engine(open_store(store_url, read_only=True))
    assert reader.store.event_consumers([paid_id]) == [(paid_id, woken)]
    assert reader.get_run(waiting).status == "waiting"
    reader.close()

    again = Engine(store_url, clock=clock)  # migrates
    try:
        store: Any = again.store
        assert SCHEMA_VERSION == 6 and store.schema_version() == 6
        assert "consumed_event" in _indexes(store)
        # The events written before keep their rows, with no trace context (NULL).
        assert store.query("SELECT id, traceparent FROM events") == [(paid_id, None)]
        assert store.event_consumers([paid_id]) == [(paid_id, woken)]
        again.register(await_pay)
        second_id, _ = again.emit_event("order.paid", {"order": 2})
        again.run_until_idle()
        assert again.wait(waiting) == {"order": 2}
        assert again.get_run(woken).output == {"order": 1}
        assert store.event_consumers([second_id]) == [(second_id, waiting)]
    finally:
        again.close()


@pytest.mark.sqlite_only
def test_a_sqlite_database_of_a_newer_version_than_6_is_refused(store_url: str) -> None:
    Engine(store_url).close()
    raw: Any = open_store(store_url)
    raw.query("UPDATE ironflow_meta SET value = '7' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(ironflow.errors.StoreError, match=r"version 7, newer than .*\(6\)"):
        Engine(store_url)


EVENTS = 3000
RUNS_PER_EVENT = 10


def test_the_events_pages_consumer_read_seeks_the_consumed_event_index(engine: Engine) -> None:
    store: Any = engine.store
    sqlite = _is_sqlite(store)
    last = EVENTS * RUNS_PER_EVENT - 1  # consumed rows, made in one statement
    if sqlite:
        store.query(
            f"WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {last}) "
            f"INSERT INTO consumed SELECT printf('run-%06d', n), "
            f"printf('event-%04d', n / {RUNS_PER_EVENT}) FROM g"
        )
    else:
        store.query(
            f"INSERT INTO consumed SELECT 'run-' || lpad(g::text, 6, '0'), "
            f"'event-' || lpad((g / {RUNS_PER_EVENT})::text, 4, '0') "
            f"FROM generate_series(0, {last}) AS g"
        )
        store.query("ANALYZE consumed")
    ids = [f"event-{e:04d}" for e in range(EVENTS - 50, EVENTS)]  # a page: the newest 50
    found = store.event_consumers(ids)
    assert len(found) == len(ids) * RUNS_PER_EVENT
    assert {event_id for event_id, _ in found} == set(ids)
    sql = EVENT_CONSUMERS.format(marks=", ".join([store.MARK] * len(ids)))
    rows = store.query(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, ids)
    plan = "\n".join(str(row[-1] if sqlite else row[0]) for row in rows)
    if sqlite:
        assert "SEARCH consumed USING COVERING INDEX consumed_event (event_id=?)" in plan, plan
        assert "SCAN consumed" not in plan, plan
    else:
        # An index-only scan, or a plain or bitmap one when the visibility map is not set yet.
        assert re.search(r"Index (Only )?Scan (using|on) consumed_event", plan), plan
        assert "Seq Scan" not in plan, plan
