"""Resuming failed runs end to end: whatever failed them, a resume gets past it.

A step whose attempts ran out runs again (see test_engine_api); a wait that timed out waits
again with a fresh timeout; a run whose own code raised runs on from where it failed once the
code is fixed. Completed steps never run again, and undos that already ran stay done.
"""

from __future__ import annotations

import threading
import time

import pytest
from engine_kit import idle

import ironflow
from ironflow import Engine, WaitTimeoutError, step
from ironflow.history import RunFailed, RunResumed
from ironflow.interpreter import replay

NO_RETRY = ironflow.RetryPolicy(max_attempts=1)


def _types(history):
    return [type(event).__name__ for event in history]


def _fixable(calls, fixed):
    """A flow whose code raises after its first step until ``fixed["on"]`` is set."""

    @ironflow.function(id="fixable", retry=NO_RETRY)
    def flow(ctx):
        first = yield step.run("first", calls.hit, "first")
        yield step.compensate("first", calls.hit, "undo-first")
        if not fixed["on"]:
            raise KeyError("a bug in the workflow itself")
        second = yield step.run("second", calls.hit, "second")
        return [first, second]

    return flow


def _failed_fixable(engine, calls):
    """A run of ``_fixable`` that failed; the flag that fixes its code; the flow."""
    fixed = {"on": False}
    flow = _fixable(calls, fixed)
    engine.register(flow)
    rid = engine.start("fixable")
    idle(engine)
    return rid, fixed, flow


def test_a_run_whose_code_raised_runs_on_after_the_fix(engine, calls):
    rid, fixed, flow = _failed_fixable(engine, calls)
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "KeyError"
    assert calls.counts == {"first": 1, "undo-first": 1}

    fixed["on"] = True
    engine.resume(rid)
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "completed", run.error
    assert run.output == ["first", "second"]
    # Nothing that ran before the resume ran again, the undo included.
    assert calls.counts == {"first": 1, "undo-first": 1, "second": 1}
    history = engine.history(rid)
    assert _types(history).count("RunResumed") == 1
    assert [e.seq for e in history] == list(range(len(history)))
    # The fixed code replays the whole history (failure, resume and all) to the same end.
    decision = replay(flow, history)
    assert decision.done and decision.output == run.output and not decision.events


def test_a_run_whose_code_still_raises_fails_again_and_can_be_resumed_again(engine, calls):
    rid, fixed, _ = _failed_fixable(engine, calls)
    engine.resume(rid)
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "KeyError"
    # The undo runs again on the second failure: each failure compensates what it saw.
    assert calls.counts == {"first": 1, "undo-first": 2}
    after = _types(engine.history(rid))
    assert after[after.index("RunResumed") :] == [
        "RunResumed",
        "CompensationScheduled",
        "StepCompleted",
        "RunFailed",
    ]

    fixed["on"] = True
    engine.resume(rid)
    idle(engine)
    assert engine.get_run(rid).output == ["first", "second"]
    assert calls.counts == {"first": 1, "undo-first": 2, "second": 1}


def test_a_fixed_worker_resumes_a_run_an_old_worker_failed(db, clock, calls):
    fixed = {"on": False}
    flow = _fixable(calls, fixed)
    old = Engine(db, clock=clock)
    old.register(flow)
    rid = old.start("fixable")
    idle(old)
    assert old.get_run(rid).status == "failed"
    old.close()

    fixed["on"] = True
    new = Engine(db, clock=clock)
    new.register(flow)
    new.resume(rid)
    idle(new)
    assert new.get_run(rid).output == ["first", "second"]
    assert calls.counts == {"first": 1, "undo-first": 1, "second": 1}
    new.close()


@ironflow.function(id="approval")
def approval(ctx):
    event = yield step.wait_for_event("approved", "doc.approved", match="data.doc", timeout="1h")
    return event.data["by"]


def _timed_out_wait(engine, clock, doc):
    """A run of ``approval`` for ``doc`` that failed because its wait timed out."""
    engine.register(approval)
    rid = engine.start("approval", {"doc": doc})
    idle(engine)
    clock.advance("2h")
    idle(engine)
    return rid


def test_a_run_failed_by_a_wait_timeout_waits_again_after_a_resume(engine, clock):
    rid = _timed_out_wait(engine, clock, 7)
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.message == "waitForEvent timed out"

    clock.advance("1d")
    engine.resume(rid)
    idle(engine)
    assert engine.get_run(rid).status == "waiting"
    # A fresh hour from the resume, not the old deadline (long past).
    clock.advance("59m")
    idle(engine)
    assert engine.get_run(rid).status == "waiting"
    engine.emit("doc.approved", {"doc": 7, "by": "ana"})
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "completed" and run.output == "ana"
    history = engine.history(rid)
    assert _types(history)[-3:] == ["RunResumed", "WaitMatched", "RunCompleted"]
    assert replay(approval, history).output == "ana"


def test_a_resumed_wait_that_times_out_again_fails_again(engine, clock):
    rid = _timed_out_wait(engine, clock, 8)
    engine.resume(rid)
    idle(engine)
    clock.advance("61m")
    idle(engine)
    assert engine.get_run(rid).status == "failed"
    with pytest.raises(WaitTimeoutError):
        engine.wait(rid, timeout=5)
    engine.resume(rid)
    idle(engine)
    engine.emit("doc.approved", {"doc": 8, "by": "bo"})
    idle(engine)
    assert engine.get_run(rid).output == "bo"
    history = engine.history(rid)
    assert sum(isinstance(e, RunResumed) for e in history) == 2
    assert sum(isinstance(e, RunFailed) for e in history) == 2


def test_an_event_emitted_while_the_run_was_failed_matches_the_resumed_wait(engine, clock):
    rid = _timed_out_wait(engine, clock, 9)
    engine.emit("doc.approved", {"doc": 9, "by": "late"})  # no event is lost
    idle(engine)
    assert engine.get_run(rid).status == "failed"
    engine.resume(rid)
    idle(engine)
    assert engine.get_run(rid).output == "late"


def test_a_run_is_resumed_once(engine, calls):
    rid, _, _ = _failed_fixable(engine, calls)
    engine.resume(rid)
    with pytest.raises(ValueError, match="is running; only failed or blocked"):
        engine.resume(rid)
    assert _types(engine.history(rid)).count("RunResumed") == 1


def _family(calls, broken):
    @ironflow.function(id="child", retry=NO_RETRY)
    def child(ctx):
        def work():
            calls.hit("child-work")
            if broken["on"]:
                raise RuntimeError("the child's service is down")
            return "child-done"

        return (yield step.run("work", work))

    @ironflow.function(id="parent", retry=NO_RETRY)
    def parent(ctx):
        before = yield step.run("before", calls.hit, "before")
        got = yield step.invoke("call", "child", timeout="1h")
        return [before, got]

    return child, parent


def test_a_run_failed_by_its_child_gets_the_childs_outcome_after_both_are_resumed(engine, calls):
    broken = {"on": True}
    for fn in _family(calls, broken):
        engine.register(fn)
    rid = engine.start("parent")
    idle(engine)
    child_id = f"{rid}/call"
    assert engine.get_run(child_id).status == "failed"
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "ironflow.errors.InvokeError"

    # Resuming the parent alone waits for the child again, which is still failed.
    engine.resume(rid)
    idle(engine)
    assert engine.get_run(rid).status == "failed"

    broken["on"] = False
    engine.resume(child_id)
    idle(engine)
    assert engine.get_run(child_id).output == "child-done"
    assert engine.get_run(rid).status == "failed"  # an ended parent is not told
    engine.resume(rid)
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "completed", run.error
    assert run.output == ["before", "child-done"]
    assert calls.counts == {"before": 1, "child-work": 2}
    assert replay(engine.functions["parent"], engine.history(rid)).output == run.output


def _timed_out_invoke(engine, clock, child_sleeps, timeout):
    """A run failed because its child (sleeping ``child_sleeps``) outlived ``timeout``."""

    @ironflow.function(id="slow-child")
    def slow_child(ctx):
        yield step.sleep("long", child_sleeps)
        return "late but done"

    @ironflow.function(id="impatient")
    def impatient(ctx):
        return (yield step.invoke("call", "slow-child", timeout=timeout))

    engine.register(slow_child)
    engine.register(impatient)
    rid = engine.start("impatient")
    idle(engine)
    clock.advance(timeout)
    idle(engine)
    assert engine.get_run(rid).status == "failed"
    return rid


def test_a_run_whose_invoke_timed_out_gets_the_output_of_the_child_that_finished_later(
    engine, clock
):
    rid = _timed_out_invoke(engine, clock, "2h", "1h")
    clock.advance("1h")
    idle(engine)
    assert engine.get_run(f"{rid}/call").output == "late but done"
    engine.resume(rid)
    idle(engine)
    assert engine.get_run(rid).output == "late but done"


def test_a_resumed_invoke_gets_a_fresh_timeout(engine, clock):
    rid = _timed_out_invoke(engine, clock, "3h", "2h")
    engine.resume(rid)  # two more hours from now; the child needs one
    idle(engine)
    clock.advance("61m")
    idle(engine)
    assert engine.get_run(rid).output == "late but done"


@ironflow.function(id="both")
def both(ctx):
    events = yield step.parallel(
        "p",
        [
            lambda s: s.wait_for_event("x", "ev.x", timeout="1h"),
            lambda s: s.wait_for_event("y", "ev.y", timeout="1h"),
        ],
    )
    return [event.data for event in events]


def test_waits_that_timed_out_together_both_wait_again_after_a_resume(engine, clock):
    # Found in review: only the wait whose timeout failed the run was re-armed; the other
    # one's timeout, folded in the same round, failed the resumed run again at once.
    engine.register(both)
    rid = engine.start("both")
    idle(engine)
    clock.advance("2h")
    idle(engine)
    assert _types(engine.history(rid)).count("WaitTimedOut") == 2
    assert engine.get_run(rid).status == "failed"
    engine.resume(rid)
    idle(engine)
    assert engine.get_run(rid).status == "waiting"
    engine.emit("ev.x", 1)
    engine.emit("ev.y", 2)
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "completed", run.error
    assert run.output == [1, 2]


def test_a_step_still_running_when_its_run_failed_is_not_started_again_by_a_resume(engine, calls):
    # Found in review: the run's end forgot the step in flight, so a resume dispatched it
    # again while its first execution was still running.
    release = threading.Event()
    started = threading.Event()
    fixed_ran = threading.Event()
    broken = {"on": True}

    def slow():
        calls.hit("slow")
        started.set()
        if not release.wait(10):
            raise RuntimeError("never released")
        return "slow"

    def fragile():
        calls.hit("fragile")
        if broken["on"]:
            raise ironflow.NonRetryableError("fragile is down")
        fixed_ran.set()
        return "fragile"

    @ironflow.function(id="pair")
    def pair(ctx):
        return (
            yield step.parallel("p", [lambda s: s.run("slow", slow), lambda s: s.run("f", fragile)])
        )

    engine.register(pair)
    rid = engine.start("pair")
    driver = threading.Thread(target=engine.run_until_idle, daemon=True)
    driver.start()
    assert started.wait(10), "the slow step never started"
    deadline = time.monotonic() + 10
    while engine.get_run(rid).status != "failed":
        assert time.monotonic() < deadline, engine.get_run(rid)
        time.sleep(0.005)
    broken["on"] = False
    engine.resume(rid)  # run_until_idle is still in progress: the slow step is outstanding
    # The resumed run has been driven (and has started what it started) before slow returns.
    assert fixed_ran.wait(10), "the resumed run never ran its fixed step"
    release.set()
    driver.join(10)
    assert not driver.is_alive()
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "completed", run.error
    assert run.output == ["slow", "fragile"]
    assert calls.counts == {"slow": 1, "fragile": 2}
