"""Every primitive end to end on a real SQLite file, driven by a virtual clock.

Each test builds ``Engine(<tmp file>, clock=VirtualClock())``, registers workflows, starts or
emits, and drives with ``run_until_idle()`` and ``clock.advance(...)``. Concurrency is proved
with barriers and events that time out, never with sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import threading
import time

import pytest
from engine_kit import idle

import ironflow
from ironflow import (
    Engine,
    InvokeError,
    NonRetryableError,
    RetryPolicy,
    StepError,
    WaitTimeoutError,
    step,
)
from ironflow.commands import kinds
from ironflow.history import (
    CommandScheduled,
    EventPublished,
    StepCompleted,
    StepFailed,
    WaitMatched,
)
from ironflow.testing import VirtualClock

NO_RETRY = RetryPolicy(max_attempts=1)


def status(engine: Engine, run_id: str) -> str:
    return engine.get_run(run_id).status


def events_of(engine: Engine, run_id: str, cls: type) -> list:
    return [event for event in engine.history(run_id) if isinstance(event, cls)]


# --- run ----------------------------------------------------------------------------------------


def test_run_sync_and_async_step_functions(engine, calls):
    def add(a, b):
        calls.hit("add")
        return a + b

    async def mul(a, b):
        calls.hit("mul")
        await asyncio.sleep(0)
        return a * b

    def pair():
        calls.hit("pair")
        return (1, [2, 3])

    @ironflow.function(id="arith")
    def flow(ctx):
        total = yield step.run("add", add, ctx.event.data["a"], 2)
        product = yield step.run("mul", mul, total, 10)
        got = yield step.run("pair", pair)
        return {"total": total, "product": product, "pair": got}

    engine.register(flow)
    rid = engine.start("arith", {"a": 1})
    assert status(engine, rid) == "pending"
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "completed"
    assert run.output == {"total": 3, "product": 30, "pair": [1, [2, 3]]}  # tuple → list
    assert engine.wait(rid) == run.output
    assert calls.counts == {"add": 1, "mul": 1, "pair": 1}
    completed = {e.id: e.result for e in events_of(engine, rid, StepCompleted)}
    assert completed == {"add": 3, "mul": 30, "pair": [1, [2, 3]]}


def test_run_step_results_survive_a_new_engine_on_the_same_file(tmp_path, clock, calls):
    def fetch(x):
        calls.hit(f"fetch-{x}")
        return {"x": x}

    @ironflow.function(id="durable")
    def flow(ctx):
        first = yield step.run("first", fetch, 1)
        yield step.sleep("nap", "1h")
        second = yield step.run("second", fetch, 2)
        return [first, second]

    path = str(tmp_path / "x.db")
    one = Engine(path, clock=clock)
    one.register(flow)
    rid = one.start("durable")
    one.run_until_idle()
    assert status(one, rid) == "waiting"
    one.close()

    clock.advance("1h")
    two = Engine(path, clock=clock)
    two.register(flow)
    two.run_until_idle()
    assert two.get_run(rid).output == [{"x": 1}, {"x": 2}]
    assert calls.counts == {"fetch-1": 1, "fetch-2": 1}  # the first step was not run again
    two.close()


# --- sleep / sleep_until -----------------------------------------------------------------------


def test_seven_day_sleep_passes_instantly_and_not_before_due(engine, clock, calls):
    @ironflow.function(id="sleepy")
    def flow(ctx):
        yield step.sleep("week", "7d")
        yield step.run("after", calls.hit, "after")
        return ctx.now().isoformat()

    engine.register(flow)
    began = time.monotonic()
    rid = engine.start("sleepy")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"

    clock.advance(_dt.timedelta(days=7) - _dt.timedelta(microseconds=1))
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    assert calls["after"] == 0

    clock.advance(_dt.timedelta(microseconds=1))
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "completed"
    assert calls["after"] == 1
    assert run.output == "2026-01-08T00:00:00+00:00"
    assert run.ended_at == _dt.datetime(2026, 1, 8, tzinfo=_dt.UTC)
    assert time.monotonic() - began < 5


def test_sleep_until_fires_at_the_target_not_before(engine, clock, calls):
    target = (clock.now() + _dt.timedelta(hours=2)).isoformat()

    @ironflow.function(id="until")
    def flow(ctx):
        yield step.sleep_until("alarm", ctx.event.data["at"])
        yield step.run("ring", calls.hit, "ring")
        return ctx.now().isoformat()

    engine.register(flow)
    rid = engine.start("until", {"at": target})
    engine.run_until_idle()
    clock.advance("119m")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    assert calls["ring"] == 0
    clock.advance("1m")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "2026-01-01T02:00:00+00:00"
    assert calls["ring"] == 1


def test_sleep_until_in_the_past_fails_the_run_with_value_error(engine, clock):
    @ironflow.function(id="past")
    def flow(ctx):
        yield step.sleep_until("alarm", "2025-12-31T23:00:00+00:00")
        return "unreachable"

    engine.register(flow)
    rid = engine.start("past")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert run.error.type == "ValueError"
    assert "not after" in run.error.message
    with pytest.raises(ValueError, match="not after"):
        engine.wait(rid)


# --- wait_for_event ----------------------------------------------------------------------------


def test_wait_for_event_matches_path_against_triggering_event(engine):
    @ironflow.function(id="approve", on="order.created")
    def flow(ctx):
        got = yield step.wait_for_event(
            "approval", "order.approved", match="data.orderId", timeout="1d"
        )
        return {"by": got.data["by"], "event": got.id, "name": got.name}

    engine.register(flow)
    [r1] = engine.emit("order.created", {"orderId": 1})
    [r2] = engine.emit("order.created", {"orderId": 2})
    engine.run_until_idle()
    assert status(engine, r1) == status(engine, r2) == "waiting"

    assert engine.emit("order.approved", {"orderId": 3, "by": "nobody"}) == []
    assert engine.emit("order.approved", {"by": "no id"}) == []
    assert engine.emit("order.approved", {"orderId": "2", "by": "string"}) == []  # "2" != 2
    engine.run_until_idle()
    assert status(engine, r1) == status(engine, r2) == "waiting"

    engine.emit("order.approved", {"orderId": 2, "by": "bob"})
    engine.run_until_idle()
    assert status(engine, r1) == "waiting"
    out = engine.get_run(r2).output
    assert out["by"] == "bob" and out["name"] == "order.approved"
    [matched] = events_of(engine, r2, WaitMatched)
    assert matched.event.id == out["event"]


def test_wait_for_event_with_value(engine):
    @ironflow.function(id="by-value")
    def flow(ctx):
        got = yield step.wait_for_event(
            "w", "user.verified", match="data.user.id", value=ctx.event.data["uid"]
        )
        return got.data

    engine.register(flow)
    rid = engine.start("by-value", {"uid": "u-7"})
    engine.run_until_idle()
    engine.emit("user.verified", {"user": {"id": "u-8"}})
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    engine.emit("user.verified", {"user": {"id": "u-7"}, "ok": True})
    engine.run_until_idle()
    assert engine.get_run(rid).output == {"user": {"id": "u-7"}, "ok": True}


def test_wait_timeout_fails_run_and_wait_raises(engine, clock):
    @ironflow.function(id="impatient")
    def flow(ctx):
        yield step.wait_for_event("w", "never", timeout="1h")
        return "unreachable"

    engine.register(flow)
    rid = engine.start("impatient")
    engine.run_until_idle()
    clock.advance("59m")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    clock.advance("1m")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert run.error.message == "waitForEvent timed out"
    assert run.error.type == "ironflow.errors.WaitTimeoutError"
    with pytest.raises(WaitTimeoutError, match="waitForEvent timed out"):
        engine.wait(rid)
    # A late event changes nothing.
    engine.emit("never")
    engine.run_until_idle()
    assert status(engine, rid) == "failed"


def test_an_event_that_takes_a_wait_after_its_timeout_was_found_due_wins_alone(
    engine, clock, monkeypatch
):
    """Discovery finds the wait's timeout due; before the round's transaction an emit takes
    the wait. Only one of them may reach the run: the round claims the timer (gone, so it
    does not fire) and the run receives the event. It used to get both: the timeout was
    folded first and the event, consumed by the run, was dropped as stale."""
    from ironflow.runtime import discovery

    @ironflow.function(id="racer")
    def flow(ctx):
        try:
            return (yield step.wait_for_event("w", "go", timeout="1h")).data
        except WaitTimeoutError:
            return "timed out"

    engine.register(flow)
    rid = engine.start("racer")
    engine.run_until_idle()
    find = discovery.find
    raced = []

    def find_then_emit(driver, now_us, work, due):
        found = find(driver, now_us, work, due)
        if due and not raced:  # the timeout is due: an emit slips in before the round
            raced.append(engine.emit("go", {"n": 1}))
        return found

    monkeypatch.setattr(discovery, "find", find_then_emit)
    clock.advance("2h")
    engine.run_until_idle()
    assert raced == [[]]
    assert engine.get_run(rid).output == {"n": 1}
    kinds = [type(event).__name__ for event in engine.history(rid)]
    assert kinds.count("WaitMatched") == 1 and "WaitTimedOut" not in kinds
    assert engine.store.query("SELECT COUNT(*) FROM timers") == [(0,)]


def test_an_event_that_takes_a_wait_while_its_timeout_is_folded_wins_alone(
    engine, clock, monkeypatch
):
    """The round fires the wait's timeout into the fold (no transaction open) and an emit
    takes the wait before the round commits. The commit claims the timer, finds it gone, and
    writes nothing: the round is folded again without it, and the run receives the event
    alone. A claim in the round's first transaction would have left the emit no wait (the
    run timed out, the event unconsumed); no claim, both (the timeout won, the event lost)."""
    from ironflow.runtime import timers

    @ironflow.function(id="racer")
    def flow(ctx):
        try:
            return (yield step.wait_for_event("w", "go", timeout="1h")).data
        except WaitTimeoutError:
            return "timed out"

    engine.register(flow)
    rid = engine.start("racer")
    engine.run_until_idle()
    fired = timers.fired
    raced = []

    def fire_then_emit(live, due, inputs, batch):
        fired(live, due, inputs, batch)
        if not raced:  # folding the timeout: an emit slips in before the commit
            raced.append(engine.emit("go", {"n": 1}))

    monkeypatch.setattr(timers, "fired", fire_then_emit)
    clock.advance("2h")
    engine.run_until_idle()
    assert raced == [[]]
    assert engine.get_run(rid).output == {"n": 1}
    kinds = [type(event).__name__ for event in engine.history(rid)]
    assert kinds.count("WaitMatched") == 1 and "WaitTimedOut" not in kinds
    assert engine.store.query("SELECT COUNT(*) FROM timers") == [(0,)]
    assert engine.store.query("SELECT COUNT(*) FROM waits") == [(0,)]
    assert engine.store.query("SELECT COUNT(*) FROM inbox") == [(0,)]


def test_wait_timeout_caught_inside_the_workflow(engine, clock, calls):
    @ironflow.function(id="patient")
    def flow(ctx):
        try:
            yield step.wait_for_event("w", "never", timeout="2d")
        except WaitTimeoutError as exc:
            yield step.run("fallback", calls.hit, "fallback")
            return f"fallback: {exc}"
        return "matched"

    engine.register(flow)
    rid = engine.start("patient")
    engine.run_until_idle()
    clock.advance("2d")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "fallback: waitForEvent timed out"
    assert calls["fallback"] == 1


def test_event_emitted_after_start_before_wait_still_matches(engine, clock):
    @ironflow.function(id="late-wait")
    def flow(ctx):
        yield step.sleep("first", "1h")
        got = yield step.wait_for_event("w", "paid", match="data.id", timeout="1m")
        return got.data

    engine.register(flow)
    rid = engine.start("late-wait", {"id": 5})
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    engine.emit("paid", {"id": 4})
    engine.emit("paid", {"id": 5, "amount": 10})
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"  # still sleeping
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(rid).output == {"id": 5, "amount": 10}


def test_each_event_satisfies_at_most_one_wait_of_a_run_in_emit_order(engine, clock):
    @ironflow.function(id="two-waits")
    def flow(ctx):
        yield step.sleep("first", "1h")
        a = yield step.wait_for_event("a", "ping", timeout="1d")
        b = yield step.wait_for_event("b", "ping", timeout="1d")
        return [a.data, b.data]

    engine.register(flow)
    rid = engine.start("two-waits")
    engine.run_until_idle()
    engine.emit("ping", 1)
    clock.advance("1h")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"  # "a" took the only ping; "b" still waits
    engine.emit("ping", 2)
    engine.run_until_idle()
    assert engine.get_run(rid).output == [1, 2]

    rid2 = engine.start("two-waits")
    engine.run_until_idle()
    engine.emit("ping", "x")
    engine.emit("ping", "y")
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(rid2).output == ["x", "y"]


def test_one_event_satisfies_only_one_of_two_parallel_waits(engine, clock):
    @ironflow.function(id="parallel-waits")
    def flow(ctx):
        got = yield step.parallel(
            "both",
            [
                lambda s: s.wait_for_event("a", "ping", timeout="1h"),
                lambda s: s.wait_for_event("b", "ping", timeout="1h"),
            ],
            on_error="all_settled",
        )
        return [g.data if isinstance(g, ironflow.Event) else type(g).__name__ for g in got]

    engine.register(flow)
    rid = engine.start("parallel-waits")
    engine.run_until_idle()
    engine.emit("ping", "only")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    clock.advance("1h")
    engine.run_until_idle()
    out = engine.get_run(rid).output
    assert sorted(out, key=str) == sorted(["only", "WaitTimeoutError"], key=str)


def test_one_event_satisfies_waits_in_several_runs(engine):
    @ironflow.function(id="listener")
    def flow(ctx):
        got = yield step.wait_for_event("w", "broadcast", timeout="1d")
        return got.id

    engine.register(flow)
    runs = [engine.start("listener") for _ in range(3)]
    engine.run_until_idle()
    engine.emit("broadcast", {"n": 1})
    engine.run_until_idle()
    outputs = {engine.get_run(rid).output for rid in runs}
    assert len(outputs) == 1 and None not in outputs


def test_event_emitted_before_the_run_started_does_not_match(engine, clock):
    @ironflow.function(id="fresh")
    def flow(ctx):
        got = yield step.wait_for_event("w", "ping", timeout="1d")
        return got.data

    engine.register(flow)
    engine.emit("ping", "old")
    clock.advance("1s")
    rid = engine.start("fresh")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    engine.emit("ping", "new")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "new"


# --- parallel / map: real concurrency -----------------------------------------------------------


def test_parallel_branches_run_at_the_same_time(engine, calls):
    barrier = threading.Barrier(2, timeout=10)

    def meet(label):
        barrier.wait()
        calls.hit(label)
        return label

    @ironflow.function(id="par", retry=NO_RETRY)
    def flow(ctx):
        return (
            yield step.parallel(
                "both",
                [lambda s: s.run("left", meet, "L"), lambda s: s.run("right", meet, "R")],
            )
        )

    engine.register(flow)
    rid = engine.start("par")
    engine.run_until_idle()
    assert engine.get_run(rid).output == ["L", "R"]
    assert calls.counts == {"L": 1, "R": 1}
    assert {e.id for e in events_of(engine, rid, StepCompleted)} == {"both/0/left", "both/1/right"}


def test_map_items_run_at_the_same_time_and_keep_order(engine, calls):
    barrier = threading.Barrier(3, timeout=10)

    def meet(item):
        barrier.wait()
        calls.hit(str(item))
        return item * 10

    @ironflow.function(id="mapper", retry=NO_RETRY)
    def flow(ctx):
        return (yield step.map("m", [3, 1, 2], lambda item, s, i: s.run("x", meet, item)))

    engine.register(flow)
    rid = engine.start("mapper")
    engine.run_until_idle()
    assert engine.get_run(rid).output == [30, 10, 20]
    assert calls.counts == {"1": 1, "2": 1, "3": 1}


def test_map_respects_concurrency_and_empty_items(engine):
    barrier = threading.Barrier(2, timeout=10)  # two items in flight do meet

    def paired(item):
        barrier.wait()
        return item

    @ironflow.function(id="windowed", retry=NO_RETRY)
    def flow(ctx):
        none = yield step.map("empty", [], lambda item, s, i: s.run("x", paired, item))
        some = yield step.map(
            "m", list(range(6)), lambda item, s, i: s.run("x", paired, item), concurrency=2
        )
        return {"none": none, "some": some}

    engine.register(flow)
    rid = engine.start("windowed")
    engine.run_until_idle()
    assert engine.get_run(rid).output == {"none": [], "some": [0, 1, 2, 3, 4, 5]}
    in_flight, most = set(), 0
    for event in engine.history(rid):
        if isinstance(event, CommandScheduled) and event.kind == kinds.RUN:
            in_flight.add(event.id)
            most = max(most, len(in_flight))
        elif isinstance(event, StepCompleted):
            in_flight.discard(event.id)
    assert most == 2


def test_steps_of_two_different_runs_run_at_the_same_time(engine, calls):
    barrier = threading.Barrier(2, timeout=10)

    def meet(label):
        barrier.wait()
        calls.hit(label)
        return label

    @ironflow.function(id="solo", retry=NO_RETRY)
    def flow(ctx):
        return (yield step.run("meet", meet, ctx.event.data))

    engine.register(flow)
    r1 = engine.start("solo", "one")
    r2 = engine.start("solo", "two")
    engine.run_until_idle()
    assert engine.get_run(r1).output == "one"
    assert engine.get_run(r2).output == "two"
    assert calls.counts == {"one": 1, "two": 1}


def test_parallel_fail_fast_raises_the_branch_error(engine):
    def boom():
        raise KeyError("nope")

    @ironflow.function(id="ff", retry=NO_RETRY)
    def flow(ctx):
        try:
            yield step.parallel(
                "p", [lambda s: s.run("ok", int, "1"), lambda s: s.run("bad", boom)]
            )
        except KeyError as exc:
            return f"caught {exc.step_id}"
        return "no error"

    engine.register(flow)
    rid = engine.start("ff")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "caught p/1/bad"


# --- invoke / invoke_async ---------------------------------------------------------------------


def test_invoke_returns_the_child_output(engine):
    @ironflow.function(id="child")
    def child(ctx):
        doubled = yield step.run("double", lambda x: x * 2, ctx.event.data["n"])
        return {"doubled": doubled, "trigger": ctx.event.name}

    @ironflow.function(id="parent")
    def parent(ctx):
        got = yield step.invoke("call", child, {"n": 21})
        return got

    engine.register(child)
    engine.register(parent)
    rid = engine.start("parent")
    engine.run_until_idle()
    assert engine.get_run(rid).output == {"doubled": 42, "trigger": "child"}
    [kid] = engine.list_runs(function="child")
    assert kid.parent_run_id == rid and kid.status == "completed"


def test_invoke_child_failure_raises_invoke_error(engine):
    def fail():
        raise RuntimeError("child broke")

    @ironflow.function(id="bad-child", retry=NO_RETRY)
    def child(ctx):
        yield step.run("fail", fail)

    @ironflow.function(id="caller")
    def parent(ctx):
        try:
            yield step.invoke("call", "bad-child")
        except InvokeError as exc:
            return {
                "msg": str(exc),
                "child": exc.child_run_id,
                "cause": type(exc.__cause__).__name__,
            }
        return "no error"

    @ironflow.function(id="uncaught")
    def uncaught(ctx):
        yield step.invoke("call", "bad-child")

    for fn in (child, parent, uncaught):
        engine.register(fn)
    rid = engine.start("caller")
    rid2 = engine.start("uncaught")
    engine.run_until_idle()
    out = engine.get_run(rid).output
    assert "child broke" in out["msg"]
    assert out["cause"] == "RuntimeError"
    assert engine.get_run(out["child"]).status == "failed"
    run2 = engine.get_run(rid2)
    assert run2.status == "failed"
    assert run2.error.type == "ironflow.errors.InvokeError"
    with pytest.raises(InvokeError, match="child broke"):
        engine.wait(rid2)


def test_invoke_timeout_raises_invoke_error(engine, clock):
    @ironflow.function(id="slow-child")
    def child(ctx):
        yield step.sleep("long", "30d")
        return "late"

    @ironflow.function(id="hurried")
    def parent(ctx):
        try:
            yield step.invoke("call", child, timeout="1h")
        except InvokeError as exc:
            return f"timed out: {exc}"
        return "in time"

    engine.register(child)
    engine.register(parent)
    rid = engine.start("hurried")
    engine.run_until_idle()
    clock.advance("59m")
    engine.run_until_idle()
    assert status(engine, rid) == "waiting"
    clock.advance("1m")
    engine.run_until_idle()
    out = engine.get_run(rid).output
    assert out.startswith("timed out") and "timed out" in out[len("timed out") :]


def test_child_finishing_after_its_invoke_timed_out_leaves_the_engine_idle(engine, clock):
    @ironflow.function(id="slow-child2")
    def child(ctx):
        yield step.sleep("long", "1d")
        return "late"

    @ironflow.function(id="hurried2")
    def parent(ctx):
        try:
            return (yield step.invoke("call", child, timeout="1h"))
        except InvokeError:
            return "gave up"

    engine.register(child)
    engine.register(parent)
    rid = engine.start("hurried2")
    engine.run_until_idle()
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "gave up"
    clock.advance("1d")
    idle(engine)  # the child's late completion must not make the finished parent runnable
    [kid] = engine.list_runs(function="slow-child2")
    assert kid.status == "completed" and kid.output == "late"
    assert engine.get_run(rid).output == "gave up"


def test_invoke_async_returns_child_run_id_and_child_runs(engine, calls, clock):
    @ironflow.function(id="bg")
    def child(ctx):
        yield step.sleep("later", "1h")
        yield step.run("work", calls.hit, "bg")
        return ctx.event.data

    @ironflow.function(id="spawner")
    def parent(ctx):
        child_id = yield step.invoke_async("spawn", child, {"job": 1})
        yield step.sleep("nap", "1m")  # forces a cold replay of the spawn
        return child_id

    engine.register(child)
    engine.register(parent)
    rid = engine.start("spawner")
    engine.run_until_idle()
    clock.advance("1m")
    engine.run_until_idle()
    child_id = engine.get_run(rid).output
    assert engine.get_run(rid).status == "completed"
    kid = engine.get_run(child_id)
    assert kid.function == "bg" and kid.parent_run_id == rid and kid.status == "waiting"
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(child_id).output == {"job": 1}
    assert calls["bg"] == 1
    assert len(engine.list_runs(function="bg")) == 1


# --- publish ------------------------------------------------------------------------------------


def test_publish_exactly_once_triggers_functions_and_satisfies_waits(engine, clock, calls):
    @ironflow.function(id="on-shipped", on="order.shipped")
    def triggered(ctx):
        yield step.run("note", calls.hit, "triggered")
        return ctx.event.data

    @ironflow.function(id="watcher")
    def watcher(ctx):
        got = yield step.wait_for_event("w", "order.shipped", match="data.order", value=9)
        return got.id

    @ironflow.function(id="shipper")
    def shipper(ctx):
        event_id = yield step.publish("announce", "order.shipped", {"order": 9})
        yield step.sleep("nap", "1m")  # the run goes cold and is rebuilt by replay
        yield step.run("after", calls.hit, "after")
        return event_id

    for fn in (triggered, watcher, shipper):
        engine.register(fn)
    wid = engine.start("watcher")
    engine.run_until_idle()
    sid = engine.start("shipper")
    engine.run_until_idle()
    clock.advance("1m")
    engine.run_until_idle()
    event_id = engine.get_run(sid).output
    assert engine.get_run(wid).output == event_id
    [published] = events_of(engine, sid, EventPublished)
    assert published.event_id == event_id
    [listener] = engine.list_runs(function="on-shipped")
    assert listener.output == {"order": 9}
    assert calls.counts == {"triggered": 1, "after": 1}
    count = engine.store.query("SELECT COUNT(*) FROM events WHERE name = 'order.shipped'")
    assert count[0][0] == 1


# --- compensate ---------------------------------------------------------------------------------


def test_compensations_run_in_reverse_on_failure_each_once(engine, calls):
    def undo(label):
        calls.hit(label)

    def undo_broken(label):
        calls.hit(label)
        raise RuntimeError("undo failed")

    def fail():
        raise NonRetryableError("charge declined")

    @ironflow.function(id="saga")
    def flow(ctx):
        yield step.run("a", calls.hit, "a")
        yield step.compensate("a", undo, "undo-a")
        yield step.run("b", calls.hit, "b")
        yield step.compensate("b", undo_broken, "undo-b")
        yield step.run("c", calls.hit, "c")
        yield step.compensate("c", undo, "undo-c")
        yield step.run("d", fail)
        return "unreachable"

    engine.register(flow)
    rid = engine.start("saga")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert run.error.type == "ironflow.errors.NonRetryableError"
    assert run.error.message == "charge declined"
    assert calls.order == ["a", "b", "c", "undo-c", "undo-b", "undo-a"]
    history = engine.history(rid)
    done = [(e.id, type(e).__name__) for e in history if isinstance(e, StepCompleted | StepFailed)]
    assert done[-3:] == [
        ("compensate:c", "StepCompleted"),
        ("compensate:b", "StepFailed"),
        ("compensate:a", "StepCompleted"),
    ]
    engine.run_until_idle()
    assert calls["undo-a"] == calls["undo-b"] == calls["undo-c"] == 1


def test_compensations_run_after_retries_are_exhausted(engine, clock, calls):
    def flaky():
        calls.hit("flaky")
        raise ValueError("still down")

    @ironflow.function(id="saga-retry")
    def flow(ctx):
        yield step.run("a", calls.hit, "a")
        yield step.compensate("a", calls.hit, "undo-a")
        yield step.run("b", flaky, retry=RetryPolicy(max_attempts=2, initial_delay="10s"))

    engine.register(flow)
    rid = engine.start("saga-retry")
    engine.run_until_idle()
    assert calls["undo-a"] == 0 and status(engine, rid) == "waiting"
    clock.advance("10s")
    engine.run_until_idle()
    assert calls["flaky"] == 2 and calls["undo-a"] == 1
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "ValueError"


def test_no_compensation_on_success(engine, calls):
    @ironflow.function(id="happy-saga")
    def flow(ctx):
        yield step.run("a", calls.hit, "a")
        yield step.compensate("a", calls.hit, "undo-a")
        return "ok"

    engine.register(flow)
    rid = engine.start("happy-saga")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "ok"
    assert calls.counts == {"a": 1}


# --- retries -----------------------------------------------------------------------------------


def test_retries_are_durable_and_delayed(tmp_path, clock, calls):
    def flaky():
        calls.hit("flaky")
        if calls["flaky"] < 3:
            raise ConnectionError(f"attempt {calls['flaky']} failed")
        return "up"

    policy = RetryPolicy(max_attempts=3, initial_delay="10s", backoff=2.0)

    @ironflow.function(id="retrying")
    def flow(ctx):
        return (yield step.run("call", flaky, retry=policy))

    path = str(tmp_path / "x.db")
    one = Engine(path, clock=clock)
    one.register(flow)
    rid = one.start("retrying")
    one.run_until_idle()
    assert calls["flaky"] == 1 and status(one, rid) == "waiting"
    clock.advance("9s")
    one.run_until_idle()
    assert calls["flaky"] == 1
    one.close()

    two = Engine(path, clock=clock)  # the pending retry survives the engine
    two.register(flow)
    clock.advance("1s")
    two.run_until_idle()
    assert calls["flaky"] == 2 and status(two, rid) == "waiting"
    clock.advance("19s")
    two.run_until_idle()
    assert calls["flaky"] == 2
    clock.advance("1s")
    two.run_until_idle()
    assert calls["flaky"] == 3
    assert two.get_run(rid).output == "up"
    failures = events_of(two, rid, StepFailed)
    assert [f.attempt for f in failures] == [1, 2]
    assert all(f.error.type == "ConnectionError" and f.retryable for f in failures)
    [done] = events_of(two, rid, StepCompleted)
    assert done.attempt == 3
    two.close()


def test_attempts_are_counted_in_step_error(engine, clock, calls):
    def always():
        calls.hit("always")
        raise ValueError("bad input")

    @ironflow.function(id="counted", retry=RetryPolicy(max_attempts=2, initial_delay="1s"))
    def flow(ctx):
        try:
            yield step.run("s", always)
        except ValueError as exc:
            assert isinstance(exc, StepError)
            return {"attempts": exc.attempts, "step": exc.step_id, "msg": str(exc)}
        return "no error"

    engine.register(flow)
    rid = engine.start("counted")
    engine.run_until_idle()
    clock.advance("1s")
    engine.run_until_idle()
    assert engine.get_run(rid).output == {"attempts": 2, "step": "s", "msg": "bad input"}
    assert calls["always"] == 2


def test_non_retryable_error_fails_at_once(engine, calls):
    def refuse():
        calls.hit("refuse")
        raise NonRetryableError("card stolen")

    @ironflow.function(id="refused", retry=RetryPolicy(max_attempts=5))
    def flow(ctx):
        yield step.run("charge", refuse)

    engine.register(flow)
    rid = engine.start("refused")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert calls["refuse"] == 1
    assert run.error.type == "ironflow.errors.NonRetryableError"
    [failed] = events_of(engine, rid, StepFailed)
    assert failed.retryable is False
    with pytest.raises(NonRetryableError, match="card stolen"):
        engine.wait(rid)


def test_step_timeout_then_retry_sync(engine, clock, calls):
    release = threading.Event()

    def slow():
        calls.hit("slow")
        if calls["slow"] == 1:
            release.wait(timeout=10)  # far longer than the step's timeout
            return "too late"
        return "fast"

    @ironflow.function(id="timeouts")
    def flow(ctx):
        return (
            yield step.run(
                "s", slow, timeout="200ms", retry=RetryPolicy(max_attempts=2, initial_delay="5s")
            )
        )

    engine.register(flow)
    rid = engine.start("timeouts")
    try:
        engine.run_until_idle()
        [failed] = events_of(engine, rid, StepFailed)
        assert failed.error.type == "ironflow.errors.StepTimeoutError"
        assert failed.retryable
        assert status(engine, rid) == "waiting"
        clock.advance("5s")
        engine.run_until_idle()
        assert engine.get_run(rid).output == "fast"
    finally:
        release.set()
    assert calls["slow"] == 2


def test_step_timeout_then_retry_async(engine, clock, calls):
    async def slow():
        calls.hit("slow")
        if calls["slow"] == 1:
            await asyncio.sleep(10)  # cancelled by the timeout
        return "fast"

    @ironflow.function(id="async-timeouts")
    def flow(ctx):
        return (
            yield step.run(
                "s", slow, timeout="100ms", retry=RetryPolicy(max_attempts=2, initial_delay="1s")
            )
        )

    engine.register(flow)
    rid = engine.start("async-timeouts")
    began = time.monotonic()
    engine.run_until_idle()
    [failed] = events_of(engine, rid, StepFailed)
    assert failed.error.type == "ironflow.errors.StepTimeoutError"
    clock.advance("1s")
    engine.run_until_idle()
    assert engine.get_run(rid).output == "fast"
    assert time.monotonic() - began < 5


def test_non_json_step_result_fails_non_retryably(engine, calls):
    def weird():
        calls.hit("weird")
        return {"when": object()}

    @ironflow.function(id="weird", retry=RetryPolicy(max_attempts=5))
    def flow(ctx):
        yield step.run("w", weird)

    engine.register(flow)
    rid = engine.start("weird")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert calls["weird"] == 1
    assert run.error.type == "TypeError"
    assert "'w'" in run.error.message
    [failed] = events_of(engine, rid, StepFailed)
    assert failed.retryable is False
    assert not events_of(engine, rid, StepCompleted)


def test_a_result_too_deep_to_store_fails_the_step_and_keeps_the_worker(engine, calls):
    def deep():
        calls.hit("deep")
        value: list = []
        for _ in range(100_000):
            value = [value]
        return value

    @ironflow.function(id="deep", retry=RetryPolicy(max_attempts=5))
    def flow(ctx):
        yield step.run("d", deep)

    @ironflow.function(id="fine")
    def fine(ctx):
        return (yield step.run("f", calls.hit, "fine"))

    engine.register(flow)
    engine.register(fine)
    rid = engine.start("deep")
    idle(engine)  # returns: the outcome was not lost with a pool thread
    run = engine.get_run(rid)
    # Refused at the documented limit (issue 10, item 10: a ValueError naming it, not a
    # TypeError wrapping a RecursionError).
    assert run.status == "failed" and run.error.type == "ValueError"
    assert "'d'" in run.error.message and "more than 100 lists/dicts deep" in run.error.message
    assert calls["deep"] == 1
    assert engine.wait(engine.start("fine"), timeout=10) == "fine"


def test_nan_step_result_fails_non_retryably(engine, calls):
    @ironflow.function(id="nan")
    def flow(ctx):
        yield step.run("n", float, "nan")

    engine.register(flow)
    rid = engine.start("nan")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "TypeError"
    assert len(events_of(engine, rid, StepFailed)) == 1


# --- triggers ------------------------------------------------------------------------------------


def test_on_wildcards_and_lists(engine):
    @ironflow.function(id="orders", on="order.*")
    def orders(ctx):
        return ctx.event.name
        yield

    @ironflow.function(id="multi", on=["user.created", "billing.*"])
    def multi(ctx):
        return ctx.event.name
        yield

    engine.register(orders)
    engine.register(multi)

    def started(name):
        return sorted(engine.get_run(rid).function for rid in engine.emit(name, {}))

    assert started("order.created") == ["orders"]
    assert started("order.paid") == ["orders"]
    assert started("orders.created") == []
    assert started("order") == []
    assert started("user.created") == ["multi"]
    assert started("user.deleted") == []
    assert started("billing.failed") == ["multi"]
    engine.run_until_idle()
    outputs = sorted(run.output for run in engine.list_runs())
    assert outputs == ["billing.failed", "order.created", "order.paid", "user.created"]


def test_emit_idempotency_key(engine, calls):
    @ironflow.function(id="once", on="signup")
    def flow(ctx):
        yield step.run("greet", calls.hit, "greet")
        return ctx.event.data

    engine.register(flow)
    first = engine.emit("signup", {"u": 1}, idempotency_key="signup-1")
    second = engine.emit("signup", {"u": 1}, idempotency_key="signup-1")
    assert first == second and len(first) == 1
    engine.run_until_idle()
    third = engine.emit("signup", {"u": 1}, idempotency_key="signup-1")
    assert third == first
    engine.run_until_idle()
    assert len(engine.list_runs()) == 1
    assert calls["greet"] == 1
    assert engine.store.query("SELECT COUNT(*) FROM events")[0][0] == 1
    other = engine.emit("signup", {"u": 1}, idempotency_key="signup-2")
    assert other != first and len(other) == 1


def test_start_with_run_id_is_idempotent(engine, calls):
    @ironflow.function(id="job")
    def flow(ctx):
        yield step.run("work", calls.hit, "work")
        return ctx.event.data

    @ironflow.function(id="other")
    def other(ctx):
        return None
        yield

    engine.register(flow)
    engine.register(other)
    assert engine.start("job", {"n": 1}, run_id="job-1") == "job-1"
    assert engine.start("job", {"n": 2}, run_id="job-1") == "job-1"
    engine.run_until_idle()
    assert engine.start("job", {"n": 3}, run_id="job-1") == "job-1"
    engine.run_until_idle()
    assert engine.get_run("job-1").output == {"n": 1}
    assert calls["work"] == 1
    assert len(engine.list_runs()) == 1
    with pytest.raises(ValueError, match="job-1"):
        engine.start("other", run_id="job-1")
    assert len(engine.list_runs()) == 1


# --- errors and determinism across restarts ------------------------------------------------


class OutOfStock(Exception):
    pass


def _reserve(sku):
    raise OutOfStock(f"no {sku}")


def _identity(value):
    return value


def test_step_error_class_is_catchable_live_and_after_a_cold_replay(tmp_path, clock):
    @ironflow.function(id="catcher", retry=NO_RETRY)
    def flow(ctx):
        try:
            yield step.run("reserve", _reserve, "widget")
        except OutOfStock as exc:
            caught = f"{type(exc).__name__}: {exc}"
        token = str(ctx.uuid())
        saved = yield step.run("save", _identity, token)
        yield step.sleep("nap", "1h")  # the next engine rebuilds this run by replay
        again = yield step.run("again", _identity, token)
        return {"caught": caught, "same_uuid": saved == again == token, "now": str(ctx.now())}

    path = str(tmp_path / "x.db")
    one = Engine(path, clock=clock)
    one.register(flow)
    rid = one.start("catcher")
    one.run_until_idle()
    assert one.get_run(rid).status == "waiting"
    one.close()
    clock.advance("1h")
    two = Engine(path, clock=clock)
    two.register(flow)
    two.run_until_idle()
    out = two.get_run(rid).output
    assert out == {
        "caught": "OutOfStock: no widget",
        "same_uuid": True,
        "now": "2026-01-01 01:00:00+00:00",
    }
    two.close()


def test_duplicate_step_name_fails_the_run(engine, calls):
    @ironflow.function(id="dupe")
    def flow(ctx):
        yield step.run("same", calls.hit, "one")
        yield step.run("same", calls.hit, "two")

    engine.register(flow)
    rid = engine.start("dupe")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert run.error.type == "ironflow.errors.DuplicateStepError"
    assert "'same'" in run.error.message
    assert calls.counts == {"one": 1}


def test_invoke_of_an_unknown_function_raises_invoke_error(engine):
    @ironflow.function(id="lost")
    def flow(ctx):
        try:
            yield step.invoke("call", "not-registered")
        except InvokeError as exc:
            return str(exc)

    engine.register(flow)
    rid = engine.start("lost")
    engine.run_until_idle()
    out = engine.get_run(rid).output
    assert "not-registered" in out
    assert engine.list_runs(function="not-registered") == []


def test_publish_reaches_a_wait_registered_in_the_same_transaction(tmp_path):
    """A run publishing and a run starting its wait in one driving batch, in either order:
    the mail left for the waiting run must survive the batch's own status updates."""

    @ironflow.function(id="announcer")
    def announcer(ctx):
        return (yield step.publish("announce", "thing.done", {"key": ctx.event.data}))

    @ironflow.function(id="listener")
    def listener(ctx):
        got = yield step.wait_for_event(
            "hear", "thing.done", match="data.key", value=ctx.event.data
        )
        return got.id

    clock = VirtualClock()
    engine = Engine(str(tmp_path / "race.db"), clock=clock, durability="normal")
    engine.register(announcer)
    engine.register(listener)
    pairs = []
    for i in range(20):
        pairs.append((engine.start("listener", i), engine.start("announcer", i)))
    engine.run_until_idle()
    for listening, announcing in pairs:
        assert engine.get_run(listening).status == "completed"
        assert engine.get_run(listening).output == engine.get_run(announcing).output
    engine.close()
