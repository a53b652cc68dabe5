"""Every primitive of the interpreter, live (incremental ``Sim``) and on replay.

The ``Sim`` harness checks after every feed that a fresh ``replay`` of the history decides
exactly as the live interpreter; ``sim.verify()`` also replays the final history whole,
through JSON text and in batches of several sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import itertools
import logging
import math
import uuid

import attrs
import pendulum
import pytest
from harness import T0, Sim

import ironflow
from ironflow import step
from ironflow.commands import Compensate, Event, Invoke, Publish, RunStep, WaitEvent
from ironflow.history import (
    ChildFailed,
    CommandScheduled,
    CompensationScheduled,
    ErrorInfo,
    PatchMarked,
    RetryScheduled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
    dumps,
    loads,
)
from ironflow.interpreter import Interpreter, replay

# --- step bodies (module level: their qualified names are the fingerprints) ------------------


def echo(value=None):
    return value


def fetch_user(user_id):
    return {"id": user_id, "tags": ("a", "b"), "nested": {"n": 1}}


def undo(*args):
    return None


@attrs.frozen
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    points: list[int]


def make_point(x, y) -> Point:
    return Point(x, y)


def make_box(label) -> Box:
    return Box(label, [1, 2])


def make_points(n) -> list[Point]:
    return [Point(i, -i) for i in range(n)]


def maybe_point(x) -> Point | None:
    return None if x is None else Point(x, x)


def boom():
    raise ValueError("boom")


def output_of(decision):
    assert decision.done, decision
    return decision.output


# =============================================================================================
# step.run
# =============================================================================================


def test_run_schedules_a_command_with_its_call_and_delivers_the_result():
    calls = []

    def counted(x):
        calls.append(x)
        return {"double": x * 2}

    def flow(ctx):
        got = yield step.run("double", counted, 21)
        return got["double"]

    sim = Sim(flow)
    (work,) = sim.decision.commands
    assert (work.id, work.kind, work.attempt, work.due) == ("double", "run", 1, None)
    assert isinstance(work.command, RunStep)
    assert work.command.args == (21,)
    (scheduled,) = sim.decision.events
    assert isinstance(scheduled, CommandScheduled)
    assert (scheduled.kind, scheduled.name, scheduled.scope) == ("run", "double", "")
    assert scheduled.fingerprint.endswith("counted")
    assert scheduled.detail == {"max_attempts": 3}
    assert sim.decision.status == "running" and not sim.decision.done

    sim.execute("double")
    assert output_of(sim.decision) == 42
    assert sim.decision.status == "completed"
    assert [type(e).__name__ for e in sim.history] == [
        "RunStarted",
        "CommandScheduled",
        "StepCompleted",
        "RunCompleted",
    ]
    assert sim.history[-1].output == 42
    # Memoized: replays deliver the recorded result and never call the body again.
    sim.verify()
    for _ in range(3):
        assert replay(flow, sim.history).output == 42
    assert calls == [21]


def test_run_result_comes_from_history_not_from_the_body():
    def flow(ctx):
        got = yield step.run("a", echo, "live")
        return got

    sim = Sim(flow)
    sim.complete("a", "recorded")
    assert output_of(sim.decision) == "recorded"
    assert replay(flow, sim.history).output == "recorded"


def test_run_result_goes_through_json_tuples_become_lists():
    seen = []

    def flow(ctx):
        user = yield step.run("fetch", fetch_user, 7)
        seen.append(user)
        return user

    sim = Sim(flow)
    sim.execute("fetch")
    assert output_of(sim.decision) == {"id": 7, "tags": ["a", "b"], "nested": {"n": 1}}
    assert all(type(user["tags"]) is list for user in seen)
    assert sim.events(StepCompleted)[0].result["tags"] == ["a", "b"]
    sim.verify()


def test_mutating_a_delivered_result_does_not_change_history():
    def flow(ctx):
        user = yield step.run("fetch", echo, {"name": "ann", "roles": ["x"]})
        user["name"] = "MUTATED"
        user["roles"].append("MUTATED")
        again = yield step.run("again", echo, 1)
        return {"user": user, "again": again}

    sim = Sim(flow)
    sim.execute("fetch")
    stored = sim.events(StepCompleted)[0].result
    assert stored == {"name": "ann", "roles": ["x"]}
    sim.execute("again")
    assert output_of(sim.decision)["user"] == {"name": "MUTATED", "roles": ["x", "MUTATED"]}
    assert sim.events(StepCompleted)[0].result == {"name": "ann", "roles": ["x"]}
    # Every replay starts from the untouched stored value and mutates its own copy.
    for _ in range(2):
        assert replay(flow, sim.history).output["user"]["roles"] == ["x", "MUTATED"]
    assert sim.events(StepCompleted)[0].result == {"name": "ann", "roles": ["x"]}
    sim.verify()


def test_attrs_result_is_structured_by_the_return_annotation():
    def flow(ctx):
        point = yield step.run("point", make_point, 3, 4)
        assert isinstance(point, Point)
        return [point.x, point.y]

    sim = Sim(flow)
    sim.execute("point")
    assert sim.events(StepCompleted)[0].result == {"x": 3, "y": 4}
    assert output_of(sim.decision) == [3, 4]
    sim.verify()


def test_dataclass_and_generic_results_are_structured():
    got = {}

    def flow(ctx):
        box = yield step.run("box", make_box, "b")
        points = yield step.run("points", make_points, 2)
        none = yield step.run("none", maybe_point, None)
        some = yield step.run("some", maybe_point, 5)
        got.update(box=box, points=points, none=none, some=some)
        return "ok"

    sim = Sim(flow)
    sim.run_all()
    assert got["box"] == Box("b", [1, 2])
    assert got["points"] == [Point(0, 0), Point(1, -1)]
    assert got["none"] is None
    assert got["some"] == Point(5, 5)
    assert sim.events(StepCompleted)[0].result == {"label": "b", "points": [1, 2]}
    got.clear()
    replay(flow, loads(dumps(sim.history)))
    assert got["points"] == [Point(0, 0), Point(1, -1)]
    assert isinstance(got["box"], Box)


def test_unannotated_step_gets_plain_json():
    def flow(ctx):
        value = yield step.run("a", echo, {"x": 1})
        return type(value).__name__

    sim = Sim(flow)
    sim.execute("a")
    assert output_of(sim.decision) == "dict"


def test_step_timeout_and_retry_limit_are_in_the_scheduled_detail():
    def flow(ctx):
        yield step.run("a", echo, timeout="90s", retry=ironflow.RetryPolicy(max_attempts=5))
        return None

    sim = Sim(flow)
    assert sim.decision.commands[0].detail == {"max_attempts": 5, "timeout": 90.0}
    assert sim.decision.events[0].detail == {"max_attempts": 5, "timeout": 90.0}


# --- retries ---------------------------------------------------------------------------------


def test_retry_policy_counts_the_first_try_and_backs_off_from_the_failure_time():
    def flow(ctx):
        value = yield step.run("flaky", echo, 1)
        return value

    sim = Sim(flow)
    sim.tick(10)
    sim.fail("flaky", ValueError("one"))
    (retry,) = sim.decision.events
    assert isinstance(retry, RetryScheduled)
    assert (retry.id, retry.attempt, retry.jitter) == ("flaky", 2, 0.0)
    assert retry.at == T0.add(seconds=11)
    (work,) = sim.decision.commands
    assert (work.id, work.attempt, work.due) == ("flaky", 2, T0.add(seconds=11))
    # The retry's due is in Work.due, not in the command's detail (the same live and cold).
    assert work.detail == {"max_attempts": 3}
    assert replay(flow, sim.history).pending[0].detail == {"max_attempts": 3}
    assert sim.pending["flaky"].attempt == 2

    sim.tick(5)
    sim.fail("flaky", ValueError("two"))
    assert sim.decision.events[0].at == T0.add(seconds=15 + 2)
    assert sim.decision.commands[0].attempt == 3

    sim.complete("flaky", "third time")
    assert output_of(sim.decision) == "third time"
    assert [e.attempt for e in sim.events(StepFailed)] == [1, 2]
    assert sim.events(StepCompleted)[0].attempt == 3
    sim.verify()


def test_backoff_doubles_and_is_capped_by_max_delay():
    policy = ironflow.RetryPolicy(max_attempts=7, initial_delay="1s", max_delay="5s")

    def flow(ctx):
        yield step.run("s", echo, retry=policy)
        return "done"

    sim = Sim(flow)
    delays = []
    for _ in range(6):
        failed_at = sim.now
        sim.fail("s", RuntimeError("again"))
        retry = sim.decision.events[0]
        delays.append((retry.at - failed_at).total_seconds())
        sim.tick(60)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    sim.complete("s")
    assert output_of(sim.decision) == "done"
    sim.verify()


def test_function_level_retry_is_the_default_and_a_step_overrides_it():
    @ironflow.function(id="fn", retry=ironflow.RetryPolicy(max_attempts=2))
    def flow(ctx):
        a = None
        try:
            yield step.run("a", echo)
        except ValueError as exc:
            a = exc.attempts
        try:
            yield step.run("b", echo, retry=ironflow.RetryPolicy(max_attempts=1))
        except ValueError as exc:
            return [a, exc.attempts]

    sim = Sim(flow)
    assert sim.decision.commands[0].detail["max_attempts"] == 2
    sim.fail("a", ValueError("x"))
    sim.fail("a", ValueError("x"))
    assert sim.decision.commands[0].detail["max_attempts"] == 1
    sim.fail("b", ValueError("y"))
    assert output_of(sim.decision) == [2, 1]
    assert len(sim.events(RetryScheduled)) == 1
    sim.verify()


def test_jitter_is_recorded_and_identical_on_replay():
    policy = ironflow.RetryPolicy(max_attempts=4, initial_delay="10s", jitter=0.5)

    def flow(ctx):
        yield step.run("s", echo, retry=policy)
        return "ok"

    sim = Sim(flow)
    sim.fail("s", RuntimeError("x"))
    retry = sim.decision.events[0]
    assert 0.0 < retry.jitter <= 5.0
    assert retry.at == T0 + _dt.timedelta(seconds=10 + retry.jitter)
    assert sim.pending["s"].due == retry.at
    # A replay (also through JSON) agrees on the same instant.
    assert replay(flow, sim.history).pending[0].due == retry.at
    assert replay(flow, loads(dumps(sim.history))).pending[0].due == retry.at
    # Never re-rolled: a recorded instant wins over what the policy would compute now.
    index = sim.history.index(retry)
    other_at = retry.at + _dt.timedelta(seconds=1.25)
    edited = [*sim.history[:index], attrs.evolve(retry, at=other_at, jitter=retry.jitter + 1.25)]
    assert replay(flow, edited).pending[0].due == other_at

    sim.tick(30)
    sim.fail("s", RuntimeError("y"))
    second = sim.decision.events[0]
    assert 0.0 <= second.jitter <= 10.0
    assert second.at == sim.now + _dt.timedelta(seconds=20 + second.jitter)
    sim.complete("s")
    sim.verify()


def test_jitter_differs_between_runs_but_not_between_replays():
    policy = ironflow.RetryPolicy(max_attempts=2, initial_delay="100s", jitter=1.0)

    def flow(ctx):
        yield step.run("s", echo, retry=policy)

    jitters = set()
    for run_id in ("r1", "r2", "r3"):
        sim = Sim(flow, run_id=run_id)
        sim.fail("s", RuntimeError("x"))
        jitters.add(sim.decision.events[0].jitter)
        assert replay(flow, sim.history).pending[0].due == sim.decision.events[0].at
    assert len(jitters) == 3


def test_non_retryable_failure_fails_at_once():
    def flow(ctx):
        try:
            yield step.run("s", echo)
        except ironflow.StepError as exc:
            return {"attempts": exc.attempts, "type": type(exc.__cause__).__name__}

    sim = Sim(flow)
    sim.fail("s", KeyError("nope"), retryable=False)
    assert not sim.events(RetryScheduled)
    assert output_of(sim.decision) == {"attempts": 1, "type": "KeyError"}

    sim = Sim(flow)
    sim.fail("s", ironflow.NonRetryableError("stop"))
    assert sim.events(StepFailed)[0].retryable is False
    assert output_of(sim.decision) == {"attempts": 1, "type": "NonRetryableError"}
    sim.verify()


def test_exhausted_retries_raise_the_original_class_and_step_error():
    caught = []

    def flow(ctx):
        try:
            yield step.run("charge", echo)
        except ValueError as exc:
            caught.append(exc)
            return "handled"

    sim = Sim(flow, check=False)
    for _ in range(3):
        sim.fail("charge", ValueError("card declined"))
    assert output_of(sim.decision) == "handled"
    assert len(sim.events(RetryScheduled)) == 2
    replays = [replay(flow, sim.history), replay(flow, loads(dumps(sim.history)))]
    for decision in [sim.decision, *replays]:
        assert decision.output == "handled"
    assert len(caught) == 3  # live, replay, replay through JSON
    for exc in caught:
        assert isinstance(exc, ValueError)
        assert isinstance(exc, ironflow.StepError)
        assert isinstance(exc, ironflow.IronflowError)
        assert exc.step_id == "charge"
        assert exc.attempts == 3
        assert str(exc) == "card declined"
        assert type(exc.__cause__) is ValueError
        assert str(exc.__cause__) == "card declined"


def test_uncaught_step_failure_fails_the_run_with_the_original_type():
    def flow(ctx):
        yield step.run("a", echo)
        yield step.run("b", boom)
        return "unreachable"

    sim = Sim(flow)
    sim.execute("a")
    sim.execute("b")
    sim.execute("b")
    decision = sim.execute("b")
    assert decision.done and decision.status == "failed"
    assert isinstance(decision.error, ValueError)
    assert isinstance(decision.error, ironflow.StepError)
    (ended,) = decision.events
    assert isinstance(ended, RunFailed)
    assert ended.error.type == "ValueError"
    assert ended.error.message == "boom"
    assert sim.history[-1] is ended
    sim.verify()


# =============================================================================================
# sleep / sleep_until
# =============================================================================================


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        ("30s", 30),
        ("500ms", 0.5),
        ("1.5m", 90),
        ("2h", 7200),
        ("7d", 7 * 86400),
        (_dt.timedelta(minutes=3), 180),
        (pendulum.duration(hours=1), 3600),
        (12, 12),
        (0.25, 0.25),
    ],
)
def test_sleep_is_due_now_plus_duration(duration, seconds):
    def flow(ctx):
        yield step.sleep("nap", duration)
        return ctx.now().isoformat()

    sim = Sim(flow)
    (work,) = sim.decision.commands
    assert (work.id, work.kind) == ("nap", "sleep")
    assert work.due == T0 + _dt.timedelta(seconds=seconds)
    assert sim.decision.events[0].detail["due"] == work.due.isoformat()
    sim.now = work.due
    sim.fire("nap")
    assert output_of(sim.decision) == work.due.isoformat()
    sim.verify()


def test_sleep_due_counts_from_the_current_event_time():
    def flow(ctx):
        yield step.run("a", echo)
        yield step.sleep("nap", "30m")
        yield step.sleep("again", "1h")
        return "woke"

    sim = Sim(flow)
    sim.tick(100)
    sim.execute("a")
    assert sim.pending["nap"].due == T0.add(seconds=100, minutes=30)
    sim.tick(4000)
    sim.fire("nap")
    assert sim.pending["again"].due == T0.add(seconds=4100, hours=1)
    sim.fire("again")
    assert output_of(sim.decision) == "woke"
    sim.verify()


@pytest.mark.parametrize("bad", [0, -5, "soon", "0s", float("nan")])
def test_bad_sleep_duration_raises_value_error_in_the_workflow(bad):
    def flow(ctx):
        try:
            yield step.sleep("nap", bad)
        except ValueError as exc:
            return str(exc)

    sim = Sim(flow)
    assert "nap" in output_of(sim.decision)
    assert sim.scheduled_ids() == []


def test_sleep_until_is_due_at_the_target():
    target = T0.add(days=2, hours=3)

    def flow(ctx):
        yield step.sleep_until("until", target)
        yield step.sleep_until("iso", "2026-03-01T12:00:00+02:00")
        return ctx.now().isoformat()

    sim = Sim(flow)
    (work,) = sim.decision.commands
    assert (work.kind, work.due) == ("sleep_until", target)
    sim.now = target
    sim.fire("until")
    assert sim.pending["iso"].due == pendulum.datetime(2026, 3, 1, 10, tz="UTC")
    sim.now = pendulum.datetime(2026, 3, 1, 10, tz="UTC")
    sim.fire("iso")
    assert output_of(sim.decision) == "2026-03-01T10:00:00+00:00"
    sim.verify()


@pytest.mark.parametrize("offset", [0, -1, -3600])
def test_sleep_until_not_after_now_raises_value_error_at_the_yield(offset):
    def flow(ctx):
        yield step.run("a", echo)
        try:
            yield step.sleep_until("late", ctx.now() + _dt.timedelta(seconds=offset))
        except ValueError as exc:
            return f"caught: {exc}"

    sim = Sim(flow)
    sim.tick(50)
    sim.execute("a")
    out = output_of(sim.decision)
    assert out.startswith("caught: ") and "late" in out and "not after" in out
    assert "late" not in sim.scheduled_ids()
    sim.verify()


def test_sleep_until_in_the_past_uncaught_fails_the_run():
    def flow(ctx):
        yield step.sleep_until("late", "2020-01-01T00:00:00+00:00")

    sim = Sim(flow)
    assert sim.decision.status == "failed"
    assert sim.events(RunFailed)[0].error.type == "ValueError"


def test_sleep_until_is_not_rechecked_on_replay():
    def flow(ctx):
        yield step.sleep_until("until", T0.add(hours=1))
        yield step.run("after", echo, 1)
        return "ok"

    sim = Sim(flow)
    sim.now = T0.add(hours=5)  # the timer fired late
    sim.fire("until")
    sim.execute("after")
    assert output_of(sim.decision) == "ok"
    sim.verify()


def test_timer_fired_resumes_only_its_own_sleep():
    def flow(ctx):
        results = yield step.parallel(
            "p", [lambda s: s.sleep("short", "1m"), lambda s: s.sleep("long", "1h")]
        )
        return results

    sim = Sim(flow)
    assert set(sim.pending) == {"p/0/short", "p/1/long"}
    sim.fire("p/1/long")
    assert set(sim.pending) == {"p/0/short"}
    sim.fire("p/0/short")
    assert output_of(sim.decision) == [None, None]
    sim.verify()


# =============================================================================================
# wait_for_event
# =============================================================================================


def approval_flow(ctx):
    approval = yield step.wait_for_event(
        "approval", "order.approved", match="data.orderId", timeout="2d"
    )
    assert isinstance(approval, ironflow.Event)
    return {"by": approval.data["by"], "id": approval.id, "name": approval.name}


def test_wait_for_event_matches_the_triggering_event_path():
    sim = Sim(approval_flow, {"orderId": "o-1"})
    (work,) = sim.decision.commands
    assert work.kind == "wait_event"
    assert work.due == T0.add(days=2)
    assert work.detail == {
        "due": T0.add(days=2).isoformat(),
        "event": "order.approved",
        "match": "data.orderId",
        "match_value": "o-1",
    }
    assert isinstance(work.command, WaitEvent)
    sim.tick(60)
    sim.match("approval", "order.approved", {"orderId": "o-1", "by": "bob"}, event_id="e-9")
    assert output_of(sim.decision) == {"by": "bob", "id": "e-9", "name": "order.approved"}
    sim.verify()


def test_wait_for_event_value_overrides_the_triggering_event():
    def flow(ctx):
        got = yield step.wait_for_event("w", "user.done", match="data.user.id", value=42)
        return [got.data, got.ts.isoformat()]

    sim = Sim(flow, {"user": {"id": 1}})
    assert sim.pending["w"].detail["match_value"] == 42
    assert sim.pending["w"].due == T0.add(days=7)  # the default timeout
    sim.tick(5)
    sim.match("w", "user.done", {"user": {"id": 42}})
    assert output_of(sim.decision) == [{"user": {"id": 42}}, T0.add(seconds=5).isoformat()]
    sim.verify()


def test_wait_for_event_without_match_matches_any_event_of_that_name():
    def flow(ctx):
        got = yield step.wait_for_event("w", "ping")
        return got.data

    sim = Sim(flow, {"x": 1})
    assert sim.pending["w"].detail["match"] is None
    assert sim.pending["w"].detail["match_value"] is None
    sim.match("w", "ping", [1, 2])
    assert output_of(sim.decision) == [1, 2]


def test_wait_for_event_match_on_nested_list_and_top_level_fields():
    def flow(ctx):
        a = yield step.wait_for_event("by-index", "e", match="data.items.1")
        b = yield step.wait_for_event("by-name", "e", match="name")
        return [a.data, b.data]

    sim = Sim(flow, {"items": ["x", "y"]})
    assert sim.pending["by-index"].detail["match_value"] == "y"
    sim.match("by-index", "e", 1)
    assert sim.pending["by-name"].detail["match_value"] == "flow"
    sim.match("by-name", "e", 2, event_id="ev-3")
    assert output_of(sim.decision) == [1, 2]
    sim.verify()


def test_matched_event_data_is_a_copy():
    def flow(ctx):
        got = yield step.wait_for_event("w", "e")
        got.data["mutated"] = True
        yield step.run("after", echo)
        return got.data

    sim = Sim(flow)
    sim.match("w", "e", {"k": 1})
    sim.execute("after")
    assert output_of(sim.decision) == {"k": 1, "mutated": True}
    recorded = next(e for e in sim.history if type(e).__name__ == "WaitMatched")
    assert recorded.event.data == {"k": 1}
    sim.verify()


def test_wait_timeout_raises_wait_timeout_error_at_the_yield():
    def flow(ctx):
        try:
            yield step.wait_for_event("w", "e", timeout="1h")
        except ironflow.WaitTimeoutError as exc:
            yield step.run("fallback", echo, str(exc))
            return ["timed out", ctx.now().isoformat()]

    sim = Sim(flow)
    sim.now = T0.add(hours=1)
    sim.time_out("w")
    assert set(sim.pending) == {"fallback"}
    assert sim.pending["fallback"].command.args == ("waitForEvent timed out",)
    sim.execute("fallback")
    assert output_of(sim.decision) == ["timed out", T0.add(hours=1).isoformat()]
    sim.verify()


def test_uncaught_wait_timeout_fails_the_run_with_the_documented_message():
    sim = Sim(approval_flow, {"orderId": "o-1"})
    decision = sim.time_out("approval")
    assert decision.status == "failed"
    assert isinstance(decision.error, ironflow.WaitTimeoutError)
    (failed,) = sim.events(RunFailed)
    assert failed.error.message == "waitForEvent timed out"
    assert failed.error.type == "ironflow.errors.WaitTimeoutError"
    sim.verify()


def test_match_path_missing_on_the_triggering_event_raises_value_error_at_the_yield():
    def flow(ctx):
        try:
            yield step.wait_for_event("w", "e", match="data.orderId")
        except ValueError as exc:
            return str(exc)

    for data in (None, {"other": 1}, [1]):
        sim = Sim(flow, data)
        message = output_of(sim.decision)
        assert "data.orderId" in message and "'w'" in message
        assert sim.scheduled_ids() == []
        sim.verify()


# =============================================================================================
# parallel / map
# =============================================================================================


def test_parallel_ids_are_scoped_by_name_and_index():
    def flow(ctx):
        results = yield step.parallel(
            "p",
            [
                lambda s: s.run("same", echo, "zero"),
                lambda s: s.run("same", echo, "one"),
                lambda s: s.sleep("nap", "1m"),
            ],
        )
        return results

    sim = Sim(flow)
    assert [w.id for w in sim.decision.commands] == ["p/0/same", "p/1/same", "p/2/nap"]
    scheduled = sim.decision.events
    assert [(e.id, e.kind, e.scope) for e in scheduled] == [
        ("p", "parallel", ""),
        ("p/0/same", "run", "p/0"),
        ("p/1/same", "run", "p/1"),
        ("p/2/nap", "sleep", "p/2"),
    ]
    assert scheduled[0].fingerprint == "3 branches"
    assert scheduled[0].detail == {"concurrency": None, "on_error": "fail_fast"}
    sim.execute("p/1/same")
    sim.fire("p/2/nap")
    sim.execute("p/0/same")
    assert output_of(sim.decision) == ["zero", "one", None]
    sim.verify()


def test_nested_scopes_append_further():
    def inner(s, label):
        return s.map(
            "inner", ["a", "b"], lambda item, s, i: s.run("leaf", echo, f"{label}{item}{i}")
        )

    def branch(label):
        def gen(s):
            values = yield inner(s, label)
            after = yield s.run("after", echo, label)
            return [*values, after]

        return gen

    def flow(ctx):
        return (yield step.parallel("outer", [branch("x"), branch("y")]))

    sim = Sim(flow)
    assert sorted(sim.pending) == [
        "outer/0/inner/0/leaf",
        "outer/0/inner/1/leaf",
        "outer/1/inner/0/leaf",
        "outer/1/inner/1/leaf",
    ]
    scopes = {e.id: e.scope for e in sim.decision.events}
    assert scopes["outer/0/inner"] == "outer/0"
    assert scopes["outer/1/inner/1/leaf"] == "outer/1/inner/1"
    for sid in ["outer/1/inner/1/leaf", "outer/0/inner/0/leaf", "outer/1/inner/0/leaf"]:
        sim.execute(sid)
    assert "outer/1/after" in sim.pending
    sim.execute("outer/0/inner/1/leaf")
    assert set(sim.pending) == {"outer/0/after", "outer/1/after"}
    sim.execute("outer/0/after")
    sim.execute("outer/1/after")
    assert output_of(sim.decision) == [["xa0", "xb1", "x"], ["ya0", "yb1", "y"]]
    sim.verify()


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_parallel_results_are_in_branch_order_under_any_completion_order(order):
    def flow(ctx):
        return (
            yield step.parallel("p", [lambda s, i=i: s.run("s", echo, i * 10) for i in range(3)])
        )

    sim = Sim(flow)
    for index in order:
        sim.tick(1)
        sim.execute(f"p/{index}/s")
    assert output_of(sim.decision) == [0, 10, 20]
    sim.verify(sizes=(1, 4))


def test_concurrency_window_keeps_at_most_n_in_flight_and_starts_in_index_order():
    def flow(ctx):
        return (
            yield step.map(
                "m",
                list(range(6)),
                lambda item, s, i: s.run("sq", echo, item * item),
                concurrency=2,
            )
        )

    sim = Sim(flow)
    assert sorted(sim.pending) == ["m/0/sq", "m/1/sq"]
    started = ["m/0/sq", "m/1/sq"]
    for done in ["m/1/sq", "m/0/sq", "m/3/sq", "m/2/sq", "m/4/sq"]:
        sim.execute(done)
        assert len(sim.pending) <= 2
        started += [w.id for w in sim.decision.commands]
    assert started == [f"m/{i}/sq" for i in range(6)]
    sim.execute("m/5/sq")
    assert output_of(sim.decision) == [0, 1, 4, 9, 16, 25]
    assert sim.events(CommandScheduled)[0].detail == {"concurrency": 2, "on_error": "fail_fast"}
    sim.verify()


def test_concurrency_one_runs_branches_one_after_another():
    def gen_branch(i):
        def gen(s):
            a = yield s.run("a", echo, i)
            b = yield s.sleep("b", "1s")
            return [a, b]

        return gen

    def flow(ctx):
        return (yield step.parallel("p", [gen_branch(i) for i in range(3)], concurrency=1))

    sim = Sim(flow)
    sequence = []
    while not sim.decision.done:
        (work,) = sim.decision.pending
        sequence.append(work.id)
        sim.carry_out(work)  # steps run, timers fire
    assert sequence == ["p/0/a", "p/0/b", "p/1/a", "p/1/b", "p/2/a", "p/2/b"]
    assert sim.decision.output == [[0, None], [1, None], [2, None]]
    sim.verify()


def test_fail_fast_raises_the_first_failure_in_history_order():
    def flow(ctx):
        try:
            yield step.parallel("p", [lambda s, i=i: s.run("s", echo, i) for i in range(3)])
        except ironflow.StepError as exc:
            after = yield step.run("after", echo, exc.step_id)
            return after

    sim = Sim(flow)
    sim.execute("p/0/s")
    sim.fail("p/2/s", ValueError("two"), retryable=False)
    # The workflow moved on at once; branch 1 is still in flight but no longer pending.
    assert set(sim.pending) == {"after"}
    # Its later completion is accepted and changes nothing.
    late = sim.complete("p/1/s", 1, attempt=1)
    assert not late.commands and not late.events
    assert [w.id for w in late.pending] == ["after"]
    sim.execute("after")
    assert output_of(sim.decision) == "p/2/s"
    sim.verify()


def test_fail_fast_in_one_batch_takes_the_earlier_event():
    def flow(ctx):
        try:
            yield step.parallel("p", [lambda s, i=i: s.run("s", echo, i) for i in range(3)])
        except ValueError as exc:
            return str(exc)

    sim = Sim(flow)
    sim.feed_many(
        [
            (
                StepFailed,
                {
                    "id": "p/2/s",
                    "attempt": 1,
                    "retryable": False,
                    "error": ErrorInfo("ValueError", "second-index first"),
                },
            ),
            (
                StepFailed,
                {
                    "id": "p/0/s",
                    "attempt": 1,
                    "retryable": False,
                    "error": ErrorInfo("ValueError", "first-index second"),
                },
            ),
        ]
    )
    assert output_of(sim.decision) == "second-index first"
    sim.verify()


def test_fail_fast_starts_no_new_branch():
    def flow(ctx):
        try:
            yield step.parallel(
                "p", [lambda s, i=i: s.run("s", echo, i) for i in range(4)], concurrency=2
            )
        except ValueError:
            return "failed fast"

    sim = Sim(flow)
    sim.fail("p/0/s", ValueError("x"), retryable=False)
    assert output_of(sim.decision) == "failed fast"
    assert not any(sid.startswith(("p/2", "p/3")) for sid in sim.scheduled_ids())
    late = sim.complete("p/1/s", "late", attempt=1)
    assert late.done and late.output == "failed fast" and not late.events
    sim.verify()


def test_fail_fast_waits_for_a_branch_retry_to_be_exhausted():
    def flow(ctx):
        return (
            yield step.parallel(
                "p",
                [
                    lambda s: s.run("flaky", echo, retry=ironflow.RetryPolicy(max_attempts=2)),
                    lambda s: s.run("ok", echo, "fine"),
                ],
            )
        )

    sim = Sim(flow)
    sim.fail("p/0/flaky", RuntimeError("once"))
    assert sim.decision.events[0].id == "p/0/flaky"
    assert isinstance(sim.decision.events[0], RetryScheduled)
    sim.execute("p/1/ok")
    sim.complete("p/0/flaky", "second try")
    assert output_of(sim.decision) == ["second try", "fine"]
    sim.verify()


def test_fail_fast_uncaught_abandons_in_flight_branches_and_fails_the_run():
    def flow(ctx):
        yield step.parallel("p", [lambda s: s.run("a", echo), lambda s: s.sleep("b", "1h")])

    sim = Sim(flow)
    decision = sim.fail("p/0/a", ValueError("bad"), retryable=False)
    assert decision.status == "failed" and decision.pending == ()
    assert sim.events(RunFailed)[0].error.type == "ValueError"
    late = sim.fire("p/1/b")
    assert late.status == "failed" and not late.events
    sim.verify()


def test_all_settled_puts_the_exception_in_the_failed_slot():
    def flow(ctx):
        results = yield step.parallel(
            "p",
            [
                lambda s: s.run("a", echo, "A"),
                lambda s: s.run("b", echo),
                lambda s: s.run("c", echo, "C"),
            ],
            on_error="all_settled",
        )
        error = results[1]
        assert isinstance(error, ValueError) and isinstance(error, ironflow.StepError)
        return [results[0], [type(error).__name__, str(error), error.step_id], results[2]]

    sim = Sim(flow)
    sim.fail("p/1/b", ValueError("b broke"), retryable=False)
    sim.execute("p/2/c")
    assert not sim.decision.done
    sim.execute("p/0/a")
    assert output_of(sim.decision) == ["A", ["ValueError", "b broke", "p/1/b"], "C"]
    sim.verify()


def test_all_settled_keeps_starting_branches_after_a_failure():
    def flow(ctx):
        results = yield step.map(
            "m",
            [1, 2, 3],
            lambda item, s, i: s.run("x", echo, item),
            concurrency=1,
            on_error="all_settled",
        )
        return [r if not isinstance(r, Exception) else "error" for r in results]

    sim = Sim(flow)
    sim.fail("m/0/x", ValueError("no"), retryable=False)
    assert set(sim.pending) == {"m/1/x"}
    sim.execute("m/1/x")
    sim.execute("m/2/x")
    assert output_of(sim.decision) == ["error", 2, 3]
    sim.verify()


def test_empty_map_and_parallel_give_empty_lists_at_once():
    def flow(ctx):
        a = yield step.map("m", [], lambda item, s, i: s.run("x", echo))
        b = yield step.parallel("p", [])
        return [a, b]

    sim = Sim(flow)
    assert output_of(sim.decision) == [[], []]
    scheduled = sim.events(CommandScheduled)
    assert [(e.id, e.kind, e.fingerprint) for e in scheduled] == [
        ("m", "map", "0 items"),
        ("p", "parallel", "0 branches"),
    ]
    sim.verify()


def test_branch_may_return_a_command_or_a_generator():
    def two_steps(s):
        a = yield s.run("first", echo, 1)
        b = yield s.run("second", echo, a + 1)
        return a + b

    def no_yield(s):
        return "no yield"
        yield  # pragma: no cover - makes this a generator

    def flow(ctx):
        return (
            yield step.parallel("p", [lambda s: s.run("single", echo, "one"), two_steps, no_yield])
        )

    sim = Sim(flow)
    assert set(sim.pending) == {"p/0/single", "p/1/first"}
    sim.execute("p/1/first")
    assert set(sim.pending) == {"p/0/single", "p/1/second"}
    sim.execute("p/1/second")
    sim.execute("p/0/single")
    assert output_of(sim.decision) == ["one", 3, "no yield"]
    sim.verify()


def test_map_calls_fn_with_item_namespace_and_index():
    def per_item(item, s, index):
        assert s.run is step.run and s.sleep is step.sleep
        return s.run(f"item-{item['k']}", echo, [item["k"], index])

    def flow(ctx):
        return (yield step.map("m", ({"k": "a"}, {"k": "b"}), per_item))

    sim = Sim(flow)
    assert sorted(sim.pending) == ["m/0/item-a", "m/1/item-b"]
    assert sim.decision.events[0].fingerprint == "2 items"
    sim.execute("m/1/item-b")
    sim.execute("m/0/item-a")
    assert output_of(sim.decision) == [["a", 0], ["b", 1]]
    sim.verify()


def test_branch_that_raises_or_returns_garbage_fails_its_slot():
    def raises(s):
        raise KeyError("no branch")

    def flow(ctx):
        results = yield step.parallel(
            "p", [raises, lambda s: 42, lambda s: s.run("ok", echo, 1)], on_error="all_settled"
        )
        return [type(r).__name__ if isinstance(r, Exception) else r for r in results]

    sim = Sim(flow)
    sim.execute("p/2/ok")
    assert output_of(sim.decision) == ["KeyError", "TypeError", 1]
    sim.verify()


def test_parallel_of_all_synchronous_branches_resolves_without_waiting():
    def flow(ctx):
        results = yield step.parallel(
            "p", [lambda s: s.compensate("x", undo), lambda s: s.compensate("y", undo)]
        )
        return results

    sim = Sim(flow)
    assert output_of(sim.decision) == [None, None]
    assert "p/0/compensate:x" in sim.scheduled_ids()


# =============================================================================================
# invoke / invoke_async / publish
# =============================================================================================


@ironflow.function(id="child-fn")
def child_fn(ctx):
    return (yield step.run("x", echo))


def test_invoke_waits_for_the_child_output():
    def flow(ctx):
        out = yield step.invoke("call", child_fn, {"n": 1}, timeout="1h")
        return out

    sim = Sim(flow)
    (work,) = sim.decision.commands
    assert (work.kind, work.due) == ("invoke", T0.add(hours=1))
    assert work.detail["function"] == "child-fn"
    assert work.detail["data"] == {"n": 1}
    assert work.detail["child_run_id"] == "run-1/call"
    assert isinstance(work.command, Invoke)
    assert sim.decision.events[0].fingerprint == "child-fn"
    sim.child_started("call", "run-1/call")
    assert not sim.decision.done and set(sim.pending) == {"call"}
    sim.child_completed("call", {"result": [1, 2]}, "run-1/call")
    assert output_of(sim.decision) == {"result": [1, 2]}
    sim.verify()


def test_invoke_child_failure_raises_invoke_error_with_the_cause():
    def flow(ctx):
        try:
            yield step.invoke("call", "child-fn")
        except ironflow.InvokeError as exc:
            cause = exc.__cause__
            return [exc.function_id, exc.child_run_id, type(cause).__name__, str(cause)]

    sim = Sim(flow)
    sim.child_started("call")
    sim.child_failed("call", ValueError("child broke"))
    assert output_of(sim.decision) == ["child-fn", "child-1", "ValueError", "child broke"]
    sim.verify()


def test_invoke_child_failure_uncaught_fails_the_run_and_is_never_retried():
    def flow(ctx):
        return (yield step.invoke("call", "child-fn"))

    sim = Sim(flow)
    sim.child_started("call")
    decision = sim.child_failed("call", RuntimeError("x"))
    assert decision.status == "failed"
    assert isinstance(decision.error, ironflow.InvokeError)
    assert "child-fn" in str(decision.error) and "RuntimeError: x" in str(decision.error)
    assert sim.events(RunFailed)[0].error.type == "ironflow.errors.InvokeError"
    assert not sim.events(RetryScheduled)
    assert len(sim.events(ChildFailed)) == 1


def test_invoke_async_yields_the_child_run_id_and_does_not_wait():
    def flow(ctx):
        child = yield step.invoke_async("spawn", child_fn, [1])
        yield step.run("next", echo, child)
        return child

    sim = Sim(flow)
    (work,) = sim.decision.commands
    assert work.kind == "invoke_async" and work.due is None
    assert work.detail["child_run_id"] == "run-1/spawn"
    sim.child_started("spawn", "run-1/spawn")
    assert set(sim.pending) == {"next"}
    assert sim.pending["next"].command.args == ("run-1/spawn",)
    sim.execute("next")
    assert output_of(sim.decision) == "run-1/spawn"
    sim.verify()


def test_publish_yields_the_event_id():
    def flow(ctx):
        event_id = yield step.publish("announce", "order.shipped", {"id": 5})
        return event_id

    sim = Sim(flow)
    (work,) = sim.decision.commands
    assert work.kind == "publish"
    assert work.detail == {
        "event": "order.shipped",
        "data": {"id": 5},
        "event_id": "run-1/announce",
    }
    assert isinstance(work.command, Publish)
    sim.published("announce", "run-1/announce")
    assert output_of(sim.decision) == "run-1/announce"
    sim.verify()


# =============================================================================================
# compensate
# =============================================================================================


def saga(ctx):
    a = yield step.run("a", echo, "A")
    yield step.compensate("a", undo, "undo-a", a)
    b = yield step.run("b", echo, "B")
    yield step.compensate("b", undo, "undo-b", b)
    c = yield step.run("c", echo, "C")
    yield step.compensate("c", undo, "undo-c")
    yield step.run("d", boom)
    return [a, b, c]


def test_compensations_run_in_reverse_order_as_undo_work():
    sim = Sim(saga)
    for sid in "abc":
        sim.execute(sid)
    decision = sim.fail("d", ValueError("boom"), retryable=False)
    assert decision.status == "compensating" and not decision.done
    (work,) = decision.commands
    assert (work.id, work.kind) == ("compensate:c", "undo")
    assert isinstance(work.command, Compensate)
    assert work.command.args == ("undo-c",)
    assert isinstance(decision.events[0], CompensationScheduled)
    assert decision.events[0].for_step == "c"
    order = []
    while not sim.decision.done:
        (work,) = sim.decision.pending
        order.append(work.id)
        sim.execute(work.id)
    assert order == ["compensate:c", "compensate:b", "compensate:a"]
    assert [e.for_step for e in sim.events(CompensationScheduled)] == ["c", "b", "a"]
    assert sim.events(CompensationScheduled)
    assert sim.decision.status == "failed"
    assert isinstance(sim.decision.error, ValueError)
    assert sim.events(RunFailed)[0].error.message == "boom"
    sim.verify()


def test_a_failing_undo_is_recorded_and_the_rest_still_run():
    sim = Sim(saga)
    for sid in "abc":
        sim.execute(sid)
    sim.fail("d", ValueError("original"), retryable=False)
    sim.complete("compensate:c")
    decision = sim.fail("compensate:b", RuntimeError("undo broke"))
    assert [w.id for w in decision.commands] == ["compensate:a"]
    decision = sim.complete("compensate:a")
    assert decision.done and decision.status == "failed"
    # The run fails with the ORIGINAL error, not the undo's.
    assert isinstance(decision.error, ValueError)
    assert str(decision.error) == "original"
    (failed,) = sim.events(RunFailed)
    assert (failed.error.type, failed.error.message) == ("ValueError", "original")
    undo_failures = [e for e in sim.events(StepFailed) if e.id == "compensate:b"]
    assert undo_failures[0].error.message == "undo broke"
    sim.verify()


def test_compensations_run_after_retries_are_exhausted_and_on_workflow_errors():
    def flow(ctx):
        yield step.run("a", echo)
        yield step.compensate("a", undo)
        raise RuntimeError("workflow bug")

    sim = Sim(flow)
    sim.execute("a")
    assert sim.decision.status == "compensating"
    assert [w.id for w in sim.decision.commands] == ["compensate:a"]
    sim.execute("compensate:a")
    assert sim.decision.status == "failed"
    assert sim.events(RunFailed)[0].error.type == "RuntimeError"

    sim = Sim(saga)
    for sid in "abc":
        sim.execute(sid)
    sim.fail("d", ValueError("1"))
    assert sim.decision.status == "running"
    sim.fail("d", ValueError("2"))
    assert not sim.events(CompensationScheduled)
    sim.fail("d", ValueError("3"))
    assert sim.decision.status == "compensating"
    assert sim.events(CompensationScheduled)[0].id == "compensate:c"
    sim.verify()


def test_no_compensations_on_success():
    def flow(ctx):
        yield step.run("a", echo)
        yield step.compensate("a", undo)
        return "fine"

    sim = Sim(flow)
    sim.execute("a")
    assert output_of(sim.decision) == "fine"
    assert not sim.events(CompensationScheduled)
    assert sim.decision.status == "completed"
    sim.verify()


def test_compensations_caught_failure_runs_no_undo():
    def flow(ctx):
        yield step.run("a", echo)
        yield step.compensate("a", undo)
        try:
            yield step.run("b", boom)
        except ValueError:
            return "recovered"

    sim = Sim(flow)
    sim.execute("a")
    sim.fail("b", ValueError("x"), retryable=False)
    assert output_of(sim.decision) == "recovered"
    assert not sim.events(CompensationScheduled)


def test_cancel_without_compensate_runs_no_undo():
    sim = Sim(saga)
    sim.execute("a")
    sim.execute("b")
    decision = sim.cancel(compensate=False)
    assert decision.done and decision.status == "cancelled"
    assert isinstance(decision.error, ironflow.CancelledError)
    assert decision.pending == ()
    assert not sim.events(CompensationScheduled)
    # The in-flight step finishing later changes nothing.
    late = sim.complete("c", "C", attempt=1)
    assert late.status == "cancelled" and not late.events and not late.commands
    sim.verify()


def test_cancel_with_compensate_runs_the_undos_and_ends_cancelled():
    sim = Sim(saga)
    sim.execute("a")
    sim.execute("b")
    decision = sim.cancel(compensate=True)
    assert not decision.done and decision.status == "cancelling"
    assert [w.id for w in decision.commands] == ["compensate:b"]
    sim.execute("compensate:b")
    decision = sim.execute("compensate:a")
    assert decision.done and decision.status == "cancelled"
    assert isinstance(decision.error, ironflow.CancelledError)
    assert [e.for_step for e in sim.events(CompensationScheduled)] == ["b", "a"]
    assert not sim.events(RunFailed) and not sim.events(RunCompleted)
    sim.verify()


def test_cancel_with_compensate_and_nothing_registered_ends_at_once():
    def flow(ctx):
        yield step.sleep("s", "1h")

    sim = Sim(flow)
    decision = sim.cancel(compensate=True)
    assert decision.done and decision.status == "cancelled"


def test_cancel_after_the_run_ended_changes_nothing():
    def flow(ctx):
        return (yield step.run("a", echo, 1))

    sim = Sim(flow)
    sim.execute("a")
    decision = sim.cancel()
    assert decision.status == "completed" and decision.output == 1


# =============================================================================================
# ctx
# =============================================================================================


def test_ctx_now_is_the_time_of_the_event_being_processed():
    def flow(ctx):
        times = [ctx.now()]
        yield step.run("a", echo)
        times.append(ctx.now())
        yield step.sleep("s", "1h")
        times.append(ctx.now())
        return [t.isoformat() for t in times]

    sim = Sim(flow)
    sim.tick(7)
    sim.execute("a")
    sim.now = T0.add(hours=1, seconds=9)
    sim.fire("s")
    expected = [T0, T0.add(seconds=7), T0.add(hours=1, seconds=9)]
    assert output_of(sim.decision) == [t.isoformat() for t in expected]
    # Not the wall clock: a replay long after still sees the recorded instants.
    assert replay(flow, sim.history).output == [t.isoformat() for t in expected]
    sim.verify()


def test_ctx_now_is_the_run_start_time_not_the_wall_clock():
    start = pendulum.datetime(1999, 12, 31, 23, 59, tz="UTC")

    def flow(ctx):
        return ctx.now().isoformat()
        yield  # pragma: no cover - makes this a generator

    decision = Interpreter(flow).feed(
        [RunStarted(0, start, "r", "flow", Event("e", "flow", None, start.add(days=1)))]
    )
    assert decision.output == start.isoformat()


def test_ctx_event_and_run_id():
    def flow(ctx):
        return {
            "run": ctx.run_id,
            "name": ctx.event.name,
            "data": ctx.event.data,
            "id": ctx.event.id,
        }
        yield  # pragma: no cover - makes this a generator

    sim = Sim(flow, {"k": [1]}, run_id="the-run")
    assert output_of(sim.decision) == {
        "run": "the-run",
        "name": "flow",
        "data": {"k": [1]},
        "id": "ev-1",
    }


def random_flow(ctx):
    first = [str(ctx.uuid()), ctx.random()]
    yield step.run("a", echo)
    second = [str(ctx.uuid()), ctx.random()]
    return first + second


def test_ctx_uuid_and_random_are_deterministic_across_replays():
    sim = Sim(random_flow, run_id="run-x")
    sim.execute("a")
    out = output_of(sim.decision)
    for _ in range(2):
        assert replay(random_flow, sim.history).output == out
    assert replay(random_flow, loads(dumps(sim.history))).output == out
    u1, r1, u2, r2 = out
    assert u1 != u2 and r1 != r2
    for u in (u1, u2):
        assert uuid.UUID(u).version == 4
    for r in (r1, r2):
        assert 0.0 <= r < 1.0
    sim.verify()


def test_ctx_uuid_and_random_differ_between_runs():
    outs = []
    for run_id in ("run-1", "run-2"):
        sim = Sim(random_flow, run_id=run_id)
        sim.execute("a")
        outs.append(output_of(sim.decision))
    assert outs[0][0] != outs[1][0] and outs[0][1] != outs[1][1]
    assert outs[0][2] != outs[1][2]


def patched_v1(ctx):
    yield step.run("a", echo)
    yield step.run("b", echo)
    return "v1"


def patched_v2(ctx):
    yield step.run("a", echo)
    if ctx.patched("add-audit"):
        yield step.run("audit", echo)
        version = "v2"
    else:
        version = "v1 path"
    if ctx.patched("add-audit"):  # asked twice: one answer, one marker
        version += "!"
    yield step.run("b", echo)
    return version


def test_patched_is_true_on_a_new_run_and_recorded_once():
    sim = Sim(patched_v2)
    sim.execute("a")
    markers = sim.events(PatchMarked)
    assert [m.change_id for m in markers] == ["add-audit"]
    assert "audit" in sim.pending
    sim.execute("audit")
    sim.execute("b")
    assert output_of(sim.decision) == "v2!"
    assert len(sim.events(PatchMarked)) == 1
    sim.verify()


def test_patched_is_false_when_replaying_a_history_without_the_marker():
    old = Sim(patched_v1)
    old.execute("a")
    assert set(old.pending) == {"b"}
    # The new code replays the old history: it takes the old path, no divergence.
    decision = replay(patched_v2, old.history)
    assert not decision.events and not decision.commands
    assert [w.id for w in decision.pending] == ["b"]
    # And continues that run on the old path.
    interp = Interpreter(patched_v2)
    interp.feed(old.history)
    history = list(old.history)
    done = StepCompleted(len(history), T0, "b", 1, None)
    history.append(done)
    decision = interp.feed([done])
    assert decision.output == "v1 path"
    assert not any(isinstance(e, PatchMarked) for e in decision.events)
    assert replay(patched_v2, history) == decision


def test_patched_is_true_past_the_end_of_an_old_history():
    old = Sim(patched_v1)
    # The old run has only started step "a"; the new code reaches patched() past its history.
    interp = Interpreter(patched_v2)
    interp.feed(old.history)
    done = StepCompleted(len(old.history), T0, "a", 1, None)
    decision = interp.feed([done])
    assert [w.id for w in decision.commands] == ["audit"]
    assert any(isinstance(e, PatchMarked) for e in decision.events)
    assert replay(patched_v2, [*old.history, done]) == decision


def test_patched_is_true_on_replay_of_a_history_with_the_marker():
    sim = Sim(patched_v2)
    sim.execute("a")
    sim.execute("audit")
    decision = replay(patched_v2, sim.history)
    assert [w.id for w in decision.pending] == ["b"]
    assert not decision.events
    sim.execute("b")
    assert replay(patched_v2, sim.history).output == "v2!"
    assert replay(patched_v2, loads(dumps(sim.history))).output == "v2!"


def test_patched_rejects_a_blank_change_id():
    def flow(ctx):
        try:
            ctx.patched("  ")
        except ValueError as exc:
            return str(exc)
        yield

    assert "change id" in output_of(Sim(flow).decision)


def test_ctx_is_replaying():
    seen = []

    def flow(ctx):
        seen.append(("start", ctx.is_replaying))
        yield step.run("a", echo)
        seen.append(("after a", ctx.is_replaying))
        yield step.run("b", echo)
        seen.append(("after b", ctx.is_replaying))
        return None

    sim = Sim(flow, check=False)
    sim.execute("a")
    assert seen == [("start", False), ("after a", False)]
    seen.clear()
    replay(flow, sim.history)  # history ends with b scheduled
    assert seen == [("start", True), ("after a", True)]
    seen.clear()
    sim.execute("b")
    assert seen == [("after b", False)]
    seen.clear()
    # A history that ends with a new runtime event: replaying up to it, live after it.
    replay(flow, sim.history[:-1])
    assert seen == [("start", True), ("after a", True), ("after b", False)]


def test_ctx_log_is_silent_while_replaying(caplog):
    def flow(ctx):
        ctx.log.info("starting %s", ctx.run_id)
        yield step.run("a", echo)
        ctx.log.info("after a")
        return None

    caplog.set_level(logging.INFO, logger="ironflow.workflow")
    sim = Sim(flow, check=False)
    sim.execute("a")
    live = [r.getMessage() for r in caplog.records]
    assert live == ["starting run-1", "after a"]
    caplog.clear()
    replay(flow, sim.history)
    assert [r.getMessage() for r in caplog.records] == []


# =============================================================================================
# resuming a failed run
# =============================================================================================


def resumable(ctx):
    a = yield step.run("a", echo, "A")
    b = yield step.run("b", boom)
    return [a, b]


def test_resume_after_failure_reruns_the_failed_step_with_the_next_attempt():
    sim = Sim(resumable)
    sim.execute("a")
    for _ in range(3):
        sim.execute("b")
    assert sim.decision.status == "failed"
    sim.tick(3600)
    decision = sim.resume()
    assert not decision.done and decision.status == "running"
    (work,) = decision.commands
    assert (work.id, work.attempt, work.due) == ("b", 4, sim.now)
    assert isinstance(decision.events[0], RetryScheduled)
    assert decision.events[0].attempt == 4
    assert [w.id for w in decision.pending] == ["b"]
    # Completed steps are kept: "a" is not scheduled again.
    assert sim.scheduled_ids().count("a") == 1
    sim.complete("b", "B at last")
    assert output_of(sim.decision) == ["A", "B at last"]
    assert sim.decision.status == "completed"
    sim.verify()


def test_resume_after_a_non_retryable_failure():
    sim = Sim(resumable)
    sim.execute("a")
    sim.fail("b", ironflow.NonRetryableError("config missing"))
    assert sim.decision.status == "failed"
    decision = sim.resume()
    assert decision.commands[0].attempt == 2
    sim.complete("b", "B")
    assert output_of(sim.decision) == ["A", "B"]
    sim.verify()


def test_resume_after_compensations_ran_and_fail_again():
    sim = Sim(saga)
    for sid in "abc":
        sim.execute(sid)
    sim.fail("d", ValueError("first"), retryable=False)
    for undo_id in ("compensate:c", "compensate:b", "compensate:a"):
        sim.execute(undo_id)
    assert sim.decision.status == "failed"
    decision = sim.resume()
    assert decision.status == "running" and decision.commands[0].id == "d"
    assert decision.commands[0].attempt == 2
    # It fails again: the undos run again, in reverse order.
    sim.fail("d", ValueError("second"), retryable=False)
    order = []
    while not sim.decision.done:
        (work,) = sim.decision.pending
        order.append(work.id)
        sim.execute(work.id)
    assert order == ["compensate:c", "compensate:b", "compensate:a"]
    assert str(sim.decision.error) == "second"
    sim.verify()


def two_branches(ctx):
    def chain(s):
        first = yield s.run("b", echo, "B")
        second = yield s.run("c", echo, first + "C")
        return second

    return (yield step.parallel("p", [lambda s: s.run("a", echo, "A"), chain]))


def test_resume_replays_in_one_batch_with_work_decided_after_the_resume():
    sim = Sim(two_branches)
    # In one batch: branch 1 moves on to "c" and branch 0 fails, failing the run at once.
    sim.feed_many(
        [
            (StepCompleted, {"id": "p/1/b", "attempt": 1, "result": "B"}),
            (
                StepFailed,
                {
                    "id": "p/0/a",
                    "attempt": 1,
                    "retryable": False,
                    "error": ErrorInfo("ValueError", "x"),
                },
            ),
        ]
    )
    assert sim.decision.status == "failed"
    assert "p/1/c" not in sim.scheduled_ids()
    decision = sim.resume()
    assert [w.id for w in decision.commands] == ["p/1/c", "p/0/a"]
    assert decision.commands[1].attempt == 2
    sim.complete("p/1/c", "BC")
    # A cold replay of everything in one feed folds the resume and what followed it.
    assert replay(two_branches, sim.history).pending == sim.decision.pending
    sim.complete("p/0/a", "A")
    assert output_of(sim.decision) == ["A", "BC"]
    sim.verify()


def test_resume_makes_abandoned_in_flight_branches_pending_again():
    def flow(ctx):
        return (yield step.parallel("p", [lambda s: s.run("a", echo), lambda s: s.run("b", echo)]))

    sim = Sim(flow)
    sim.fail("p/0/a", ValueError("x"), retryable=False)
    assert sim.decision.pending == ()
    decision = sim.resume()
    assert {w.id for w in decision.pending} == {"p/0/a", "p/1/b"}
    assert [w.id for w in decision.commands] == ["p/0/a"]  # "p/1/b" was scheduled before
    sim.complete("p/1/b", "B")
    sim.complete("p/0/a", "A")
    assert output_of(sim.decision) == ["A", "B"]
    sim.verify()


def test_resume_keeps_a_late_completion_of_an_abandoned_branch():
    def flow(ctx):
        return (yield step.parallel("p", [lambda s: s.run("a", echo), lambda s: s.run("b", echo)]))

    sim = Sim(flow)
    sim.fail("p/0/a", ValueError("x"), retryable=False)
    sim.complete("p/1/b", "B", attempt=1)  # ignored while failed ...
    decision = sim.resume()
    assert [w.id for w in decision.pending] == ["p/0/a"]  # ... and kept on resume
    sim.complete("p/0/a", "A")
    assert output_of(sim.decision) == ["A", "B"]
    sim.verify()


def test_undo_registered_by_a_branch_abandoned_in_the_same_batch_still_runs():
    def branch(s):
        yield s.run("a", echo)
        yield s.compensate("a", undo, "undo a")
        yield s.run("a2", echo)

    def flow(ctx):
        yield step.parallel("p", [branch, lambda s: s.run("b", echo)])

    sim = Sim(flow)
    sim.feed_many(
        [
            (StepCompleted, {"id": "p/0/a", "attempt": 1, "result": None}),
            (
                StepFailed,
                {
                    "id": "p/1/b",
                    "attempt": 1,
                    "retryable": False,
                    "error": ErrorInfo("ValueError", "b failed"),
                },
            ),
        ]
    )
    assert "p/0/compensate:a" in sim.scheduled_ids()
    assert "p/0/a2" not in sim.scheduled_ids()
    assert [w.id for w in sim.decision.commands] == ["p/0/compensate:a"]
    sim.execute("p/0/compensate:a")
    assert sim.decision.status == "failed" and str(sim.decision.error) == "b failed"
    sim.verify()


def waits_for_approval(ctx):
    event = yield step.wait_for_event("w", "approved", timeout="1h")
    return event.data


def test_resume_after_a_wait_timed_out_waits_again_with_a_fresh_timeout():
    sim = Sim(waits_for_approval)
    sim.tick(60)
    sim.time_out("w")
    assert sim.decision.status == "failed"
    sim.tick(600)
    decision = sim.resume()
    assert not decision.done and not decision.commands
    (work,) = decision.pending
    assert (work.id, work.kind, work.due) == ("w", "wait_event", sim.now + _dt.timedelta(hours=1))
    sim.verify()
    # It can time out again, fail again, and be resumed again: each resume a fresh hour.
    sim.tick(3600)
    sim.time_out("w")
    assert sim.decision.status == "failed"
    sim.tick(5)
    (work,) = sim.resume().pending
    assert work.due == sim.now + _dt.timedelta(hours=1)
    sim.verify()
    sim.match("w", "approved", {"ok": True})
    assert output_of(sim.decision) == {"ok": True}
    assert len(sim.events(RunResumed)) == 2
    sim.verify()


def test_resume_after_a_child_failed_waits_for_the_child_again():
    def flow(ctx):
        return (yield step.invoke("call", "child-fn", {"n": 1}, timeout="1h"))

    sim = Sim(flow)
    sim.child_started("call", "run-1/call")
    sim.child_failed("call", RuntimeError("child broke"), "run-1/call")
    assert sim.decision.status == "failed"
    sim.tick(90)
    decision = sim.resume()
    (work,) = decision.pending
    assert (work.id, work.kind) == ("call", "invoke")
    assert work.due == sim.now + _dt.timedelta(hours=1)
    assert not decision.commands  # the runtime re-indexes what is pending after a resume
    sim.verify()
    sim.child_completed("call", {"ok": 1}, "run-1/call")
    assert output_of(sim.decision) == {"ok": 1}
    sim.verify()


def test_resume_retries_every_step_that_failed_in_the_failing_batch():
    # Found in review: the second failure, ignored because its branch was already abandoned,
    # failed the resumed run again at once.
    sim = Sim(two_branches)
    error = ErrorInfo("ValueError", "down")
    sim.feed_many(
        [
            (StepFailed, {"id": "p/0/a", "attempt": 1, "retryable": False, "error": error}),
            (StepFailed, {"id": "p/1/b", "attempt": 1, "retryable": False, "error": error}),
        ]
    )
    assert sim.decision.status == "failed"
    decision = sim.resume()
    assert not decision.done
    assert sorted((e.id, e.attempt) for e in decision.events) == [("p/0/a", 2), ("p/1/b", 2)]
    assert all(isinstance(e, RetryScheduled) for e in decision.events)
    sim.verify()


def test_fixed_code_gets_past_a_second_failure_after_an_earlier_resume():
    # Found in review: folding again after the first resume hid the later RunResumed from the
    # look-ahead, so fixed code could not skip the second failure.
    def old(ctx):
        a = yield step.run("a", echo, "A", retry=ironflow.RetryPolicy(max_attempts=1))
        b = yield step.run("b", boom, retry=ironflow.RetryPolicy(max_attempts=1))
        return [a, b]

    def fixed(ctx):
        a = yield step.run("a", echo, "A", retry=ironflow.RetryPolicy(max_attempts=1))
        try:
            b = yield step.run("b", boom, retry=ironflow.RetryPolicy(max_attempts=1))
        except ironflow.StepError:
            b = "fallback"
        return [a, b]

    sim = Sim(old)
    sim.fail("a", ValueError("x"), retryable=False)
    sim.resume()
    sim.complete("a", "A")
    sim.fail("b", ValueError("y"), retryable=False)
    assert sim.decision.status == "failed"
    history = [*sim.history, RunResumed(seq=len(sim.history), ts=sim.now, reason="fixed")]
    decision = replay(fixed, history)
    assert decision.done and decision.output == ["A", "fallback"]
    assert Interpreter(fixed).feed(history) == decision


def test_resume_does_not_retry_a_step_failure_the_workflow_caught():
    def flow(ctx):
        with contextlib.suppress(ironflow.StepError):
            yield step.run("a", boom, retry=ironflow.RetryPolicy(max_attempts=1))
        b = yield step.run("b", echo, {"x": 1})
        return b["missing"]  # the run fails here, in its own code

    sim = Sim(flow)
    sim.execute("a")
    sim.execute("b")
    assert sim.decision.status == "failed"
    decision = sim.resume()
    # The same code fails the same way again; "a" is not tried again.
    assert decision.done and decision.status == "failed"
    assert not sim.events(RetryScheduled)
    assert isinstance(decision.error, KeyError)
    sim.verify()


def test_resume_does_not_retry_a_failure_all_settled_kept():
    # Found by the resume property: the step failed for good, the map kept its error, and
    # the workflow then raised in the same fold. The failure is the code's, not the step's.
    def flow(ctx):
        (result,) = yield step.map(
            "m", [1], lambda item, s, i: s.run("item", boom), on_error="all_settled"
        )
        raise RuntimeError(f"the workflow's own bug, after {type(result).__name__}")

    sim = Sim(flow)
    sim.fail("m/0/item", ValueError("x"), retryable=False)
    assert sim.decision.status == "failed"
    assert "own bug" in str(sim.decision.error)
    decision = sim.resume()
    assert decision.done and decision.status == "failed"
    assert not sim.events(RetryScheduled)
    assert "m/0/item" not in {w.id for w in decision.pending}
    sim.verify()


def failing_after_a(ctx):
    yield step.run("a", echo, "A")
    yield step.compensate("a", undo, "undo a")
    raise KeyError("a bug in the workflow")


def fixed_after_a(ctx):
    a = yield step.run("a", echo, "A")
    yield step.compensate("a", undo, "undo a")
    return (yield step.run("b", echo, a + "B"))


def test_code_fixed_after_a_failure_runs_on_from_where_it_failed():
    sim = Sim(failing_after_a)
    sim.execute("a")
    sim.execute("compensate:a")
    assert sim.decision.status == "failed"
    failed = list(sim.history)
    history = [*failed, RunResumed(seq=len(failed), ts=sim.now, reason="fixed")]
    # The fixed code sees the failure taken back: its undo and RunFailed no longer count.
    decision = replay(fixed_after_a, history)
    assert [w.id for w in decision.commands] == ["b"]
    assert [type(e) for e in decision.events] == [CommandScheduled]
    assert decision.status == "running"
    interp = Interpreter(fixed_after_a)
    assert interp.feed(history) == decision
    history += decision.events
    interp.record(list(decision.events))
    done = StepCompleted(seq=len(history), ts=sim.now, id="b", attempt=1, result="AB")
    decision = interp.feed([done])
    assert decision.done and decision.output == "AB"
    history += [done, *decision.events]
    assert replay(fixed_after_a, history) == Interpreter(fixed_after_a).feed(history)
    assert replay(fixed_after_a, history).output == "AB"
    # Without the resume, the fixed code does not explain the recorded failure.
    with pytest.raises(ironflow.NonDeterminismError, match=r"RunFailed|compensation"):
        replay(fixed_after_a, failed)


def test_a_failure_taken_back_still_checks_the_rest_of_the_history():
    def different(ctx):
        yield step.run("other", echo, "A")

    sim = Sim(failing_after_a)
    sim.execute("a")
    sim.execute("compensate:a")
    history = [*sim.history, RunResumed(seq=len(sim.history), ts=sim.now, reason="x")]
    with pytest.raises(ironflow.NonDeterminismError):
        replay(different, history)


def test_resume_of_a_running_run_changes_nothing():
    sim = Sim(resumable)
    decision = sim.resume()
    assert not decision.events and not decision.commands
    assert [w.id for w in decision.pending] == ["a"] and decision.status == "running"


# =============================================================================================
# the workflow's return value
# =============================================================================================


def test_return_value_goes_through_json():
    def flow(ctx):
        yield step.run("a", echo)
        return ("a", 1, {"t": (2, 3)})

    sim = Sim(flow)
    sim.execute("a")
    assert output_of(sim.decision) == ["a", 1, {"t": [2, 3]}]
    assert sim.events(RunCompleted)[0].output == ["a", 1, {"t": [2, 3]}]
    sim.verify()


@pytest.mark.parametrize(
    ("value", "needle"),
    [({1, 2}, "set"), (object(), "object"), (math.inf, "inf"), ({"k": b"x"}, "bytes")],
)
def test_non_json_return_value_fails_the_run_naming_the_value(value, needle):
    def flow(ctx):
        yield step.run("a", echo)
        return value

    sim = Sim(flow)
    decision = sim.execute("a")
    assert decision.status == "failed"
    (failed,) = sim.events(RunFailed)
    assert failed.error.type == "TypeError"
    assert "return value" in failed.error.message
    assert needle in failed.error.message
    sim.verify()


def test_returning_none_completes_with_none():
    def flow(ctx):
        yield step.run("a", echo)

    sim = Sim(flow)
    decision = sim.execute("a")
    assert decision.done and decision.output is None and decision.status == "completed"


# =============================================================================================
# the O(1) property of the incremental interpreter
# =============================================================================================


def test_feeding_one_event_to_a_cached_interpreter_costs_one_event():
    starts = []

    def flow(ctx):
        starts.append(ctx.run_id)
        total = 0
        for i in range(50):
            total += yield step.run(f"s{i}", echo, i)
        return total

    sim = Sim(flow)  # builds the history (and checks every prefix replays alike)
    sim.run_all()
    assert sim.decision.output == sum(range(50))
    history = sim.history
    starts.clear()
    interp = Interpreter(flow)
    decision = interp.feed(history[:1])
    assert interp.events_processed == 1
    position = 1
    while position < len(history):
        # Feed the recorded decisions, then exactly one new runtime event.
        while position < len(history) and type(history[position]).__name__ != "StepCompleted":
            interp.feed([history[position]])
            position += 1
        if position == len(history):
            break
        before = interp.events_processed
        decision = interp.feed([history[position]])
        assert interp.events_processed == before + 1
        position += 1
    assert decision.output == sum(range(50))
    assert starts == ["run-1"]  # the generator was never rebuilt
    assert interp.events_processed == len(history)


def test_a_thousand_step_history_replays_in_one_pass():
    starts = []

    def flow(ctx):
        starts.append(1)
        for i in range(1000):
            yield step.run(f"s{i}", echo, i)
        return "done"

    sim = Sim(flow, check=False)
    for i in range(1000):
        sim.feed(StepCompleted, id=f"s{i}", attempt=1, result=i)
    assert sim.decision.output == "done"
    assert len(sim.history) == 2002
    starts.clear()
    interp = Interpreter(flow)
    decision = interp.feed(sim.history)
    assert decision.output == "done" and not decision.events
    assert interp.events_processed == len(sim.history)
    assert starts == [1]
    # And a cold interpreter fed all but the last completion, then that one event.
    cold = Interpreter(flow)
    cold.feed(sim.history[:-2])
    before = cold.events_processed
    last = cold.feed(sim.history[-2:-1])
    assert cold.events_processed == before + 1
    assert last.output == "done" and isinstance(last.events[0], RunCompleted)
