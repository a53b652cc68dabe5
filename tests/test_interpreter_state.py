"""What an interpreter holds: the resume and saga state are made only by the runs that need
them, and the resume state outlives the refeed that resuming a failed run does."""

from __future__ import annotations

import pytest
from harness import Sim

import ironflow
from ironflow import step
from ironflow.history import RunFailed, RunResumed, WaitTimedOut
from ironflow.interpreter import Interpreter
from ironflow.interpreter.resume import ResumeState


def echo(value=None):
    return value


def naps(ctx):
    yield step.sleep("nap", "1d")
    return "rested"


def books(ctx):
    yield step.run("book", echo, 1)
    yield step.compensate("book", echo, "cancel")
    yield step.sleep("nap", "1d")
    return "booked"


def waits(ctx):
    event = yield step.wait_for_event("w", "approved", timeout="1h")
    return event.data


def test_a_parked_run_has_no_resume_or_saga_state_and_no_instance_dict():
    sim = Sim(naps)
    assert [work.id for work in sim.decision.pending] == ["nap"]
    assert sim.interp._resumed is None
    assert sim.interp._undos is None
    assert not hasattr(sim.interp, "__dict__")  # slots: a parked run's interpreter is small


def test_the_first_compensate_makes_the_saga():
    sim = Sim(books)
    assert sim.interp._undos is None
    sim.complete("book", 1)
    assert [slot.id for slot in sim.interp._undos] == ["compensate:book"]
    sim.cancel(compensate=True)
    assert [work.kind for work in sim.decision.pending] == ["undo"]
    assert sim.interp._undos == []  # taken by the undo now running
    assert sim.interp._resumed is None


def test_a_resume_makes_the_resume_state_and_every_refeed_keeps_it():
    sim = Sim(waits)
    sim.tick(3600)
    sim.time_out("w")
    assert sim.decision.status == "failed"
    assert sim.interp._resumed is None  # failing makes none: only a resume does
    first_timeout = sim.events(WaitTimedOut)[0].seq

    sim.resume()
    state = sim.interp._resumed
    assert isinstance(state, ResumeState)
    first_resume = sim.events(RunResumed)[0].seq
    first_failed = sim.events(RunFailed)[0].seq
    # The refold skips the timeout (the wait waits again) and the RunFailed it led to.
    assert state.dead == {first_timeout, first_failed}
    assert state.unfailed == {first_resume}
    assert state.rearm == {first_resume: {"w"}}
    assert state.suspended == []

    # A second failure and resume refold the whole history again: the same object, holding
    # both resumes' marks (without the first ones the refold would fail at the first timeout).
    sim.tick(3600)
    sim.time_out("w")
    assert sim.decision.status == "failed"
    decision = sim.resume()
    assert not decision.done and [work.id for work in decision.pending] == ["w"]
    assert sim.interp._resumed is state
    second_timeout = sim.events(WaitTimedOut)[1].seq
    second_failed = sim.events(RunFailed)[1].seq
    second_resume = sim.events(RunResumed)[1].seq
    assert state.dead == {first_timeout, first_failed, second_timeout, second_failed}
    assert state.unfailed == {first_resume, second_resume}
    sim.match("w", "approved", {"ok": True})
    assert sim.decision.status == "completed" and sim.decision.output == {"ok": True}
    sim.verify()


def test_a_resume_retries_a_suspended_step_and_empties_suspended():
    def flow(ctx):
        return (yield step.run("a", echo, "A", retry=ironflow.RetryPolicy(max_attempts=1)))

    sim = Sim(flow)
    sim.fail("a", ValueError("down"), retryable=False)
    assert sim.decision.status == "failed"
    decision = sim.resume()
    state = sim.interp._resumed
    assert state is not None and state.suspend_keys == {("a", 1)}
    assert state.suspended == []  # retried by the RunResumed that was folded again
    assert [(work.id, work.attempt) for work in decision.pending] == [("a", 2)]
    sim.complete("a", "A")
    assert sim.decision.output == "A"
    sim.verify()


@pytest.mark.parametrize("flow", [naps, books, waits])
def test_an_interpreter_takes_no_new_attributes(flow):
    with pytest.raises(AttributeError):
        Interpreter(flow).extra = 1  # type: ignore[attr-defined]
