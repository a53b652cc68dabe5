"""Start gates (concurrency, throttle, priority, timeouts.start) on each store, on a virtual
clock: who starts when, what a held-back run says, and that the queue stays linear."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

import pytest
from click.testing import CliRunner

import ironflow
from ironflow import Concurrency, Engine, Priority, Singleton, Throttle, Timeouts, step
from ironflow.cli import cli
from ironflow.history.events import RunCancelled, RunStarted
from ironflow.testing import VirtualClock

ORDER: list[int] = []  # the order runs' bodies ran in (a module list: bodies run in-process)


def record(i: int) -> int:
    ORDER.append(i)
    return i


@pytest.fixture(autouse=True)
def _fresh_order() -> None:
    ORDER.clear()


@ironflow.function(id="held", concurrency=Concurrency(2, key="data.customer"))
def held(ctx):
    """Holds its slot until a ``go`` event for its ``i`` (a waiting run keeps its slot)."""
    yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
    return (yield step.run("body", record, ctx.event.data["i"]))


def statuses(engine: Engine, ids: list[str]) -> list[str]:
    return [engine.get_run(run_id).status for run_id in ids]


def test_concurrency_per_key_queues_in_order_and_says_why(engine: Engine) -> None:
    engine.register(held)
    ids = [engine.start("held", {"customer": "c-1", "i": i}) for i in range(5)]
    other = engine.start("held", {"customer": "c-2", "i": 9})
    engine.run_until_idle()
    assert statuses(engine, ids) == ["waiting", "waiting", "pending", "pending", "pending"]
    assert engine.get_run(other).status == "waiting"  # another key, another bucket
    queued = engine.get_run(ids[2])
    assert queued.waiting_for == "concurrency: 2 of 2 for key 'c-1'"
    pending = engine.list_runs(status="pending")
    assert sorted(run.id for run in pending) == sorted(ids[2:])
    assert {run.waiting_for for run in pending} == {"concurrency: 2 of 2 for key 'c-1'"}
    for i in range(5):  # each go ends one run; the next in line starts
        engine.emit("go", {"i": i})
        engine.run_until_idle()
        running = sum(s == "waiting" for s in statuses(engine, ids))
        assert running == min(2, 4 - i)
    assert ORDER == [0, 1, 2, 3, 4]
    assert statuses(engine, ids) == ["completed"] * 5


def test_a_plain_int_is_one_bucket(engine: Engine) -> None:
    @ironflow.function(id="one", concurrency=1)
    def one(ctx):
        yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(one)
    first, second = (engine.start("one", {"i": i, "customer": f"c{i}"}) for i in range(2))
    engine.run_until_idle()
    assert engine.get_run(second).waiting_for == "concurrency: 1 of 1"
    assert engine.get_run(first).waiting_for is None
    engine.emit("go", {"i": 0})
    engine.emit("go", {"i": 1})
    engine.run_until_idle()
    engine.run_until_idle()
    assert statuses(engine, [first, second]) == ["completed", "completed"]


def test_throttle_queues_every_run_and_starts_them_as_windows_open(
    engine: Engine, clock: VirtualClock
) -> None:
    @ironflow.function(id="paced", throttle=Throttle(2, "1m", key="data.account"))
    def paced(ctx):
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(paced)
    start = clock.now()
    ids = [engine.start("paced", {"account": "a", "i": i}) for i in range(5)]
    engine.run_until_idle()
    assert statuses(engine, ids) == ["completed"] * 2 + ["pending"] * 3
    next_at = (start + dt.timedelta(minutes=1)).isoformat()
    assert engine.get_run(ids[2]).waiting_for == f"throttle: next start at {next_at}"
    clock.advance("59s")
    engine.run_until_idle()
    assert sorted(ORDER) == [0, 1]  # the window has not opened yet
    clock.advance("1s")
    engine.run_until_idle()
    assert sorted(ORDER[2:]) == [2, 3]  # two at once (their bodies run side by side)
    clock.advance("1m")
    engine.run_until_idle()
    assert ORDER[4:] == [4]  # none dropped, in order
    assert statuses(engine, ids) == ["completed"] * 5


def test_priority_orders_the_queue_ties_by_arrival(engine: Engine) -> None:
    @ironflow.function(
        id="ranked", concurrency=1, priority=Priority(run=lambda event: event.data["p"])
    )
    def ranked(ctx):
        yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(ranked)
    priorities = [0, 0, 5, 1, 5, -3]  # run 0 takes the slot; the rest queue
    for i, p in enumerate(priorities):
        engine.start("ranked", {"i": i, "p": p})
    engine.run_until_idle()
    for _ in priorities:  # release whichever run holds the slot
        for i in range(len(priorities)):
            engine.emit("go", {"i": i})
        engine.run_until_idle()
    assert ORDER == [0, 2, 4, 3, 1, 5]


def test_a_run_pending_past_its_start_timeout_is_cancelled(
    engine: Engine, clock: VirtualClock
) -> None:
    @ironflow.function(id="late", concurrency=1, timeouts=Timeouts(start="1m"))
    def late(ctx):
        yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(late)
    first = engine.start("late", {"i": 0})
    second = engine.start("late", {"i": 1})
    engine.run_until_idle()
    clock.advance("59s")
    engine.run_until_idle()
    assert engine.get_run(second).status == "pending"
    clock.advance("1s")
    engine.run_until_idle()
    run = engine.get_run(second)
    assert run.status == "cancelled"
    assert run.error is not None and "not started within" in run.error.message
    assert [type(e) for e in engine.history(second)] == [RunStarted, RunCancelled]
    with pytest.raises(ironflow.CancelledError):
        engine.wait(second)
    assert engine.get_run(first).status == "waiting"  # it had started: no start timeout
    engine.emit("go", {"i": 0})
    engine.run_until_idle()
    assert engine.get_run(first).status == "completed"
    assert ORDER == [0]


def test_cancelling_a_queued_run_ends_it_at_once_and_the_queue_moves_on(
    engine: Engine,
) -> None:
    engine.register(held)
    ids = [engine.start("held", {"customer": "c", "i": i}) for i in range(4)]
    engine.run_until_idle()
    engine.cancel(ids[2])
    assert engine.get_run(ids[2]).status == "cancelled"
    engine.emit("go", {"i": 0})
    engine.run_until_idle()
    assert statuses(engine, ids) == ["completed", "waiting", "cancelled", "waiting"]


def test_a_blocked_run_keeps_its_slot(engine: Engine) -> None:
    engine.register(held)
    ids = [engine.start("held", {"customer": "c", "i": i}) for i in range(3)]
    engine.run_until_idle()
    with engine.store.transaction() as tx:
        tx.block(ids[0], '{"type": "X", "message": "broken"}', 0)
    engine.run_until_idle()
    assert statuses(engine, ids) == ["blocked", "waiting", "pending"]
    engine.cancel(ids[0])  # ended: its slot frees
    engine.run_until_idle()
    assert statuses(engine, ids) == ["cancelled", "waiting", "waiting"]


def test_runs_created_where_the_code_is_not_are_gated_by_the_worker(
    store_url: str, clock: VirtualClock
) -> None:
    worker = Engine(store_url, clock=clock)
    emitter = Engine(store_url, clock=clock)  # no functions: the CLI, the HTTP API
    try:
        worker.register(held)
        ids = [emitter.start("held", {"customer": "c", "i": i}) for i in range(4)]
        worker.run_until_idle()
        assert statuses(worker, ids).count("waiting") == 2
        assert statuses(worker, ids).count("pending") == 2
        for i in range(4):
            emitter.emit("go", {"i": i})
            worker.run_until_idle()
        worker.run_until_idle()
        assert statuses(worker, ids) == ["completed"] * 4
    finally:
        emitter.close()
        worker.close()


def test_runs_list_and_show_say_why_a_run_waits(store_url: str, clock: VirtualClock) -> None:
    engine = Engine(store_url, clock=clock)
    engine.register(held)
    ids = [engine.start("held", {"customer": "c-1", "i": i}) for i in range(3)]
    engine.run_until_idle()
    engine.close()
    listed = CliRunner().invoke(cli, ["runs", "list", "--db", store_url])
    assert listed.exit_code == 0, listed.output
    line = next(text for text in listed.output.splitlines() if text.startswith(ids[2]))
    assert "pending" in line and "concurrency: 2 of 2 for key 'c-1'" in line
    shown = CliRunner().invoke(cli, ["runs", "show", ids[2], "--db", store_url])
    assert "pending   concurrency: 2 of 2 for key 'c-1'" in shown.output


def test_a_function_without_options_touches_no_flow_table(engine: Engine) -> None:
    @ironflow.function(id="plain")
    def plain(ctx):
        return (yield step.run("body", record, 1))

    engine.register(plain)
    engine.start("plain")
    engine.run_until_idle()
    assert engine._driver.gated == {}
    for table in ("flow_queue", "flow_slots", "flow_starts", "flow_singletons"):
        assert engine.store.query(f"SELECT COUNT(*) FROM {table}")[0][0] == 0


@pytest.mark.sqlite_only
def test_starting_runs_queued_behind_concurrency_stays_linear(tmp_path) -> None:
    """Four times the queued runs execute four times the statements and four times the
    SQLite virtual-machine instructions (every one counted), both in all and on the
    flow-control tables, not sixteen: each admission is a few index seeks and each take a
    primary-key lookup, whatever the queue's length."""

    @ironflow.function(id="ten", concurrency=10)
    def ten(ctx):
        return (yield step.run("body", lambda: 1))

    def work(n: int) -> tuple[int, int, int]:
        engine = Engine(str(tmp_path / f"q{n}.db"), clock=VirtualClock(), durability="normal")
        engine.register(ten)
        statements, instructions, flow_instructions, in_flow = [0], [0], [0], [False]

        def trace(sql: str) -> None:
            statements[0] += 1
            in_flow[0] = "flow_" in sql

        def count() -> int:
            instructions[0] += 1
            flow_instructions[0] += in_flow[0]
            return 0

        conn: sqlite3.Connection = engine.store.conn  # type: ignore[attr-defined]
        conn.set_trace_callback(trace)
        conn.set_progress_handler(count, 1)
        for _ in range(n):
            engine.start("ten")
        engine.run_until_idle()
        conn.set_progress_handler(None, 0)
        conn.set_trace_callback(None)
        assert len(engine.list_runs(status="completed", limit=n + 1)) == n
        engine.close()
        return statements[0], instructions[0], flow_instructions[0]

    small, large = work(250), work(1000)
    assert small[0] > 250 * 10 and small[2] > 250 * 100, small  # all were counted
    assert large[0] / small[0] < 4.6, (small, large)  # linear: 4; quadratic would be ~16
    # A take by the function's index walked every run of it: about 5.5 here, and 2.7 times
    # the instructions per run at 10,000 runs as at 2,500 (benchmarks/flow.py).
    assert large[1] / small[1] < 4.8, (small, large)
    assert large[2] / small[2] < 4.8, (small, large)


def test_singleton_skip_starts_nothing_while_a_run_of_the_key_is_not_ended(
    engine: Engine,
) -> None:
    @ironflow.function(id="solo", on="sync", singleton=Singleton(key="data.customer"))
    def solo(ctx):
        yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(solo)
    [first] = engine.emit("sync", {"customer": "c", "i": 0})
    assert engine.emit("sync", {"customer": "c", "i": 1}) == []  # skipped
    [other] = engine.emit("sync", {"customer": "d", "i": 2})  # another key
    assert engine.start("solo", {"customer": "c", "i": 3}) == first  # the run that stands
    engine.run_until_idle()
    assert len(engine.list_runs(function="solo")) == 2
    engine.emit("go", {"i": 0})
    engine.run_until_idle()
    [again] = engine.emit("sync", {"customer": "c", "i": 4})  # ended: a new one starts
    assert again not in (first, other)
    assert engine.get_run(first).status == "completed"


def test_a_singleton_skip_is_listed_with_its_reason(engine: Engine) -> None:
    @ironflow.function(id="solo", on="sync", singleton=Singleton(key="data.customer"))
    def solo(ctx):
        yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(solo)
    [first] = engine.emit("sync", {"customer": "c", "i": 0})
    assert engine.emit("sync", {"customer": "c", "i": 1}) == []  # skipped
    assert engine.start("solo", {"customer": "c", "i": 2}) == first  # a start is not listed
    [skipped] = engine.list_events()
    assert (skipped.name, skipped.data, skipped.function) == (
        "sync",
        {"customer": "c", "i": 1},
        "solo",
    )
    assert skipped.reason == "singleton"
    assert skipped.detail == f"singleton: run {first} for key 'c' has not ended"
    assert engine.list_events(function="solo") == [skipped]


def test_singleton_cancel_replaces_the_current_run(engine: Engine) -> None:
    @ironflow.function(id="latest", on="sync", singleton=Singleton(mode="cancel"))
    def latest(ctx):
        yield step.wait_for_event("go", event="go", match="data.i", timeout="1d")
        return (yield step.run("body", record, ctx.event.data["i"]))

    engine.register(latest)
    [first] = engine.emit("sync", {"i": 0})
    engine.run_until_idle()
    [second] = engine.emit("sync", {"i": 1})
    engine.run_until_idle()
    run = engine.get_run(first)
    assert run.status == "cancelled"
    assert run.error is not None and f"replaced by run {second}" in run.error.message
    engine.emit("go", {"i": 1})
    engine.run_until_idle()
    assert engine.get_run(second).status == "completed"
    assert ORDER == [1]


def test_starting_runs_queued_behind_concurrency_reads_linearly_on_postgres(
    postgres_url: str,
) -> None:
    """PostgreSQL's own count of the rows its scans read in the flow-control tables
    (``pg_stat_user_tables``, flushed as the engine's sessions end) per queued run stays
    flat: four times the runs read about four times the rows, not sixteen. (The flow tables
    only: the runs and history tables are read by the store's round, whose plans a freshly
    grown, never analyzed table can turn into sequential scans; that is the store's.)"""
    import pgcluster
    import psycopg

    @ironflow.function(id="ten", concurrency=10)
    def ten(ctx):
        return (yield step.run("body", lambda: 1))

    def rows_read(n: int) -> int:
        url, drop = pgcluster.new_schema(postgres_url)
        try:
            engine = Engine(url, clock=VirtualClock(), durability="normal")
            engine.register(ten)
            for _ in range(n):
                engine.start("ten")
            engine.run_until_idle()
            assert len(engine.list_runs(status="completed", limit=n + 1)) == n
            engine.close()
            with psycopg.connect(url, autocommit=True) as conn:
                schema = conn.execute("SELECT current_schema()").fetchone()[0]
                others = (
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
                for _ in range(3000):  # the engine's sessions report their counts as they end
                    if conn.execute(others).fetchone()[0] == 0:
                        break
                    time.sleep(0.01)
                else:
                    pytest.fail("the engine's sessions did not end within 30s")
                conn.execute("SELECT pg_stat_clear_snapshot()")
                found = conn.execute(
                    "SELECT SUM(COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)) "
                    "FROM pg_stat_user_tables WHERE schemaname = %s AND relname LIKE 'flow%%'",
                    (schema,),
                ).fetchone()[0]
            return int(found)
        finally:
            drop()

    small, large = rows_read(250), rows_read(1000)
    assert small > 250, small  # the counts were flushed: every admission read its slots
    assert large / small < 6, (small, large)  # quadratic would be ~16
