"""Wake-ups across processes (issue 11, item 6): on PostgreSQL a transaction that leaves work for
other workers sends one NOTIFY, and a serving worker listening on a second connection finds the
work within milliseconds, not a poll interval; step commits send none. Every wait is bounded;
nothing sleeps to synchronise."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import ironflow
from ironflow import Engine, step
from ironflow.runtime import events
from ironflow.runtime.ids import new_id
from ironflow.runtime.store.postgres_listen import Listener, channel

WAIT = 5.0  # far below the 60 s poll: only a wake-up gets there in time
SLOW_POLL = "60s"

reached: dict[str, threading.Event] = {}


def _mark(key: str) -> str:
    reached[key].set()
    return key


@ironflow.function(id="wake-started")
def started_elsewhere(ctx):
    return (yield step.run("mark", _mark, ctx.event.data["key"]))


@ironflow.function(id="wake-waiter")
def waiter(ctx):
    event = yield step.wait_for_event("go", "wake.go", timeout="1d")
    return (yield step.run("mark", _mark, event.data["key"]))


def _add(a: int, b: int) -> int:
    return a + b


@ironflow.function(id="wake-steps")
def steps_only(ctx):
    total = 0
    for i in range(5):
        total = yield step.run(f"add-{i}", _add, total, i)
    yield step.sleep("nap", "1ms")
    return total


@contextlib.contextmanager
def serving(engine: Engine) -> Iterator[threading.Event]:
    """Serve on a thread; the event is set each time the worker has nothing to do."""
    idle = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            engine.serve(install_signals=False, on_idle=idle.set)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield idle
    finally:
        engine.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), f"serve() did not return within {WAIT}s of stop()"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def listening(url: str, schema_channel: str) -> Iterator[Any]:
    """A LISTEN connection of the test's own, on the engine's channel."""
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    try:
        conn.execute(f'LISTEN "{schema_channel}"')
        yield conn
    finally:
        conn.close()


def wake_ups(url: str, conn: Any, schema_channel: str) -> int:
    """The engine's notifications received so far: a marker sent now, from another connection,
    arrives after every notification committed before it (delivery is in commit order)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, 'marker')", (schema_channel,))
    notes = []
    for note in conn.notifies(timeout=WAIT):
        if note.payload == "marker":
            return len(notes)
        notes.append(note)
    raise AssertionError(f"the marker notification did not arrive within {WAIT}s")


def test_a_run_started_by_another_engine_is_picked_up_at_once_not_at_the_next_poll(pg_url):
    reached["elsewhere"] = threading.Event()
    worker = Engine(pg_url, poll=SLOW_POLL)
    other = Engine(pg_url, poll=SLOW_POLL)  # another process's engine: it starts, never serves
    try:
        worker.register(started_elsewhere)
        with serving(worker) as idle:
            assert idle.wait(WAIT), "the worker never went idle"
            run_id = other.start("wake-started", {"key": "elsewhere"})
            assert reached["elsewhere"].wait(WAIT), (
                f"a run started by another engine was not driven within {WAIT}s "
                f"(poll {SLOW_POLL}): no wake-up reached the serving worker"
            )
            assert worker.wait(run_id, timeout=WAIT) == "elsewhere"
    finally:
        other.close()
        worker.close()


def test_an_event_emitted_by_another_engine_resumes_a_parked_run_at_once(pg_url):
    reached["event"] = threading.Event()
    worker = Engine(pg_url, poll=SLOW_POLL)
    emitter = Engine(pg_url, poll=SLOW_POLL)  # no functions: it only emits
    try:
        worker.register(waiter)
        run_id = worker.start("wake-waiter")
        worker.run_until_idle()
        assert worker.get_run(run_id).status == "waiting"
        with serving(worker) as idle:
            assert idle.wait(WAIT), "the worker never went idle"
            emitter.emit("wake.go", {"key": "event"})
            assert reached["event"].wait(WAIT), (
                f"an event emitted by another engine did not resume the waiting run within "
                f"{WAIT}s (poll {SLOW_POLL})"
            )
            assert worker.wait(run_id, timeout=WAIT) == "event"
    finally:
        emitter.close()
        worker.close()


def test_step_commits_send_no_notification_and_a_start_sends_one(pg_url):
    engine = Engine(pg_url, poll=SLOW_POLL)
    try:
        engine.register(steps_only)
        schema_channel = engine.store.channel  # type: ignore[attr-defined]
        with listening(pg_url, schema_channel) as conn:
            run_id = engine.start("wake-steps")
            assert wake_ups(pg_url, conn, schema_channel) == 1
            engine.run_until_idle()  # five step commits, a sleep set (this worker's timer)
            assert engine.wait(run_id, timeout=WAIT) == sum(range(5))
            assert len(engine.history(run_id)) > 10
            assert wake_ups(pg_url, conn, schema_channel) == 0
    finally:
        engine.close()


def test_many_emits_in_one_transaction_send_one_notification(pg_url, monkeypatch):
    engine = Engine(pg_url, poll=SLOW_POLL)  # no functions: the events start nothing
    try:
        schema_channel = engine.store.channel  # type: ignore[attr-defined]
        driver = engine._driver
        # PostgreSQL folds identical notifications of a transaction into one anyway: count the
        # statements too (each NOTIFY sent is a round trip and a queue entry to fold).
        conn = engine.store.conn  # type: ignore[attr-defined]
        sent: list[str] = []
        execute = conn.execute

        def counting(sql: Any, *args: Any, **kwargs: Any) -> Any:
            if "pg_notify" in str(sql):
                sent.append(str(sql))
            return execute(sql, *args, **kwargs)

        monkeypatch.setattr(conn, "execute", counting)
        with listening(pg_url, schema_channel) as listener:
            now, _ = driver.now()
            with engine.store.transaction() as tx:
                for i in range(10):
                    events.emit_in(driver, tx, "wake.many", f'{{"i": {i}}}', new_id(), None, now)
            assert len(sent) == 1
            assert wake_ups(pg_url, listener, schema_channel) == 1
            engine.emit("wake.one")  # its own transaction: its own notification
            assert len(sent) == 2
            assert wake_ups(pg_url, listener, schema_channel) == 1
    finally:
        engine.close()


def test_a_rolled_back_transaction_sends_no_notification(pg_url):
    engine = Engine(pg_url, poll=SLOW_POLL)
    try:
        schema_channel = engine.store.channel  # type: ignore[attr-defined]
        with listening(pg_url, schema_channel) as conn:
            with (
                pytest.raises(RuntimeError, match="changed my mind"),
                engine.store.transaction() as tx,
            ):
                tx.record_event(new_id(), "wake.none", "{}", 0, None)
                raise RuntimeError("changed my mind")
            assert wake_ups(pg_url, conn, schema_channel) == 0
    finally:
        engine.close()


def test_each_schema_has_its_own_channel():
    assert channel("app_one") != channel("app_two")
    assert channel("app_one") == channel("app_one")
    assert len(channel("s" * 63).encode()) <= 63


def test_a_listener_that_cannot_connect_warns_once_and_stops_promptly(caplog):
    warned = threading.Event()

    class Flag(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warned.set()

    flag = Flag(level=logging.WARNING)
    logging.getLogger("ironflow.engine").addHandler(flag)
    try:
        # Port 1 on localhost: nothing listens there, the connection is refused at once.
        listener = Listener(
            "postgresql://nobody@127.0.0.1:1/none",
            "postgresql://127.0.0.1:1/none",
            "ironflow_wake_test",
            lambda runs: None,
            retry=60.0,
            connect_timeout=1.0,
        ).start()
        assert warned.wait(WAIT), "no warning when the listener could not connect"
        listener.stop()
        assert not listener.thread.is_alive(), "the listener did not stop while waiting to retry"
    finally:
        logging.getLogger("ironflow.engine").removeHandler(flag)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("wake-ups: cannot listen on postgresql://127.0.0.1:1/none (")
    assert "seen by polling until it can, trying again every 60s" in warnings[0]


def test_a_listener_whose_connection_is_cut_warns_once_and_listens_again(pg_url, caplog):
    import psycopg

    caplog.set_level(logging.INFO, logger="ironflow.engine")
    calls: list[threading.Event] = [threading.Event() for _ in range(3)]

    def callback(runs: frozenset[str] | None) -> None:
        next(event for event in calls if not event.is_set()).set()

    name = channel("wake_cut")
    listener = Listener(pg_url, "the-db", name, callback, retry=1.0, connect_timeout=5.0)
    listener.start()
    try:
        assert calls[0].wait(WAIT), "no call back once listening"  # news missed meanwhile
        with psycopg.connect(pg_url, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{name}"',),
            ).fetchall()
            assert cut == [(True,)]
            assert calls[1].wait(WAIT), "the listener did not listen again after being cut off"
            admin.execute("SELECT pg_notify(%s, '')", (name,))
            assert calls[2].wait(WAIT), "a notification after reconnecting did not call back"
    finally:
        listener.stop()
    assert not listener.thread.is_alive()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("wake-ups: cannot listen on the-db (")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "wake-ups: listening on the-db again" in infos


def test_a_child_ending_tells_its_parent_with_one_notification(pg_url):
    engine = Engine(pg_url, poll=SLOW_POLL)
    try:
        engine.register(steps_only)
        engine.register(parent)
        schema_channel = engine.store.channel  # type: ignore[attr-defined]
        run_id = engine.start("wake-parent")
        with listening(pg_url, schema_channel) as conn:
            engine.run_until_idle()  # the child is created (one), runs its steps, ends (one)
            assert engine.wait(run_id, timeout=WAIT) == sum(range(5))
            assert wake_ups(pg_url, conn, schema_channel) == 2
    finally:
        engine.close()


@ironflow.function(id="wake-parent")
def parent(ctx):
    return (yield step.invoke("child", "wake-steps"))
