"""``timeouts=Timeouts(finish=...)`` on each store, on a virtual clock: a run not ended this
long after it left pending fails with ``RunTimeoutError`` (its undos run), exactly on replay."""

from __future__ import annotations

import pytest

import ironflow
from ironflow import Engine, Timeouts, step
from ironflow.history import dumps
from ironflow.history.events import CompensationScheduled, RunCompleted, RunFailed, RunTimedOut
from ironflow.testing import VirtualClock, replay

UNDONE: list[str] = []  # undos that ran (bodies run in-process)


def undo(name: str) -> None:
    UNDONE.append(name)


def charge(order: str) -> str:
    return f"ch-{order}"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    UNDONE.clear()


def slow_order(sleep_for: str):
    @ironflow.function(id="order", timeouts=Timeouts(finish="1h"))
    def order(ctx):
        charged = yield step.run("charge", charge, ctx.event.data["order"])
        yield step.compensate("charge", undo, charged)
        yield step.sleep("ship", sleep_for)
        return charged

    return order


def timers_of(engine: Engine, run_id: str) -> int:
    found = engine.store.query(f"SELECT COUNT(*) FROM timers WHERE run_id = '{run_id}'")
    return int(found[0][0])


def test_a_run_past_its_finish_deadline_fails_and_its_undos_run(
    engine: Engine, clock: VirtualClock
) -> None:
    order = slow_order("2h")
    engine.register(order)
    run_id = engine.start("order", {"order": "o-1"})
    engine.run_until_idle()
    clock.advance("59m")
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "waiting"
    assert UNDONE == []
    clock.advance("1m")
    engine.run_until_idle()
    run = engine.get_run(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ironflow.errors.RunTimeoutError"
    assert run.error.message == "run did not finish within 1 hour (timeouts.finish)"
    assert UNDONE == ["ch-o-1"]
    with pytest.raises(ironflow.RunTimeoutError, match="did not finish within 1 hour"):
        engine.wait(run_id)
    history = engine.history(run_id)
    kinds = [type(event) for event in history]
    assert kinds.count(RunTimedOut) == 1
    assert kinds.index(RunTimedOut) < kinds.index(CompensationScheduled)
    assert isinstance(history[-1], RunFailed)
    assert timers_of(engine, run_id) == 0  # the sleep's timer went with the run's end
    # A fresh replay of the history (and of its export) decides the same end.
    for source in (history, dumps(history)):
        decision = replay(order, source)
        assert decision.status == "failed"
        assert isinstance(decision.error, ironflow.RunTimeoutError)
        assert not decision.pending
    clock.advance("2h")  # the sleep's time passes: nothing changes
    engine.run_until_idle()
    assert len(engine.history(run_id)) == len(history)
    assert UNDONE == ["ch-o-1"]


def test_a_run_that_ends_in_time_is_untouched_and_its_timer_is_dropped(
    engine: Engine, clock: VirtualClock
) -> None:
    order = slow_order("10m")
    engine.register(order)
    run_id = engine.start("order", {"order": "o-2"})
    engine.run_until_idle()
    assert timers_of(engine, run_id) == 2  # the sleep and the finish deadline
    clock.advance("10m")
    engine.run_until_idle()
    assert engine.wait(run_id) == "ch-o-2"
    assert timers_of(engine, run_id) == 0
    clock.advance("2h")
    engine.run_until_idle()
    history = engine.history(run_id)
    assert isinstance(history[-1], RunCompleted)
    assert not any(isinstance(event, RunTimedOut) for event in history)
    assert engine.get_run(run_id).status == "completed"
    assert UNDONE == []
    assert replay(order, history).status == "completed"


def test_the_deadline_counts_from_leaving_pending_not_from_creation(
    engine: Engine, clock: VirtualClock
) -> None:
    order = slow_order("50m")
    engine.register(order)
    run_id = engine.start("order", {"order": "o-3"})
    clock.advance("30m")  # created, not taken yet: still pending
    engine.run_until_idle()
    clock.advance("50m")  # 80m after creation, 50m after it started
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "completed"
    assert UNDONE == []


def block(engine: Engine, run_id: str) -> None:
    """Park ``run_id`` blocked, as a divergence found by its next round would."""
    with engine.store.transaction() as tx:
        tx.block(run_id, '{"type": "ironflow.errors.NonDeterminismError", "message": "x"}', 0)


def test_a_blocked_run_fails_at_its_deadline_without_being_resumed(
    engine: Engine, clock: VirtualClock
) -> None:
    @ironflow.function(id="stuck", concurrency=1, timeouts=Timeouts(finish="1h"))
    def stuck(ctx):
        charged = yield step.run("charge", charge, ctx.event.data["order"])
        yield step.compensate("charge", undo, charged)
        yield step.sleep("ship", "2h")
        return charged

    engine.register(stuck)
    run_id = engine.start("stuck", {"order": "b-1"})
    behind = engine.start("stuck", {"order": "b-2"})  # queued behind its slot
    engine.run_until_idle()
    clock.advance("30m")
    block(engine, run_id)
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "blocked"
    assert engine.get_run(behind).status == "pending"  # a blocked run keeps its slot
    clock.advance("30m")  # the deadline: the run is not resumed, it still fails now
    engine.run_until_idle()
    run = engine.get_run(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ironflow.errors.RunTimeoutError"
    assert run.error.message == "run did not finish within 1 hour (timeouts.finish)"
    with pytest.raises(ironflow.RunTimeoutError, match="did not finish within 1 hour"):
        engine.wait(run_id)
    history = engine.history(run_id)
    assert isinstance(history[-1], RunTimedOut)
    assert sum(isinstance(event, RunTimedOut) for event in history) == 1
    assert UNDONE == []  # a blocked run's code cannot run: its undos do not either
    assert timers_of(engine, run_id) == 0  # its sleep's timer went with it
    assert engine.get_run(behind).status == "waiting"  # its slot freed: the next started
    clock.advance("3h")
    engine.run_until_idle()
    assert len(engine.history(run_id)) == len(history)  # nothing more happens to it


def test_a_blocked_child_past_its_deadline_tells_its_waiting_parent(
    engine: Engine, clock: VirtualClock
) -> None:
    @ironflow.function(id="child", timeouts=Timeouts(finish="1h"))
    def child(ctx):
        yield step.sleep("nap", "1d")

    @ironflow.function(id="parent")
    def parent(ctx):
        try:
            yield step.invoke("call", "child")
        except ironflow.InvokeError as exc:
            return f"child failed: {exc.__cause__}"
        return "child done"

    engine.register(child)
    engine.register(parent)
    parent_id = engine.start("parent")
    engine.run_until_idle()
    (kid,) = [run.id for run in engine.list_runs(function="child")]
    block(engine, kid)
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(kid).status == "failed"
    assert engine.wait(parent_id) == (
        "child failed: run did not finish within 1 hour (timeouts.finish)"
    )


def test_a_run_waiting_for_an_event_fails_at_its_deadline(
    engine: Engine, clock: VirtualClock
) -> None:
    @ironflow.function(id="awaits", timeouts=Timeouts(finish="1h"))
    def awaits(ctx):
        charged = yield step.run("charge", charge, "w-1")
        yield step.compensate("charge", undo, charged)
        yield step.wait_for_event("paid", event="paid", timeout="1d")

    engine.register(awaits)
    run_id = engine.start("awaits")
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "waiting"
    clock.advance("1h")
    engine.run_until_idle()
    run = engine.get_run(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ironflow.errors.RunTimeoutError"
    assert UNDONE == ["ch-w-1"]
    engine.emit("paid")  # too late: nothing changes
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "failed"
