"""Many workers sharing one burst (issue 11's throughput targets), on each store where it applies.

- A worker claims at most its room: its step threads times ``RUNS_PER_THREAD``, less the runs it
  holds; the rest of a burst is left for other workers, which get their share of it.
- A wake-up that names its runs (PostgreSQL's NOTIFY payload) is driven with no discovery query;
  a worker's own notifications are skipped by its listener.
- Discovery reads about one page of rows however many runs wait (counted: SQLite's VM steps,
  PostgreSQL's tuples read in the transaction), never ``DISTINCT`` over the whole inbox.

Claims are counted in the database (``lease_owner``), never timed; every wait is bounded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import held_kit
import pytest
from held_kit import bodies, gate, held

import ironflow
from ironflow import Engine, step
from ironflow.runtime import discovery
from ironflow.runtime.discovery import RUNS_PER_THREAD
from ironflow.runtime.store.postgres_listen import Listener, named_runs, payload

WAIT = 10.0
SLOW_POLL = "60s"  # only what the test does makes a worker look
THREADS = 2
ROOM = THREADS * RUNS_PER_THREAD


@ironflow.function(id="scale-one")
def one_step(ctx: Any) -> Any:
    return (yield step.run("held", held, ctx.run_id))


@pytest.fixture(autouse=True)
def _fresh_gate() -> Iterator[None]:
    yield from held_kit.fresh()


def _create(url: str, n: int, prefix: str = "burst") -> list[str]:
    """``n`` pending runs, created by an engine that serves nothing (another process's)."""
    return held_kit.create_pending(url, one_step.id, n, prefix)


def _held_by(engine: Engine) -> int:
    rows = engine.store.query(
        "SELECT COUNT(*) FROM runs WHERE lease_owner = "
        + ("%s" if engine.store.path.startswith("postgres") else "?"),
        (engine.worker_id,),
    )
    count: int = rows[0][0]
    return count


def _worker(url: str) -> Engine:
    engine = Engine(url, poll=SLOW_POLL, max_workers=THREADS)
    engine.register(one_step)
    return engine


def _finish(engines: list[Engine], run_ids: list[str]) -> None:
    """Open the gate and drive every engine until all runs completed (bounded)."""
    gate.set()
    for _ in range(20):
        threads = [threading.Thread(target=engine.run_until_idle) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
            assert not thread.is_alive(), "run_until_idle did not return"
        if all(engines[0].get_run(run_id).status == "completed" for run_id in run_ids):
            return
    statuses = sorted({engines[0].get_run(run_id).status for run_id in run_ids})
    raise AssertionError(f"not every run completed: statuses {statuses}")


def test_a_worker_claims_at_most_its_room_and_no_more_while_full(store_url):
    run_ids = _create(store_url, 3 * ROOM)
    worker = _worker(store_url)
    try:
        assert worker._driver.capacity == ROOM
        worker._worker.tick()  # one round: discovery, take, fold, commit, steps dispatched
        assert _held_by(worker) == ROOM
        assert len(worker._driver.live) == ROOM
        for _ in range(3):  # full: the runs left are not looked for, let alone claimed
            worker._worker.tick()
        assert _held_by(worker) == ROOM
        _finish([worker], run_ids)
    finally:
        worker.close()
    assert sorted(bodies) == sorted(run_ids)  # each body once, each run once


def test_two_workers_both_get_work_from_one_burst(store_url):
    run_ids = _create(store_url, 3 * ROOM)
    first, second = _worker(store_url), _worker(store_url)
    try:
        first._worker.tick()  # the first to look takes its room, not the burst
        second._worker.tick()
        assert (_held_by(first), _held_by(second)) == (ROOM, ROOM)
        assert not set(first._driver.live) & set(second._driver.live)
        _finish([first, second], run_ids)
        assert first.stats["runs_ended"] >= ROOM and second.stats["runs_ended"] >= ROOM
        assert first.stats["runs_ended"] + second.stats["runs_ended"] == len(run_ids)
    finally:
        first.close()
        second.close()
    assert sorted(bodies) == sorted(run_ids)


def test_a_worker_looks_again_once_half_its_room_is_free(store_url):
    worker = _worker(store_url)
    try:
        driver = worker._driver
        driver.dirty = True  # a page was full: there is more to look at
        driver.next_poll = float("inf")
        driver.next_timer_us = discovery.NEVER
        driver.live.update({f"r{k}": None for k in range(ROOM - ROOM // 2 + 1)})  # type: ignore[misc]
        assert not discovery.due(driver, 0)  # less than half free: not worth a round
        driver.live.pop("r0")
        assert discovery.due(driver, 0)
        driver.live.clear()
    finally:
        worker.close()


def test_a_wake_up_naming_more_runs_than_room_leaves_the_rest_to_discovery(store_url):
    worker = _worker(store_url)
    try:
        driver = worker._driver
        driver.hinted = False
        driver.live.update({f"held-{k}": None for k in range(ROOM - 3)})  # type: ignore[misc]
        named = {f"new-{k}" for k in range(5)} | {"held-0"}
        driver.hinted_runs |= named
        work: dict[str, list[Any]] = {}
        taken = discovery.named(driver, work)
        # The run held is news, not a claim; of the new ones, as many as there is room for.
        assert "held-0" in taken
        assert len(taken - {"held-0"}) == 3
        assert set(work) == taken
        assert driver.hinted  # the other two: found by discovery once there is room
        assert not driver.hinted_runs
        driver.live.clear()
    finally:
        worker.close()


# --- discovery stays bounded -----------------------------------------------------------------


@pytest.mark.sqlite_only
def test_discovery_reads_one_page_however_many_runs_wait_sqlite(store_url):
    """SQLite's VM steps for one look: the same with 2,000 runs waiting as with 20."""
    worker = _worker(store_url)
    try:
        conn = worker.store.conn  # type: ignore[attr-defined]

        def steps() -> int:
            count = [0]

            def tick() -> int:
                count[0] += 1
                return 0

            conn.set_progress_handler(tick, 1)
            try:
                now = worker._driver.now_us()
                _, ready, _ = worker.store.discover(now, ("scale-one",), worker.worker_id, 10)
            finally:
                conn.set_progress_handler(None, 1)
            assert len(ready) == 10
            return count[0]

        _create(store_url, 20, "few")
        few = steps()
        _create(store_url, 2000, "many")
        many = steps()
        assert many <= few * 1.2, f"{few} VM steps with 20 runs waiting, {many} with 2,020"
    finally:
        worker.close()


@pytest.mark.postgres
def test_discovery_reads_one_page_however_many_runs_wait_postgres(pg_url):
    """PostgreSQL's tuples read by one look and its claim (this transaction's counters), with
    2,000 pending runs and 300 runs with mail: about one page, not the tables."""
    worker = Engine(pg_url, poll=SLOW_POLL)
    worker.register(one_step)
    worker.register(parked)
    try:
        for k in range(300):
            worker.start(parked.id, {"k": k})
        worker._worker.tick()  # they take their leases, park, let go
        assert worker.store.count_runs("waiting", None) == 300
        emitter = Engine(pg_url, poll=SLOW_POLL)
        try:
            with emitter.store.transaction() as tx:
                for k in range(300):
                    tx.send_mail(f"{k}", "RunCancelled", 0, "{}")  # mail of no run
            for k in range(300):
                emitter.emit("scale.go", {"k": k})  # mail for every parked run
        finally:
            emitter.close()
        _create(pg_url, 2000, "many")
        store: Any = worker.store
        from ironflow.runtime.store.postgres import (
            CLAIM_RUNS,
            DUE_TIMERS,
            NEXT_TIMER_AFTER,
            READY_RUNS,
        )

        now = worker._driver.now_us()
        params = {"now": now, "fids": [one_step.id, parked.id], "owner": "x", "limit": 10}
        params.update(most=10, until=now + 10**9, versions=[], gated=[])
        counted = (
            "SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_xact_user_tables WHERE relname IN ('runs', 'inbox', 'timers')"
        )
        with store.lock, store.conn.transaction():
            # The counters may hold earlier transactions' reads not flushed yet: a difference.
            before = dict(store.conn.execute(counted).fetchall())
            found = store.conn.execute(READY_RUNS, params).fetchall()
            store.conn.execute(DUE_TIMERS, params).fetchall()
            store.conn.execute(NEXT_TIMER_AFTER, (now,)).fetchall()
            claimed = store.conn.execute(CLAIM_RUNS, params).fetchall()
            after = dict(store.conn.execute(counted).fetchall())
        assert len(found) == 10
        assert len(claimed) == 10  # of the 2,000 pending: a page of them, read and leased
        # The 300 mail rows of no run are walked past (each looked up by key): the page
        # after them is 10 rows. Before: DISTINCT read every inbox row (600), and UNION every
        # run it might take: 4,300 runs rows and 600 inbox rows read.
        counts = {name: after[name] - before.get(name, 0) for name in after}
        assert counts.get("inbox", 0) <= 300 + 30, counts
        assert counts.get("runs", 0) <= 30 + 2 * 10, counts  # the claim: found, then updated
        assert counts.get("timers", 0) <= 10, counts
    finally:
        worker.close()


@ironflow.function(id="scale-parked")
def parked(ctx: Any) -> Any:
    event = yield step.wait_for_event("go", event="scale.go", match="data.k", timeout="1d")
    return event.data["k"]


# --- wake-ups that name their runs (PostgreSQL) -----------------------------------------------


def test_a_payload_names_runs_and_anything_else_means_look_everywhere():
    assert named_runs(payload(["a", "b/c"])) == frozenset({"a", "b/c"})
    assert named_runs(payload([])) is None
    assert named_runs(payload([f"run-{k:05d}" for k in range(2000)])) is None  # too long
    for other in ("", "marker", "[1, 2]", "[", '{"a": 1}'):
        assert named_runs(other) is None


@contextmanager
def _serving(engine: Engine) -> Iterator[threading.Event]:
    idle = threading.Event()
    thread = threading.Thread(
        target=engine.serve, kwargs={"install_signals": False, "on_idle": idle.set}, daemon=True
    )
    thread.start()
    try:
        yield idle
    finally:
        engine.stop()
        thread.join(WAIT)
        assert not thread.is_alive()


@pytest.mark.postgres
def test_an_emit_names_the_run_it_woke_and_the_worker_drives_it_without_discovery(pg_url):
    worker = Engine(pg_url, poll=SLOW_POLL)
    emitter = Engine(pg_url, poll=SLOW_POLL)  # no functions: another process's emits
    worker.register(parked)
    looks: list[int] = []
    discover = worker.store.discover

    def counted(*args: Any) -> Any:
        looks.append(1)
        return discover(*args)

    worker.store.discover = counted  # type: ignore[method-assign]
    try:
        run_id = emitter.start(parked.id, {"k": 7})
        with _serving(worker) as idle:
            assert idle.wait(WAIT), "the worker never had nothing to do"
            assert worker.get_run(run_id).status == "waiting"  # found by its first look
            before = len(looks)
            schema_channel = emitter.store.channel  # type: ignore[attr-defined]
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'LISTEN "{schema_channel}"')
                emitter.emit("scale.go", {"k": 7})
                notes = list(conn.notifies(timeout=WAIT, stop_after=1))
            assert [json.loads(note.payload) for note in notes] == [[run_id]]
            assert worker.wait(run_id, timeout=WAIT) == 7
            assert len(looks) == before  # driven from the payload: no discovery query
    finally:
        worker.close()
        emitter.close()


@pytest.mark.postgres
def test_a_listener_skips_its_own_connections_notifications(pg_url):
    import psycopg

    calls: list[frozenset[str] | None] = []
    got = threading.Event()

    def callback(runs: frozenset[str] | None) -> None:
        calls.append(runs)
        got.set()

    name = "ironflow_wake_scale"
    with (
        psycopg.connect(pg_url, autocommit=True) as own,
        psycopg.connect(pg_url, autocommit=True) as other,
    ):
        listener = Listener(
            pg_url, "the-db", name, callback, 1.0, 5.0, own_pid=lambda: own.info.backend_pid
        )
        listener.start()
        try:
            assert got.wait(WAIT)  # the call on connecting: look everywhere
            assert calls == [None]
            got.clear()
            own.execute("SELECT pg_notify(%s, %s)", (name, payload(["mine"])))
            other.execute("SELECT pg_notify(%s, %s)", (name, payload(["theirs"])))
            assert got.wait(WAIT)
        finally:
            listener.stop()
    # Delivery is in commit order: had "mine" been passed on, it would have come first.
    assert calls[1:] == [frozenset({"theirs"})]
