"""A round's commit on PostgreSQL: one round trip, whole or nothing; the round function installed
on open; advisory stripes taken at once (no deadlock with a concurrent emit); aborted
transactions as the store's ``WriteConflict``, never a driver error (issue 11)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pgcluster
import psycopg
import pytest

import ironflow
from ironflow import step
from ironflow.runtime.store import LeaseLost, WriteConflict
from ironflow.runtime.store.base import Batch
from ironflow.runtime.store.postgres import PostgresStore
from ironflow.runtime.store.postgres_round import ROUND_FUNCTION_NAME
from ironflow.runtime.store.postgres_schema import STRIPES, stripe

WAIT_S = 10  # bounded waits: a hang fails the test instead of the session


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=pgcluster.CONNECT_TIMEOUT_S)


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` for up to WAIT_S (a condition on the server, not a sleep)."""
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        pause.wait(0.005)


def waiting_for_lock(url: str, pid: int) -> Callable[[], bool]:
    def check() -> bool:
        with connect(url) as probe:
            row = probe.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        return row is not None and row[0] == "Lock"

    return check


def names_on_stripes() -> tuple[str, str]:
    """Two event names, the first on a lower stripe than the second."""
    names = [f"ev{i}" for i in range(4 * STRIPES)]
    low = min(names, key=stripe)
    high = max(names, key=stripe)
    assert stripe(low) < stripe(high)
    return low, high


class Exchanges:
    """Counts the client/server exchanges (one request, its answer) of one connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.count = 0
        wait = conn.wait

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return wait(*args, **kwargs)

        conn.wait = counted  # type: ignore[method-assign]


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    yield opened
    opened.close()


def add_run(store: PostgresStore, run_id: str, owner: str) -> None:
    store.query(
        "INSERT INTO runs (id, function_id, status, created_us, lease_owner, lease_until_us) "
        "VALUES (%s, 'f', 'running', 0, %s, %s)",
        (run_id, owner, 2**62),
    )


def history(store: PostgresStore) -> list[tuple[Any, ...]]:
    return store.query("SELECT run_id, seq, type FROM history ORDER BY run_id, seq")


# --- one round trip, whole or nothing ---------------------------------------------------------


def test_a_sequential_run_costs_one_round_trip_per_step(pg_url):
    def steps(n: int) -> int:
        @ironflow.function(id=f"seq{n}")
        def flow(ctx: Any) -> Any:
            total = 0
            for i in range(n):
                total += yield step.run(f"s{i}", lambda i=i: i)
            return total

        # No poll or lease renewal falls due during the run: only its own exchanges count.
        engine = ironflow.Engine(pg_url, poll="1h", lease="1h")
        try:
            engine.register(flow)
            run_id = engine.start(flow.id)
            exchanges = Exchanges(engine.store.conn)  # type: ignore[attr-defined]
            engine.run_until_idle()
            assert engine.get_run(run_id).output == n * (n - 1) // 2
            return exchanges.count
        finally:
            engine.close()

    # The first round takes the run and reads its history; each step after it is one round
    # trip (the round's call, alone in autocommit: no BEGIN, no COMMIT sent).
    assert steps(30) - steps(10) == 20


def test_a_round_alone_is_one_exchange_and_commits(store):
    add_run(store, "a", "w1")
    exchanges = Exchanges(store.conn)
    with store.transaction() as tx:
        tx.commit_round(Batch(history=[("a", 0, "RunStarted", 1, "{}")], fenced=["a"]), "w1")
        assert exchanges.count == 0  # held back until the transaction ends
    assert exchanges.count == 1
    assert history(store) == [("a", 0, "RunStarted")]
    assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_statement_after_the_round_sends_it_first_in_one_transaction(store):
    add_run(store, "a", "w1")
    with pytest.raises(RuntimeError, match="after"), store.transaction() as tx:
        tx.commit_round(Batch(history=[("a", 0, "RunStarted", 1, "{}")], fenced=["a"]), "w1")
        tx.set_timer("a", "s1", "sleep", 5, 1)
        assert tx.execute("SELECT count(*) FROM history").fetchone() == (1,)
        raise RuntimeError("fails after both")
    # Rolled back together: the round went in the transaction, before the timer.
    assert history(store) == []
    assert store.query("SELECT count(*) FROM timers") == [(0,)]


def test_a_round_alone_whose_lease_moved_writes_nothing(store):
    add_run(store, "a", "w1")
    add_run(store, "b", "w2")
    batch = Batch(
        history=[("a", 0, "RunStarted", 1, "{}"), ("b", 0, "RunStarted", 1, "{}")],
        running=[(5, "a"), (5, "b")],
    )
    with pytest.raises(LeaseLost) as caught, store.transaction() as tx:
        tx.commit_round(batch, "w1")
    assert str(caught.value) == "lease lost: 1 of 2 runs still held by w1"
    assert caught.value.run_ids == ("b",)
    assert history(store) == []
    assert store.query("SELECT id, updated_us FROM runs ORDER BY id") == [("a", None), ("b", None)]


def test_a_schema_without_the_round_function_gets_it_on_open(pg_url, store):
    # A database of this schema version written before the function existed.
    store.query(f"DROP FUNCTION {ROUND_FUNCTION_NAME}")
    again = PostgresStore(pg_url)
    try:
        found = again.query(
            "SELECT count(*) FROM pg_proc WHERE proname = %s "
            "AND pronamespace = current_schema()::regnamespace",
            (ROUND_FUNCTION_NAME,),
        )
        assert found == [(1,)]
        add_run(again, "a", "w1")
        add_run(again, "b", "w1")
        # Two runs: not the plain step's shape, so this commit runs the reinstalled function.
        two = Batch(
            history=[("a", 0, "RunStarted", 1, "{}"), ("b", 0, "RunStarted", 1, "{}")],
            fenced=["a", "b"],
        )
        with again.transaction() as tx:
            tx.commit_round(two, "w1")
        assert history(again) == [("a", 0, "RunStarted"), ("b", 0, "RunStarted")]
    finally:
        again.close()


# --- the plain step: one run's rows, one plain statement ----------------------------------------


def step_batch(run_id: str, seq: int, running: bool = False) -> Batch:
    """A plain step of ``run_id``: its result and the next command (and its row set running)."""
    return Batch(
        history=[
            (run_id, seq, "StepCompleted", seq, '["s1",1,1]'),
            (run_id, seq + 1, "CommandScheduled", seq, '["s2","run","s2","","f",{}]'),
        ],
        running=[(7, run_id)] if running else [],
        fenced=[] if running else [run_id],
    )


@pytest.mark.parametrize("running", [False, True])
def test_a_plain_step_is_one_plain_statement_not_the_function(store, running):
    # Without the function a plain step still commits (a round of two runs cannot): the step's
    # commit is a plain statement of its own, one exchange alone in autocommit.
    store.query(f"DROP FUNCTION {ROUND_FUNCTION_NAME}")
    add_run(store, "a", "w1")
    add_run(store, "b", "w1")
    exchanges = Exchanges(store.conn)
    with store.transaction() as tx:
        tx.commit_round(step_batch("a", 1, running), "w1")
    assert exchanges.count == 1
    assert history(store) == [("a", 1, "StepCompleted"), ("a", 2, "CommandScheduled")]
    assert store.query("SELECT id, status, updated_us FROM runs WHERE id = 'a'") == [
        ("a", "running", 7 if running else None)
    ]
    assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    two_runs = Batch(history=[("a", 3, "StepCompleted", 3, "[]"), ("b", 0, "RunStarted", 3, "{}")])
    with pytest.raises(psycopg.errors.UndefinedFunction), store.transaction() as tx:
        tx.commit_round(two_runs, "w1")


@pytest.mark.parametrize("running", [False, True])
def test_a_plain_step_whose_lease_moved_writes_nothing(store, running):
    add_run(store, "a", "w2")
    with pytest.raises(LeaseLost) as caught, store.transaction() as tx:
        tx.commit_round(step_batch("a", 1, running), "w1")
    assert str(caught.value) == "lease lost: 0 of 1 runs still held by w1"
    assert caught.value.run_ids == ("a",)
    assert history(store) == []
    assert store.query("SELECT status, updated_us, lease_owner FROM runs") == [
        ("running", None, "w2")
    ]


def test_a_plain_step_whose_lease_moved_rolls_back_what_follows_it(store):
    add_run(store, "a", "w2")
    with pytest.raises(LeaseLost, match="0 of 1 runs still held by w1"), store.transaction() as tx:
        tx.commit_round(step_batch("a", 1), "w1")
        tx.set_timer("a", "s1", "sleep", 5, 1)  # sends the held-back step first, in BEGIN
    assert history(store) == []
    assert store.query("SELECT count(*) FROM timers") == [(0,)]


def _mail(store: PostgresStore, run_id: str) -> list[int]:
    """Mail for ``run_id`` (its ready flag set, as a producer does); the inbox positions."""
    store.query("UPDATE runs SET ready = 1 WHERE id = %s", (run_id,))
    rows = store.query(
        "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (%s, 'WaitMatched', 1, '{}'), "
        "(%s, 'WaitMatched', 2, '{}') RETURNING pos",
        (run_id, run_id),
    )
    return [row[0] for row in rows]


@pytest.mark.parametrize("running", [False, True])
def test_a_plain_step_drops_the_mail_its_round_read_in_the_same_statement(store, running):
    """A resumed run's first round (its mail read, then its step): the mail dropped and the
    ready flag cleared by the step's one statement (the previous main sent BEGIN, two more
    statements and COMMIT: five exchanges). Mail sent since the take stays."""
    add_run(store, "a", "w1")
    read = _mail(store, "a")
    later = _mail(store, "a")  # sent after the take read the first two
    exchanges = Exchanges(store.conn)
    with store.transaction() as tx:
        tx.drop_mail(read, ["a"])
        tx.commit_round(step_batch("a", 1, running), "w1")
    assert exchanges.count == 1
    assert history(store) == [("a", 1, "StepCompleted"), ("a", 2, "CommandScheduled")]
    assert [row[0] for row in store.query("SELECT pos FROM inbox ORDER BY pos")] == later
    assert store.query("SELECT status, ready FROM runs") == [("running", 0)]


@pytest.mark.parametrize("running", [False, True])
def test_a_plain_step_whose_lease_moved_keeps_the_mail_its_round_read(store, running):
    add_run(store, "a", "w2")
    read = _mail(store, "a")
    with pytest.raises(LeaseLost, match="0 of 1 runs still held by w1"), store.transaction() as tx:
        tx.drop_mail(read, ["a"])
        tx.commit_round(step_batch("a", 1, running), "w1")
    assert history(store) == []
    assert [row[0] for row in store.query("SELECT pos FROM inbox ORDER BY pos")] == read
    assert store.query("SELECT status, ready, lease_owner FROM runs") == [("running", 1, "w2")]


def test_mail_of_another_run_is_dropped_apart_from_the_plain_step(store):
    """The plain statement drops only its own run's mail: with another run's, the drop goes
    first, in the transaction, and the step after it."""
    add_run(store, "a", "w1")
    add_run(store, "b", "w1")
    read = _mail(store, "b")
    with store.transaction() as tx:
        tx.drop_mail(read, ["b"])
        tx.commit_round(step_batch("a", 1), "w1")
    assert history(store) == [("a", 1, "StepCompleted"), ("a", 2, "CommandScheduled")]
    assert store.query("SELECT count(*) FROM inbox") == [(0,)]
    assert store.query("SELECT id, ready FROM runs ORDER BY id") == [("a", 0), ("b", 0)]


def test_mail_held_back_for_a_round_call_whose_lease_moved_is_lease_lost_and_kept(store):
    """The mail drop held back, then a round the plain statement cannot carry (two runs): both
    sent as the transaction ends, the function's fence refuses, and that is ``LeaseLost``
    with the transaction rolled back (the drop too) and the session idle, usable next."""
    add_run(store, "a", "w2")
    add_run(store, "b", "w1")
    read = _mail(store, "a")
    batch = Batch(
        history=[("a", 1, "StepCompleted", 1, "{}"), ("b", 0, "RunStarted", 1, "{}")],
        fenced=["a", "b"],
    )
    with pytest.raises(LeaseLost, match="1 of 2 runs still held by w1"), store.transaction() as tx:
        tx.drop_mail(read, ["a"])
        tx.commit_round(batch, "w1")
    assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert [row[0] for row in store.query("SELECT pos FROM inbox ORDER BY pos")] == read
    assert history(store) == []
    with store.transaction() as tx:
        tx.set_timer("b", "s1", "sleep", 5, 1)
    assert store.query("SELECT count(*) FROM timers") == [(1,)]


def test_stripes_waiting_for_begin_are_taken_before_a_round_that_follows_them(store):
    """Stripes held back to go with ``BEGIN``, then only a step: the step is not sent alone in
    autocommit (which would drop the stripes), but after ``BEGIN`` and them."""
    add_run(store, "a", "w1")
    exchanges = Exchanges(store.conn)
    with store.transaction() as tx:
        tx.lock(shared=(3,))
        tx.commit_round(step_batch("a", 1), "w1")
    assert exchanges.count == 3  # BEGIN with the stripes, the step, COMMIT
    assert history(store) == [("a", 1, "StepCompleted"), ("a", 2, "CommandScheduled")]


def test_mail_dropped_by_a_transaction_with_nothing_else_commits(store):
    add_run(store, "a", "w1")
    read = _mail(store, "a")
    with store.transaction() as tx:
        tx.drop_mail(read, ["a"])
    assert store.query("SELECT count(*) FROM inbox") == [(0,)]
    assert store.query("SELECT ready FROM runs") == [(0,)]
    assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_plain_step_waiting_for_a_takeover_sees_the_new_owner_and_writes_nothing(pg_url, store):
    """The step's fence waits for the row lock a takeover holds, then checks the owner on the
    row the takeover committed: refused, not written over it."""
    add_run(store, "a", "w1")
    pid = store.conn.info.backend_pid
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            with store.transaction() as tx:
                tx.commit_round(step_batch("a", 1), "w1")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with connect(pg_url) as thief:
        with thief.transaction():
            thief.execute("UPDATE runs SET lease_owner = 'w2' WHERE id = 'a'")
            thread = threading.Thread(target=commit)
            thread.start()
            until(waiting_for_lock(pg_url, pid), "the step waits for the takeover's row lock")
        thread.join(WAIT_S)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost), outcome
    assert outcome[0].run_ids == ("a",)
    assert history(store) == []


# --- advisory stripes: all at once ------------------------------------------------------------


def test_a_round_that_waits_and_publishes_does_not_deadlock_with_an_emit(pg_url):
    """One round registers a wait for ``late`` (its stripe shared) and publishes ``early`` (a
    lower stripe, exclusive); meanwhile another process emits ``late``. Taken one by one, the
    round would hold ``late`` shared and wait for ``early``, which the emit holds (shared) while
    waiting for ``late``: a deadlock PostgreSQL breaks by aborting one. Taken at once, the emit
    waits for the round, then finds its wait."""
    early, late = names_on_stripes()

    @ironflow.function(id="both")
    def both(ctx: Any) -> Any:
        # One fold, in this order: the wait is indexed, then the publish recorded.
        got, _ = yield step.parallel(
            "both",
            [
                lambda s: s.wait_for_event("w", event=late, timeout="1h"),
                lambda s: s.publish("p", early, {"n": 1}),
            ],
        )
        return got.data

    engine = ironflow.Engine(pg_url)
    emitter = ironflow.Engine(pg_url)
    paused = threading.Event()
    go_on = threading.Event()
    try:
        engine.register(both)
        run_id = engine.start(both.id)
        # The round's commit: pause it at its publish, after the wait's stripe is held.
        tx_class = type(engine.store.transaction())  # type: ignore[attr-defined]
        record_event = tx_class.record_event

        def paused_record_event(self: Any, *args: Any) -> Any:
            if not paused.is_set():
                paused.set()
                assert go_on.wait(WAIT_S), "the emit never blocked"
            return record_event(self, *args)

        pid = engine.store.conn.info.backend_pid  # type: ignore[attr-defined]
        emitter_pid = emitter.store.conn.info.backend_pid  # type: ignore[attr-defined]
        emitted: list[Any] = []

        def emit() -> None:
            try:
                emitted.append(emitter.emit(late, {"from": "emitter"}))
            except BaseException as exc:
                emitted.append(exc)

        thread = threading.Thread(target=emit)

        def release() -> None:
            assert paused.wait(WAIT_S), "the round never published"
            thread.start()
            until(waiting_for_lock(pg_url, emitter_pid), "the emit waits for a stripe")
            go_on.set()

        releaser = threading.Thread(target=release)
        releaser.start()
        tx_class.record_event = paused_record_event
        try:
            engine.run_until_idle()
        finally:
            tx_class.record_event = record_event
            go_on.set()
            releaser.join(WAIT_S)
        thread.join(WAIT_S)
        assert not isinstance(emitted[0], BaseException), emitted
        engine.run_until_idle()
        # The emit committed after the round indexed the wait: it reached the wait, once.
        run = engine.get_run(run_id)
        assert (run.status, run.output) == ("completed", {"from": "emitter"})
        # The emit waited for the round: the publish committed first.
        names = engine.store.query("SELECT name FROM events ORDER BY pos")  # type: ignore[attr-defined]
        assert names == [(early,), (late,)]
        assert pid != emitter_pid
    finally:
        engine.close()
        emitter.close()


def test_a_deadlock_the_server_breaks_is_a_write_conflict_not_a_driver_error(pg_url, store):
    """Two transactions taking stripes one by one in opposite orders: PostgreSQL aborts one,
    which leaves the store as ``WriteConflict`` (nothing written, try again)."""
    first, second = names_on_stripes()
    other = PostgresStore(pg_url)
    barrier = threading.Barrier(2, timeout=WAIT_S)
    outcomes: list[BaseException | None] = []

    def take(db: PostgresStore, one: str, two: str) -> None:
        try:
            with db.transaction() as tx:
                tx.lock((stripe(one),))  # the first statement: held back to go with BEGIN
                tx.execute("SELECT 1")  # sends them
                barrier.wait()
                tx.lock((stripe(two),))
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    threads = [
        threading.Thread(target=take, args=(store, first, second)),
        threading.Thread(target=take, args=(other, second, first)),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert len(outcomes) == 2
        conflicts = [exc for exc in outcomes if exc is not None]
        assert len(conflicts) == 1, outcomes
        assert isinstance(conflicts[0], WriteConflict)
        assert "deadlock detected" in str(conflicts[0])
        assert "nothing of it was written; try it again" in str(conflicts[0])
        assert not isinstance(conflicts[0], psycopg.Error)
    finally:
        other.close()


def test_an_emit_takes_its_stripes_with_begin_and_records_next_and_announces_once(pg_url, store):
    with connect(pg_url) as listener:
        listener.execute(f"LISTEN {store.channel}")
        exchanges = Exchanges(store.conn)
        with store.transaction() as tx:
            tx.record_event("e1", "paid", "{}", 1, None)
            # BEGIN with the locks, then the row (and the reads after it).
            assert exchanges.count == 2
            held = tx.execute(
                "SELECT mode, count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted GROUP BY mode ORDER BY mode"
            ).fetchall()
            assert held == [("ExclusiveLock", 1), ("ShareLock", STRIPES - 1)]
            tx.record_event("e2", "paid", "{}", 2, None)  # holds its stripes: none taken again
        # + the second insert, then the one NOTIFY (naming what the transaction started) and
        # COMMIT together (one exchange: the previous main sent them apart, 6 in all)
        assert exchanges.count == 5
        # One wake-up per transaction, sent on commit.
        notes = list(listener.notifies(timeout=WAIT_S, stop_after=1))
        assert [note.channel for note in notes] == [store.channel]
        assert list(listener.notifies(timeout=0.05)) == []
    assert store.query("SELECT id, name FROM events ORDER BY pos") == [
        ("e1", "paid"),
        ("e2", "paid"),
    ]


# --- an emit's exchanges ------------------------------------------------------------------------


def test_an_emit_that_wakes_a_wait_is_five_exchanges_and_the_wait_resumes_once(pg_url):
    """BEGIN with the stripes; the row, the wait paths and the registry's version; the keyed
    waits; the delivery (wait claimed, its timeout dropped, the event consumed, the mail sent:
    one statement); NOTIFY with COMMIT. The previous main made 11 exchanges of it."""

    @ironflow.function(id="parked")
    def parked(ctx: Any) -> Any:
        event = yield step.wait_for_event("wake", event="go", match="data.k", timeout="1h")
        return event.data["k"]

    engine = ironflow.Engine(pg_url, poll="1h")
    emitter = ironflow.Engine(pg_url, poll="1h")  # registers nothing: the registry is read
    try:
        engine.register(parked)
        run_ids = [engine.start(parked.id, {"k": k}) for k in range(3)]
        engine.run_until_idle()
        assert engine.store.query("SELECT count(*) FROM timers") == [(3,)]
        emitter.emit("go", {"k": 0})  # the emitter's statements prepared, its registry read
        exchanges = Exchanges(emitter.store.conn)  # type: ignore[attr-defined]
        assert emitter.emit("go", {"k": 1}) == []
        assert exchanges.count == 5
        assert emitter.emit("go", {"k": 1}) == []  # the wait is gone: nothing more to hand
        engine.run_until_idle()
        assert [engine.get_run(run_id).status for run_id in run_ids] == [
            "completed",
            "completed",
            "waiting",
        ]
        assert [engine.get_run(run_id).output for run_id in run_ids[:2]] == [0, 1]
        # Each delivered wait's timeout is gone with it; the third run's stays.
        assert engine.store.query("SELECT run_id FROM timers") == [(run_ids[2],)]
        assert engine.store.query("SELECT count(*) FROM consumed") == [(2,)]
        assert engine.store.query("SELECT count(*) FROM inbox") == [(0,)]
    finally:
        emitter.close()
        engine.close()


def test_a_start_is_three_exchanges_its_stripes_sent_with_begin(pg_url):
    """BEGIN with the stripes (every one shared: no emit in flight), the run's row, NOTIFY with
    COMMIT (the previous main made 5 exchanges of it); another worker's take of it still waits
    for nothing and finds it."""

    @ironflow.function(id="started")
    def started(ctx: Any) -> Any:
        return (yield step.run("one", lambda: 1))

    engine = ironflow.Engine(pg_url, poll="1h")
    try:
        engine.register(started)
        engine.start(started.id)  # statements prepared
        exchanges = Exchanges(engine.store.conn)  # type: ignore[attr-defined]
        run_id = engine.start(started.id)
        assert exchanges.count == 3
        engine.run_until_idle()
        assert engine.get_run(run_id).output == 1
        assert engine.store.query("SELECT count(*) FROM runs WHERE status = 'completed'") == [(2,)]
    finally:
        engine.close()


def test_a_transaction_whose_begin_or_commit_fails_is_not_left_open(store):
    """``BEGIN`` goes with statements, and ``COMMIT`` after some: one that fails there leaves
    the session idle (rolled back), usable by the next transaction."""
    with pytest.raises(psycopg.errors.DivisionByZero):
        store.begin("; SELECT 1/0")
    assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    conn, tx = store.begin()
    conn.execute("INSERT INTO ironflow_meta VALUES ('t', '1')")
    with pytest.raises(psycopg.errors.DivisionByZero):
        tx.end(False, "SELECT 1/0;")
    assert store.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert store.query("SELECT count(*) FROM ironflow_meta WHERE key = 't'") == [(0,)]
    with store.transaction() as transaction:
        transaction.execute("INSERT INTO ironflow_meta VALUES ('t', '2')")
    assert store.query("SELECT value FROM ironflow_meta WHERE key = 't'") == [("2",)]


def test_a_start_of_a_gated_function_takes_the_stripes_before_the_flow_lock(pg_url):
    """An emit takes the stripes, then (starting a gated function) the flow-control lock; a
    direct start of a gated function takes them in the same order, so the two cannot deadlock
    (before, the start took the flow lock first)."""
    from ironflow import Singleton
    from ironflow.runtime.store.postgres_tx import FLOW_LOCK

    @ironflow.function(id="solo", on="solo.go", singleton=Singleton(key="data.k"))
    def solo(ctx: Any) -> Any:
        return (yield step.run("one", lambda: 1))

    engine = ironflow.Engine(pg_url, poll="1h")
    try:
        engine.register(solo)
        conn = engine.store.conn  # type: ignore[attr-defined]
        sent: list[str] = []
        execute = conn.execute

        def logged(query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return execute(query, *args, **kwargs)

        conn.execute = logged  # type: ignore[method-assign]
        engine.start(solo.id, {"k": 1})
        stripes = next(i for i, q in enumerate(sent) if "pg_advisory_xact_lock_shared" in q)
        assert stripes < sent.index(FLOW_LOCK), sent
        conn.execute = execute  # type: ignore[method-assign]
        engine.run_until_idle()
        assert [run.status for run in engine.list_runs()] == ["completed"]
    finally:
        engine.close()
