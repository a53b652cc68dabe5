"""Errors of the interpreter: duplicates, non-determinism, the error codec at the yield, and
histories that are not histories. Live (``Sim``) and on replay alike."""

from __future__ import annotations

import pytest
from harness import T0, Sim

import ironflow
from ironflow import step
from ironflow.commands import Event
from ironflow.history import (
    ChildFailed,
    CommandScheduled,
    ErrorInfo,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    dumps,
    loads,
)
from ironflow.history.errors import RemoteError
from ironflow.interpreter import Interpreter, replay


def echo(value=None):
    return value


def other_fn(value=None):
    return value


def undo(*args):
    return None


def output_of(decision):
    assert decision.done, decision
    return decision.output


def diverges(flow, history):
    """The ``NonDeterminismError`` a replay of ``history`` with ``flow`` raises."""
    with pytest.raises(ironflow.NonDeterminismError) as info:
        replay(flow, history)
    # The incremental form fed the same events one at a time raises the same error.
    interp = Interpreter(flow)
    with pytest.raises(ironflow.NonDeterminismError) as again:
        for event in history:
            interp.feed([event])
    assert str(again.value) == str(info.value)
    return info.value


# =============================================================================================
# DuplicateStepError
# =============================================================================================


def test_duplicate_name_raises_at_the_yield_and_names_the_fixes():
    def flow(ctx):
        yield step.run("charge", echo, 1)
        try:
            yield step.run("charge", echo, 2)
        except ironflow.DuplicateStepError as exc:
            return str(exc)

    sim = Sim(flow)
    sim.execute("charge")
    message = output_of(sim.decision)
    assert "'charge'" in message
    assert "index" in message and "step.map" in message
    assert sim.scheduled_ids() == ["charge"]
    sim.verify()


def test_duplicate_step_error_is_a_value_error_and_an_ironflow_error():
    def flow(ctx):
        yield step.sleep("x", "1s")
        try:
            yield step.run("x", echo)
        except ValueError as exc:
            return [
                isinstance(exc, ironflow.DuplicateStepError),
                isinstance(exc, ironflow.IronflowError),
            ]

    sim = Sim(flow)
    sim.fire("x")
    assert output_of(sim.decision) == [True, True]
    sim.verify()


@pytest.mark.parametrize(
    "second",
    [
        lambda: step.sleep("dup", "1s"),
        lambda: step.sleep_until("dup", T0.add(days=1)),
        lambda: step.wait_for_event("dup", "e"),
        lambda: step.invoke("dup", "child"),
        lambda: step.invoke_async("dup", "child"),
        lambda: step.publish("dup", "e"),
        lambda: step.parallel("dup", []),
        lambda: step.map("dup", [], lambda item, s, i: s.run("x", echo)),
    ],
)
def test_duplicate_is_detected_for_every_kind(second):
    def flow(ctx):
        yield step.run("dup", echo)
        try:
            yield second()
        except ironflow.DuplicateStepError:
            return "duplicate"

    sim = Sim(flow)
    sim.execute("dup")
    assert output_of(sim.decision) == "duplicate"


def test_uncaught_duplicate_fails_the_run():
    def flow(ctx):
        for _ in range(2):
            yield step.run("same", echo)

    sim = Sim(flow)
    decision = sim.execute("same")
    assert decision.status == "failed"
    assert isinstance(decision.error, ironflow.DuplicateStepError)
    assert sim.events(RunFailed)[0].error.type == "ironflow.errors.DuplicateStepError"
    sim.verify()


def test_duplicate_inside_a_branch_is_scoped_to_that_branch():
    def branch(s):
        yield s.run("x", echo)
        yield s.run("x", echo)

    def flow(ctx):
        try:
            yield step.parallel("p", [lambda s: s.run("x", echo), branch])
        except ironflow.DuplicateStepError as exc:
            return str(exc)

    sim = Sim(flow)
    assert sorted(sim.pending) == ["p/0/x", "p/1/x"]  # same name, two scopes: fine
    sim.execute("p/1/x")
    message = output_of(sim.decision)
    assert "'x'" in message and "p/1" in message
    sim.verify()


def test_duplicate_compensation_for_one_step():
    def flow(ctx):
        yield step.compensate("a", undo)
        try:
            yield step.compensate("a", undo)
        except ironflow.DuplicateStepError as exc:
            return str(exc)

    assert "compensate:a" in output_of(Sim(flow).decision)


def test_a_rejected_command_does_not_claim_its_name():
    def flow(ctx):
        rejected = []
        try:
            yield step.sleep_until("later", T0)
        except ValueError as exc:
            rejected.append("later" in str(exc))
        try:
            yield step.wait_for_event("w", "e", match="data.missing")
        except ValueError as exc:
            rejected.append("data.missing" in str(exc))
        yield step.sleep_until("later", T0.add(hours=1))
        got = yield step.wait_for_event("w", "e")
        return [rejected, got.data]

    sim = Sim(flow, {"x": 1})
    assert sim.scheduled_ids() == ["later"]
    sim.fire("later")
    sim.match("w", "e", "ok")
    assert output_of(sim.decision) == [[True, True], "ok"]
    sim.verify()


# =============================================================================================
# NonDeterminismError
# =============================================================================================


def v1(ctx):
    a = yield step.run("a", echo, 1)
    b = yield step.run("b", echo, 2)
    return [a, b]


def history_of_v1():
    sim = Sim(v1)
    sim.execute("a")
    sim.execute("b")
    return sim.history


def test_a_different_kind_at_a_recorded_position():
    def changed(ctx):
        yield step.sleep("a", "1s")
        yield step.run("b", echo, 2)

    error = diverges(changed, history_of_v1())
    assert error.recorded == ("run", "a", "", "echo")
    assert error.current == ("sleep", "a", "", "")
    assert error.position == 1
    message = str(error)
    assert "recorded: run 'a'" in message and "current:  sleep 'a'" in message
    assert "seq 1" in message and "ctx.patched" in message


def test_a_different_name_at_a_recorded_position():
    def changed(ctx):
        yield step.run("a-renamed", echo, 1)

    error = diverges(changed, history_of_v1())
    assert error.recorded[:2] == ("run", "a")
    assert error.current[:2] == ("run", "a-renamed")
    assert "'a-renamed'" in str(error)


def test_a_different_function_fingerprint():
    def changed(ctx):
        yield step.run("a", other_fn, 1)

    error = diverges(changed, history_of_v1())
    assert error.recorded[3] == "echo" and error.current[3] == "other_fn"
    assert "fingerprint 'echo'" in str(error) and "fingerprint 'other_fn'" in str(error)


def test_a_different_scope_for_the_same_command():
    def old(ctx):
        yield step.parallel("p", [lambda s: s.run("a", echo)])
        yield step.run("b", echo)

    def moved(ctx):
        def branch(s):
            yield s.run("a", echo)
            yield s.run("b", echo)

        yield step.parallel("p", [branch])

    sim = Sim(old)
    sim.execute("p/0/a")
    error = diverges(moved, sim.history)
    assert error.recorded == ("run", "b", "", "echo")
    assert error.current == ("run", "b", "p/0", "echo")
    assert "scope '(root)'" in str(error) and "scope 'p/0'" in str(error)


def test_a_changed_branch_count():
    def old(ctx):
        yield step.parallel("p", [lambda s: s.run("x", echo), lambda s: s.run("y", echo)])

    def more(ctx):
        yield step.parallel(
            "p",
            [lambda s: s.run("x", echo), lambda s: s.run("y", echo), lambda s: s.run("z", echo)],
        )

    error = diverges(more, Sim(old).history)
    assert error.recorded == ("parallel", "p", "", "2 branches")
    assert error.current == ("parallel", "p", "", "3 branches")


def test_reordered_steps():
    def swapped(ctx):
        b = yield step.run("b", echo, 2)
        a = yield step.run("a", echo, 1)
        return [a, b]

    error = diverges(swapped, history_of_v1())
    assert error.recorded[:2] == ("run", "a")
    assert error.current[:2] == ("run", "b")


def test_reordered_commands_recorded_in_one_batch():
    def old(ctx):
        yield step.compensate("a", undo)
        yield step.compensate("b", undo)
        yield step.run("c", echo)

    def swapped(ctx):
        yield step.compensate("b", undo)
        yield step.compensate("a", undo)
        yield step.run("c", echo)

    sim = Sim(old)
    assert sim.scheduled_ids() == ["compensate:a", "compensate:b", "c"]
    error = diverges(swapped, sim.history)
    assert error.recorded[:2] == ("compensate", "a")
    assert error.current[:2] == ("compensate", "b")


def test_reordered_parallel_branches():
    def old(ctx):
        yield step.parallel("p", [lambda s: s.run("x", echo), lambda s: s.run("y", echo)])

    def swapped(ctx):
        yield step.parallel("p", [lambda s: s.run("y", echo), lambda s: s.run("x", echo)])

    error = diverges(swapped, Sim(old).history)
    assert error.recorded == ("run", "x", "p/0", "echo")
    assert error.current == ("run", "y", "p/0", "echo")


def test_a_recorded_command_the_code_never_reaches():
    def shorter(ctx):
        a = yield step.run("a", echo, 1)
        return [a]

    error = diverges(shorter, history_of_v1())
    assert error.recorded[:2] == ("run", "b")
    assert error.current is None
    assert "never reached" in str(error)


def test_a_recorded_end_the_code_does_not_reach():
    def longer(ctx):
        yield step.run("a", echo, 1)
        yield step.run("b", echo, 2)
        yield step.run("c", echo, 3)

    error = diverges(longer, history_of_v1())
    assert "RunCompleted" in str(error)
    assert error.position == len(history_of_v1()) - 1


def test_a_recorded_failure_the_code_now_completes():
    def buggy(ctx):
        a = yield step.run("a", echo, {"x": 1})
        return a["missing"]

    def fixed(ctx):
        a = yield step.run("a", echo, {"x": 1})
        return a.get("missing", 0)

    sim = Sim(buggy)
    sim.execute("a")
    assert sim.events(RunFailed)[0].error.type == "KeyError"
    error = diverges(fixed, sim.history)
    assert (error.recorded, error.current) == ("RunFailed", "RunCompleted")
    assert "recorded RunFailed" in str(error)


def test_a_recorded_completion_the_code_now_fails():
    def fixed(ctx):
        a = yield step.run("a", echo, {"x": 1})
        return a.get("missing", 0)

    def broken(ctx):
        a = yield step.run("a", echo, {"x": 1})
        return a["missing"]

    sim = Sim(fixed)
    sim.execute("a")
    error = diverges(broken, sim.history)
    assert (error.recorded, error.current) == ("RunCompleted", "RunFailed")


def test_resume_of_a_run_failed_by_its_own_code_fails_again():
    def buggy(ctx):
        a = yield step.run("a", echo, {"x": 1})
        return a["missing"]

    sim = Sim(buggy)
    sim.execute("a")
    decision = sim.resume()
    assert decision.done and decision.status == "failed"
    # The history says so: resumed, then failed again.
    assert [type(event) for event in decision.events] == [RunFailed]
    assert isinstance(decision.error, KeyError)
    assert len(sim.events(RunFailed)) == 2
    sim.verify()


def test_a_recorded_retry_the_code_does_not_decide():
    def old(ctx):
        return (yield step.run("a", echo))

    def no_retries(ctx):
        return (yield step.run("a", echo, retry=ironflow.RetryPolicy(max_attempts=1)))

    sim = Sim(old)
    sim.fail("a", ValueError("x"))
    error = diverges(no_retries, sim.history)
    assert "retry 2 of 'a'" in str(error)


def test_a_completion_for_an_unknown_id():
    sim = Sim(v1)
    history = [*sim.history, StepCompleted(len(sim.history), T0, "ghost", 1, None)]
    error = diverges(v1, history)
    assert "'ghost'" in str(error) and "never yielded" in str(error)
    assert error.recorded == "ghost"


def test_a_second_completion_of_the_same_step():
    sim = Sim(v1)
    sim.execute("a")
    history = [*sim.history, StepCompleted(len(sim.history), T0, "a", 1, 1)]
    assert "no longer waiting" in str(diverges(v1, history))


def test_a_completion_before_the_command_was_recorded():
    history = [
        RunStarted(0, T0, "r", "flow", Event("e", "flow", None, T0)),
        StepCompleted(1, T0, "a", 1, 1),
    ]
    assert "before the history records" in str(diverges(v1, history))


def test_an_event_of_the_wrong_kind_for_the_command():
    sim = Sim(v1)
    history = [*sim.history, TimerFired(len(sim.history), T0, "a")]
    error = diverges(v1, history)
    assert "TimerFired" in str(error) and "'run'" in str(error)


def test_a_completion_for_the_wrong_attempt():
    sim = Sim(v1)
    history = [*sim.history, StepCompleted(len(sim.history), T0, "a", 2, 1)]
    error = diverges(v1, history)
    assert "attempt 2" in str(error) and "attempt 1" in str(error)


def test_a_live_interpreter_raises_rather_than_failing_the_run():
    sim = Sim(v1)
    with pytest.raises(ironflow.NonDeterminismError):
        sim.feed(StepCompleted, id="ghost", attempt=1, result=None)
    assert not sim.events(RunFailed)


def test_unchanged_code_never_diverges_through_json():
    history = history_of_v1()
    decision = replay(v1, loads(dumps(history)))
    assert decision.output == [1, 2] and not decision.events


# =============================================================================================
# the error codec at the yield
# =============================================================================================


class Declined(Exception):
    def __init__(self, code, reason):  # an __init__ the codec cannot call with one message
        super().__init__(f"{code}: {reason}")
        self.code = code


def test_a_loaded_custom_class_with_an_awkward_init_is_delivered_as_itself():
    def flow(ctx):
        try:
            yield step.run("pay", echo)
        except Declined as exc:
            return [str(exc), exc.step_id, exc.attempts, type(exc.__cause__).__name__]

    sim = Sim(flow)
    sim.fail("pay", Declined(51, "insufficient funds"), retryable=False)
    assert sim.events(StepFailed)[0].error.type == f"{__name__}.Declined"
    assert output_of(sim.decision) == ["51: insufficient funds", "pay", 1, "Declined"]
    sim.verify()


def test_an_unloaded_class_arrives_as_a_plain_step_error_with_a_remote_cause():
    def flow(ctx):
        try:
            yield step.run("s", echo)
        except ironflow.StepError as exc:
            cause = exc.__cause__
            return [str(exc), exc.step_id, type(cause).__name__, cause.type_name]

    sim = Sim(flow)
    sim.feed(
        StepFailed,
        id="s",
        attempt=1,
        retryable=False,
        error=ErrorInfo("nowhere.module.Boom", "it broke"),
    )
    message, sid, cause_type, cause_name = output_of(sim.decision)
    assert sid == "s" and cause_type == "RemoteError" and cause_name == "nowhere.module.Boom"
    assert "nowhere.module.Boom: it broke" in message and "'s'" in message
    sim.verify()


def test_an_unloaded_class_uncaught_fails_the_run_as_a_step_error():
    def flow(ctx):
        yield step.run("s", echo)

    sim = Sim(flow)
    decision = sim.feed(
        StepFailed, id="s", attempt=1, retryable=False, error=ErrorInfo("no.Such", "x")
    )
    assert decision.status == "failed"
    assert isinstance(decision.error, ironflow.StepError)
    assert isinstance(decision.error.__cause__, RemoteError)
    assert sim.events(RunFailed)[0].error.type == "ironflow.errors.StepError"


@pytest.mark.parametrize(
    "error",
    [
        KeyError("k"),
        OSError("disk"),
        FileNotFoundError(2, "gone"),
        ZeroDivisionError("z"),
        ironflow.NonRetryableError("stop"),
        ironflow.StepTimeoutError("slow"),
    ],
)
def test_builtin_and_ironflow_classes_are_caught_by_their_own_except(error):
    cls = type(error)

    def flow(ctx):
        try:
            yield step.run("s", echo)
        except cls as exc:
            assert isinstance(exc, ironflow.StepError)
            return type(exc.__cause__).__name__

    sim = Sim(flow)
    sim.fail("s", error, retryable=False)
    assert output_of(sim.decision) == cls.__name__
    sim.verify()


def test_invoke_error_cause_for_an_unloaded_class():
    def flow(ctx):
        try:
            yield step.invoke("call", "child")
        except ironflow.InvokeError as exc:
            return [type(exc.__cause__).__name__, str(exc)]

    sim = Sim(flow)
    sim.child_started("call")
    sim.feed(
        ChildFailed,
        id="call",
        child_run_id="child-1",
        error=ErrorInfo("far.away.Error", "child said no"),
    )
    cause, message = output_of(sim.decision)
    assert cause == "RemoteError" and "far.away.Error: child said no" in message


# =============================================================================================
# what the workflow yields, and what is fed
# =============================================================================================


def test_yielding_something_that_is_not_a_command_raises_type_error_at_the_yield():
    def sub(ctx):
        yield step.run("x", echo)

    def flow(ctx):
        messages = []
        for bad in (42, "run", sub(ctx)):
            try:
                yield bad
            except TypeError as exc:
                messages.append(str(exc))
        return messages

    sim = Sim(flow)
    messages = output_of(sim.decision)
    assert len(messages) == 3
    assert all("step.run" in m for m in messages)
    assert "yield from" in messages[2]
    assert sim.scheduled_ids() == []


def test_a_workflow_must_be_a_generator_function():
    def not_a_generator(ctx):
        return 1

    with pytest.raises(TypeError, match="generator function"):
        Interpreter(not_a_generator)


def test_history_must_be_fed_in_order():
    sim = Sim(v1)
    interp = Interpreter(v1)
    with pytest.raises(ValueError, match="seq"):
        interp.feed([sim.history[1]])
    interp = Interpreter(v1)
    interp.feed(sim.history[:1])
    with pytest.raises(ValueError, match="expected 1"):
        interp.feed([StepCompleted(5, T0, "a", 1, 1)])


def test_a_run_starts_once():
    sim = Sim(v1)
    history = [*sim.history, RunStarted(len(sim.history), T0, "r", "f", sim.history[0].event)]
    with pytest.raises(ValueError, match="starts once"):
        replay(v1, history)


def test_feeding_a_non_event_is_a_type_error():
    class Fake:
        seq = 0

    with pytest.raises(TypeError, match="not a history event"):
        Interpreter(v1).feed([Fake()])


def test_a_failed_step_scheduled_event_matches_its_command():
    # CommandScheduled records what the error paths need: the kind, name, scope, fingerprint.
    sim = Sim(v1)
    (scheduled,) = sim.events(CommandScheduled)
    assert (scheduled.kind, scheduled.name, scheduled.scope, scheduled.fingerprint) == (
        "run",
        "a",
        "",
        "echo",
    )
    sim.fail("a", ValueError("x"), retryable=False)
    assert sim.decision.status == "failed"
    assert isinstance(sim.decision.error, ValueError)
