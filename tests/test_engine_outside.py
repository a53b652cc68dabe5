"""Workflow code runs outside the write transaction (issue 11, item 2).

A round takes its inputs in a short transaction, folds them with no transaction open, then
commits the decisions in another short one. So workflow code stuck between two yields holds
no database lock: ``emit``/``start`` from another engine on the same database go through,
and the watchdog warns, once, naming the run and the step it is stuck after. Mail a round
read is dropped only by its commit: a round that fails in between loses none.

The stuck workflow blocks on a ``threading.Event`` the test releases; every wait is bounded.
Each test runs on both stores (``[sqlite]``, ``[postgres]``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from engine_kit import idle

import ironflow
from ironflow import Engine, step
from ironflow.runtime import watchdog
from ironflow.testing import VirtualClock

BOUND = 10.0  # seconds any wait of these tests may take before it fails


class Stuck:
    """A workflow whose code blocks between its two steps until ``gate`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()  # the workflow code is blocked now
        self.gate = threading.Event()

        @ironflow.function(id="stuck")
        def stuck(ctx: Any) -> Any:
            first = yield step.run("before", _value, "before")
            self.entered.set()
            assert self.gate.wait(BOUND), "the test never released the workflow"
            return [first, (yield step.run("after", _value, "after"))]

        self.function = stuck


def _value(label: str) -> str:
    return label


class Warnings(logging.Handler):
    """The ``ironflow.runs`` warnings, with an event set at the first stuck-code one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.stuck = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if "without yielding" in record.getMessage():
            self.stuck.set()


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    log = logging.getLogger("ironflow.runs")
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def _drive_in_background(engine: Engine) -> threading.Thread:
    thread = threading.Thread(target=engine.run_until_idle, daemon=True)
    thread.start()
    return thread


def test_workflow_code_stuck_between_yields_is_warned_once_naming_run_and_step(
    engine: Engine, warnings: Warnings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchdog, "STUCK_AFTER", 0.2)
    flow = Stuck()
    engine.register(flow.function)
    run_id = engine.start("stuck", run_id="stuck-1")
    thread = _drive_in_background(engine)
    try:
        assert flow.entered.wait(BOUND), "the workflow never reached its blocking call"
        assert warnings.stuck.wait(BOUND), "no warning for workflow code stuck 0.2s"
        [record] = [r for r in warnings.records if "without yielding" in r.getMessage()]
        assert record.name == "ironflow.runs" and record.levelno == logging.WARNING
        message = record.getMessage()
        assert message.startswith("run stuck-1 (stuck): workflow code has run for over ")
        assert "without yielding, after step 'before' (StepCompleted, seq 2)" in message
        assert "potential deadlock" in message and "move it into a step" in message
        assert record.run_id == run_id and record.step_id == "before"  # type: ignore[attr-defined]
        # Once per stuck fold: looking again (much later) says nothing more.
        engine._worker.watchdog.check(time.monotonic() + 60)
        stuck = [r for r in warnings.records if "without yielding" in r.getMessage()]
        assert len(stuck) == 1
    finally:
        flow.gate.set()
        thread.join(BOUND)
    assert not thread.is_alive()
    assert engine.get_run(run_id).output == ["before", "after"]


def test_a_fold_that_yields_in_time_is_not_warned(engine: Engine, warnings: Warnings) -> None:
    flow = Stuck()
    flow.gate.set()  # never blocks
    engine.register(flow.function)
    run_id = engine.start("stuck")
    idle(engine)
    assert engine.get_run(run_id).status == "completed"
    # A fold in progress is warned of only once seen for STUCK_AFTER (2s) by the watchdog.
    assert watchdog.STUCK_AFTER == 2.0
    assert warnings.records == []


class Started:
    """Counts the watchdog threads an engine starts (``threading.Thread`` seen from the
    watchdog's module)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.make = threading.Thread  # the class, before the test replaces it with this

    def __call__(self, *args: Any, **kwargs: Any) -> threading.Thread:
        thread = self.make(*args, **kwargs)
        if kwargs.get("name") == "ironflow-watchdog":
            self.threads.append(thread)
        return thread


def test_one_watchdog_thread_serves_drive_after_drive_and_ends_once_idle(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = Started()
    monkeypatch.setattr(watchdog.threading, "Thread", started)
    flow = Stuck()
    flow.gate.set()  # never blocks
    engine.register(flow.function)
    for _ in range(20):  # start one, drive it: a thread per drive cost more than the drive
        run_id = engine.start("stuck")
        engine.run_until_idle()
        assert engine.get_run(run_id).status == "completed"
    assert len(started.threads) == 1
    # No one drives any more: the thread ends by itself, LINGER looks later.
    monkeypatch.setattr(watchdog, "STUCK_AFTER", 0.04)
    started.threads[0].join(BOUND)
    assert not started.threads[0].is_alive(), "the idle watchdog thread did not end"
    # The next drive starts another.
    run_id = engine.start("stuck")
    engine.run_until_idle()
    assert len(started.threads) == 2 and started.threads[1].is_alive()


def test_stuck_workflow_code_does_not_block_emit_or_start_from_another_engine(
    store_url: str, clock: VirtualClock, engine: Engine
) -> None:
    flow = Stuck()
    engine.register(flow.function)

    @ironflow.function(id="other", on="ping")
    def other(ctx: Any) -> Any:
        return (yield step.run("only", _value, "only"))

    # A second engine on the same database (another process would do the same).
    second = Engine(store_url, clock=clock)
    second.register(other)
    run_id = engine.start("stuck")
    thread = _drive_in_background(engine)
    done = threading.Event()
    results: list[Any] = []

    def produce() -> None:
        results.append(second.emit("ping", {"n": 1}))
        results.append(second.start("other", {"n": 2}))
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    try:
        assert flow.entered.wait(BOUND), "the workflow never reached its blocking call"
        producer.start()
        # Before: the write lock was held by the stuck round, so these waited for it (the
        # busy timeout, then "database is locked"; on PostgreSQL, the round's row locks and
        # advisory stripes). Now they do not wait for the workflow.
        assert done.wait(BOUND / 2), "emit/start waited while workflow code was stuck"
        assert flow.entered.is_set() and not flow.gate.is_set()  # still stuck meanwhile
    finally:
        flow.gate.set()
        thread.join(BOUND)
        producer.join(BOUND)
    assert not thread.is_alive()
    emitted, started = results
    assert len(emitted) == 1  # emit returns the runs it started
    idle(second)
    assert second.get_run(emitted[0]).output == "only"
    assert second.get_run(started).output == "only"
    assert engine.get_run(run_id).output == ["before", "after"]
    second.close()


def test_mail_read_by_a_round_that_fails_to_commit_is_not_lost(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round reads a waiting run's mail, folds it, and its commit fails: the mail is
    still there, and the next round delivers it (once)."""

    @ironflow.function(id="waiter")
    def waiter(ctx: Any) -> Any:
        event = yield step.wait_for_event("approval", "approved", timeout="1h")
        return event.data

    engine.register(waiter)
    run_id = engine.start("waiter")
    idle(engine)
    assert engine.get_run(run_id).status == "waiting"
    engine.emit("approved", {"by": "ann"})
    transaction = type(engine.store.transaction())  # the store's (not entered: no BEGIN)
    write = transaction.commit_round
    failures: list[int] = []

    def fail_once(self: Any, batch: Any, owner: str) -> None:
        if batch.history and not failures:
            failures.append(1)
            raise OSError("disk on fire")
        write(self, batch, owner)

    monkeypatch.setattr(transaction, "commit_round", fail_once)
    with pytest.raises(OSError, match="disk on fire"):
        engine.run_until_idle()
    assert engine.store.query("SELECT run_id, type FROM inbox") == [(run_id, "WaitMatched")]
    monkeypatch.undo()
    idle(engine)
    assert engine.get_run(run_id).output == {"by": "ann"}
    kinds = [type(event).__name__ for event in engine.history(run_id)]
    assert kinds.count("WaitMatched") == 1
    assert engine.store.query("SELECT COUNT(*) FROM inbox") == [(0,)]


def test_a_timer_fired_by_a_round_that_fails_to_commit_is_not_lost(
    engine: Engine, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round folds a due sleep timer and its commit fails: the timer was claimed in that
    commit's transaction, so it is still set, and the next round fires it (once). Claimed in
    the round's first transaction, it would be gone and the run asleep for good."""

    @ironflow.function(id="sleeper")
    def sleeper(ctx: Any) -> Any:
        yield step.sleep("nap", "1h")
        return "awake"

    engine.register(sleeper)
    run_id = engine.start("sleeper")
    idle(engine)
    assert engine.get_run(run_id).status == "waiting"
    transaction = type(engine.store.transaction())  # the store's (not entered: no BEGIN)
    write = transaction.commit_round
    failures: list[int] = []

    def fail_once(self: Any, batch: Any, owner: str) -> None:
        if batch.history and not failures:
            failures.append(1)
            raise OSError("disk on fire")
        write(self, batch, owner)

    monkeypatch.setattr(transaction, "commit_round", fail_once)
    clock.advance("2h")
    with pytest.raises(OSError, match="disk on fire"):
        engine.run_until_idle()
    assert engine.store.query("SELECT run_id, step_id, kind FROM timers") == [
        (run_id, "nap", "sleep")
    ]
    monkeypatch.undo()
    idle(engine)
    assert engine.get_run(run_id).output == "awake"
    kinds = [type(event).__name__ for event in engine.history(run_id)]
    assert kinds.count("TimerFired") == 1
    assert engine.store.query("SELECT COUNT(*) FROM timers") == [(0,)]
