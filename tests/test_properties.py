"""Property tests of the pure interpreter: random workflows under random schedules.

A workflow is drawn as data (a *plan*: a tree of frozen nodes) and turned into a generator
function, so Hypothesis shrinks the workflow as well as the schedule. A random driver plays the
runtime: it picks pending work, picks its outcome (complete, fail retryably or for good, fire a
timer, match or time out a wait), sometimes commits several outcomes in one batch, and moves a
virtual clock. The properties then check the interpreter's contract on the history it produced.

``IRONFLOW_PROPERTY_EXAMPLES=2000 pytest tests/test_properties.py`` runs a long local search.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import pytest
from harness import T0, Sim
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from ironflow import NonDeterminismError, RetryPolicy, step
from ironflow.commands import Event, kinds
from ironflow.history import (
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
    dumps,
    encode_error,
    loads,
)
from ironflow.interpreter import Decision, Interpreter, replay

EXAMPLES = int(os.environ.get("IRONFLOW_PROPERTY_EXAMPLES", "0") or 0)


def _settings(default: int) -> settings:
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- step bodies the interpreter must never call ------------------------------------------------

CALLS = {"step": 0, "undo": 0}


def forbidden_step(*args: Any) -> Any:
    """A step body: only a runtime may call it, and the driver never does."""
    CALLS["step"] += 1
    raise AssertionError(f"the interpreter called a step function with {args!r}")


def forbidden_undo(*args: Any) -> Any:
    """A compensation body: likewise never called by the interpreter."""
    CALLS["undo"] += 1
    raise AssertionError(f"the interpreter called a compensation with {args!r}")


# --- plans: workflows as data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    attempts: int = 1
    jitter: bool = False
    arg: str = "const"  # const | uuid | random | last


@dataclass(frozen=True)
class Sleep:
    seconds: int = 1


@dataclass(frozen=True)
class Wait:
    timeout: int = 60
    match: bool = False


@dataclass(frozen=True)
class Rand:
    kind: str = "uuid"  # uuid | random | now


@dataclass(frozen=True)
class Undo:
    arg: str = "const"


@dataclass(frozen=True)
class Raise:
    pass


@dataclass(frozen=True)
class Try:
    body: tuple[Any, ...]
    handler: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Par:
    branches: tuple[tuple[Any, ...], ...]
    concurrency: int | None = None
    on_error: str = "fail_fast"
    direct: bool = False  # a one-step branch returns the bare command, not a generator


@dataclass(frozen=True)
class MapPlan:
    items: int
    body: tuple[Any, ...]
    concurrency: int | None = None
    on_error: str = "fail_fast"


ARG_KINDS = st.sampled_from(["const", "uuid", "random", "last"])
RUNS = st.builds(Run, attempts=st.integers(1, 3), jitter=st.booleans(), arg=ARG_KINDS)
LEAVES = st.one_of(
    RUNS,
    st.builds(Sleep, seconds=st.integers(1, 600)),
    RUNS,
    st.builds(Wait, timeout=st.integers(1, 600), match=st.booleans()),
    st.builds(Rand, kind=st.sampled_from(["uuid", "random", "now"])),
    RUNS,
    st.builds(Undo, arg=ARG_KINDS),
    # A planned uncaught error now and then, so that runs fail and compensate.
    st.just(Raise()),
)
CONCURRENCY = st.none() | st.integers(1, 3)
ON_ERROR = st.sampled_from(["fail_fast", "all_settled"])


def blocks(par_depth: int, try_depth: int, max_size: int) -> st.SearchStrategy[tuple[Any, ...]]:
    """A block of plan nodes; parallel/map nest one level, try/except one level."""
    options: list[st.SearchStrategy[Any]] = [LEAVES]
    if try_depth < 2:
        options.append(
            st.builds(
                Try,
                body=st.deferred(lambda: blocks(par_depth, try_depth + 1, 3)),
                handler=st.deferred(lambda: blocks(par_depth, try_depth + 1, 2)),
            )
        )
    if par_depth < 2:
        inner = st.deferred(lambda: blocks(par_depth + 1, try_depth, 3))
        options.append(
            st.builds(
                Par,
                branches=st.lists(inner, min_size=0, max_size=3).map(tuple),
                concurrency=CONCURRENCY,
                on_error=ON_ERROR,
                direct=st.booleans(),
            )
        )
        options.append(
            st.builds(
                MapPlan,
                items=st.integers(0, 3),
                body=inner,
                concurrency=CONCURRENCY,
                on_error=ON_ERROR,
            )
        )
    return st.lists(st.one_of(*options), max_size=max_size).map(tuple)


def cost(block: tuple[Any, ...]) -> int:
    """An upper bound on the driver actions a block can need (every attempt, every undo)."""
    total = 0
    for node in block:
        if isinstance(node, Run):
            total += node.attempts
        elif isinstance(node, Sleep | Wait | Undo):
            total += 1  # an Undo costs its compensation
        elif isinstance(node, Try):
            total += cost(node.body) + cost(node.handler)
        elif isinstance(node, Par):
            total += sum(cost(branch) for branch in node.branches)
        elif isinstance(node, MapPlan):
            total += node.items * cost(node.body)
    return total


def _something_to_do(plan: tuple[Any, ...]) -> tuple[Any, ...]:
    """The plan without leading raises, and with a step if it had none for the driver."""
    while plan and isinstance(plan[0], Raise):
        plan = plan[1:]
    return plan if cost(plan) else (Run(), *plan)


# A run failing before its first command, or with nothing to carry out, tests little and
# would take a fifth of the examples.
PLANS = blocks(0, 0, 8).map(_something_to_do)


def traced(value: Any) -> Any:
    """What the workflow records of a value it received, as JSON."""
    if isinstance(value, BaseException):
        return ["error", type(value).__name__, str(value)]
    if isinstance(value, Event):
        return ["event", value.id, value.name, value.data]
    if isinstance(value, list | tuple):
        return [traced(item) for item in value]
    return value


def build(plan: tuple[Any, ...]) -> Any:
    """The generator function a plan describes. Its output is the trace of what it saw."""

    def flow(ctx: Any) -> Any:
        trace: list[Any] = []

        def arg_for(kind: str, name: str, last: Any) -> Any:
            if kind == "uuid":
                return str(ctx.uuid())
            if kind == "random":
                return ctx.random()
            if kind == "last":
                return last
            return name

        def command_for(node: Any, name: str, last: Any) -> Any:
            if isinstance(node, Run):
                policy = RetryPolicy(
                    max_attempts=node.attempts,
                    initial_delay="2s",
                    jitter=0.5 if node.jitter else 0.0,
                )
                return step.run(name, forbidden_step, arg_for(node.arg, name, last), retry=policy)
            if isinstance(node, Sleep):
                return step.sleep(name, node.seconds)
            assert isinstance(node, Wait)
            if node.match:
                return step.wait_for_event(
                    name, "evt", match="data.k", value=str(ctx.uuid()), timeout=node.timeout
                )
            return step.wait_for_event(name, "evt", timeout=node.timeout)

        def branch_for(block: tuple[Any, ...], direct: bool, last: Any) -> Any:
            if direct and len(block) == 1 and isinstance(block[0], Run | Sleep | Wait):
                return lambda s: command_for(block[0], "x", last)
            return lambda s: run_block(block, "b", last)

        def run_block(block: tuple[Any, ...], prefix: str, last: Any) -> Any:
            values: list[Any] = []
            for index, node in enumerate(block):
                name = f"{prefix}{index}"
                if isinstance(node, Run | Sleep | Wait):
                    got = yield command_for(node, name, last)
                    if isinstance(node, Sleep):
                        got = ctx.now().isoformat()
                    trace.append([name, traced(got)])
                    last = traced(got)
                elif isinstance(node, Rand):
                    if node.kind == "uuid":
                        last = str(ctx.uuid())
                    elif node.kind == "random":
                        last = ctx.random()
                    else:
                        last = ctx.now().isoformat()
                    trace.append([name, last])
                elif isinstance(node, Undo):
                    yield step.compensate(name, forbidden_undo, arg_for(node.arg, name, last))
                    last = None
                elif isinstance(node, Raise):
                    raise RuntimeError(f"planned failure at {name}")
                elif isinstance(node, Try):
                    try:
                        last = yield from run_block(node.body, name + "t", last)
                    except Exception as exc:
                        trace.append([name, "caught", traced(exc)])
                        last = yield from run_block(node.handler, name + "h", traced(exc))
                elif isinstance(node, Par):
                    branches = [branch_for(b, node.direct, last) for b in node.branches]
                    got = yield step.parallel(
                        name, branches, concurrency=node.concurrency, on_error=node.on_error
                    )
                    last = traced(got)
                    trace.append([name, last])
                else:
                    assert isinstance(node, MapPlan)
                    items = [f"{name}-item{i}" for i in range(node.items)]
                    body = node.body

                    def each(item: Any, s: Any, index: int, body: Any = body) -> Any:
                        return run_block(body, f"i{index}-", item)

                    got = yield step.map(
                        name, items, each, concurrency=node.concurrency, on_error=node.on_error
                    )
                    last = traced(got)
                    trace.append([name, last])
                values.append(last)
            return values

        result = yield from run_block(plan, "s", None)
        return {"trace": trace, "result": result}

    return flow


# --- the driver -----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("ab", max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("kxy"), inner),
    max_leaves=4,
)
OUTCOMES = st.sampled_from(["ok"] * 8 + ["retry"] * 3 + ["fatal"])
MAX_RESUMES = 2
MATCHED = st.sampled_from([True, True, True, False])
ERRORS = st.sampled_from([ValueError("bad value"), RuntimeError("broken"), KeyError("missing")])


@dataclass
class Driven:
    """What one driven run produced."""

    flow: Any
    history: list[Any]
    decisions: list[tuple[int, Decision]]
    accepted: list[int]  # seqs of StepCompleted events surely accepted (first in their batch)
    actions: int
    resumes: int  # how often the run failed and was resumed


def key(decision: Decision) -> Any:
    """A Decision plus the arguments of its work (``Work.command`` is not part of equality)."""

    def args(work: Any) -> Any:
        return (type(work.command).__name__, getattr(work.command, "args", None))

    return (
        decision,
        tuple(args(work) for work in decision.commands),
        tuple(args(work) for work in decision.pending),
    )


def outcome_for(data: Any, work: Any, seq: int, now: _dt.datetime) -> Any:
    """The runtime event the driver delivers for ``work`` (Hypothesis picks which outcome)."""
    if work.kind in kinds.STEPS:
        outcome = data.draw(OUTCOMES, work.id)
        if outcome == "ok":
            value = data.draw(JSON, f"{work.id} result")
            return StepCompleted(seq, now, work.id, work.attempt, value)
        error = encode_error(data.draw(ERRORS, f"{work.id} error"))
        return StepFailed(seq, now, work.id, work.attempt, error, outcome == "retry")
    if work.kind == kinds.SLEEP:
        return TimerFired(seq, now, work.id)
    assert work.kind == kinds.WAIT_EVENT, work
    if data.draw(MATCHED, f"{work.id} matched"):
        payload = data.draw(JSON, f"{work.id} data")
        return WaitMatched(seq, now, work.id, Event(f"e{seq}", "evt", payload, now))
    return WaitTimedOut(seq, now, work.id)


def drive(data: Any, plan: tuple[Any, ...]) -> Driven:
    """Play the runtime for a run of ``plan`` until it ends; Hypothesis makes every choice.

    Besides pending work, the driver sometimes delivers a late outcome for work the
    interpreter abandoned (a branch cut short by ``fail_fast``, the run ending): a real
    runtime may still report a body that was in flight. It must change nothing.
    """
    CALLS["step"] = CALLS["undo"] = 0
    flow = build(plan)
    bound = cost(plan) * (MAX_RESUMES + 1)
    interp = Interpreter(flow)
    history: list[Any] = []
    decisions: list[tuple[int, Decision]] = []
    accepted: list[int] = []
    abandoned: dict[str, Any] = {}  # work that left ``pending`` without an outcome from us
    clock = [T0]

    def feed(batch: list[Any]) -> Decision:
        history.extend(batch)
        decision = interp.feed(batch)
        decisions.append((len(history), decision))
        if decision.events:
            history.extend(decision.events)
            if data.draw(st.booleans(), "record, then decide"):
                interp.record(decision.events)  # as the engine does
                settled = interp.decide()
            else:
                settled = interp.feed(decision.events)
            decisions.append((len(history), settled))
            assert not settled.events and not settled.commands, settled
            assert settled.pending == decision.pending
            assert (settled.done, settled.status) == (decision.done, decision.status)
            decision = settled
        return decision

    def at(due: _dt.datetime | None) -> _dt.datetime:
        if due is not None and due > clock[0]:
            clock[0] = due
        return clock[0]

    def late(max_size: int) -> list[Any]:
        if not abandoned or not max_size:
            return []
        ids = data.draw(
            st.lists(st.sampled_from(sorted(abandoned)), max_size=max_size, unique=True), "late"
        )
        return [abandoned.pop(sid) for sid in ids]

    start = Event("ev-0", "start", {"k": "v"}, T0)
    decision = feed([RunStarted(0, T0, "run-1", "prop-flow", start)])
    actions = late_count = max_batch = resumes = 0
    while True:
        if decision.done:
            # A failed run may be resumed: what failed it is retried or waited for again.
            if not (
                decision.status == "failed"
                and resumes < MAX_RESUMES
                and data.draw(st.booleans(), "resume")
            ):
                break
            resumes += 1
            clock[0] += _dt.timedelta(minutes=1)
            decision = feed([RunResumed(len(history), clock[0], "property")])
            for work in decision.pending:  # pending again: no longer a late outcome to send
                abandoned.pop(work.id, None)
            continue
        pending = list(decision.pending)
        assert pending, f"run is stuck: nothing pending but not done: {decision}"
        assert actions < bound, f"not done after {actions} actions (bound {bound})"
        picks = data.draw(
            st.lists(
                st.integers(0, len(pending) - 1),
                min_size=1,
                max_size=min(3, len(pending)),
                unique=True,
            ),
            label="picks",
        )
        chosen = [pending[index] for index in picks]
        stale = late(1)
        late_count += len(stale)
        if stale and data.draw(st.booleans(), "late first"):
            chosen = stale + chosen
        else:
            chosen = chosen + stale
        clock[0] += _dt.timedelta(seconds=data.draw(st.sampled_from([0, 1, 30, 3600]), "advance"))
        batch: list[Any] = []
        for work in chosen:
            seq = len(history) + len(batch)
            now = at(None) if work.kind == kinds.WAIT_EVENT else at(work.due)
            outcome = outcome_for(data, work, seq, now)
            if isinstance(outcome, StepCompleted) and not batch and work not in stale:
                accepted.append(seq)  # surely accepted: its work was pending
            batch.append(outcome)
            actions += 1
        max_batch = max(max_batch, len(batch))
        before = {work.id: work for work in pending}
        decision = feed(batch)
        after = {work.id for work in decision.pending}
        delivered = {work.id for work in chosen}
        for sid, work in before.items():
            if sid not in after and sid not in delivered:
                abandoned[sid] = work

    # Late outcomes after the run ended are recorded but change nothing.
    final = decision
    for work in late(2):
        late_count += 1
        seq = len(history)
        decision = feed([outcome_for(data, work, seq, at(None))])
        assert key(decision) == key(final), (decision, final)
    note(f"history: {len(history)} events, {actions} actions, status {decision.status}")
    # Seen with ``pytest --hypothesis-show-statistics``: is the search reaching what it should?
    event(f"run {decision.status}")
    event(f"history of {min(len(history) // 25 * 25, 100)}+ events")
    event(f"largest batch {max_batch}")
    if late_count:
        event("late outcomes delivered")
    if resumes:
        event(f"resumed {resumes}x")
    return Driven(flow, history, decisions, accepted, actions, resumes)


# --- properties -----------------------------------------------------------------------------------


@_settings(200)
@given(plan=PLANS, data=st.data())
def test_every_prefix_replays_to_the_live_decision(plan: Any, data: Any) -> None:
    """(a) A fresh replay of every prefix the live interpreter decided on decides the same."""
    run = drive(data, plan)
    for length, live in run.decisions:
        replayed = replay(run.flow, run.history[:length])
        assert key(replayed) == key(live), f"prefix of {length} events"
    # (c) neither the live interpreter nor any replay called a step body or an undo.
    assert CALLS == {"step": 0, "undo": 0}


@_settings(150)
@given(plan=PLANS, data=st.data())
def test_fresh_interpreters_agree_however_the_history_is_fed(plan: Any, data: Any) -> None:
    """(b) Two fresh interpreters agree exactly; feeding in random chunks changes nothing."""
    run = drive(data, plan)
    final = run.decisions[-1][1]
    first = Interpreter(run.flow)
    second = Interpreter(run.flow)
    one, two = first.feed(run.history), second.feed(run.history)
    assert key(one) == key(two) == key(final)
    assert first.events_processed == second.events_processed
    if not run.resumes:  # a resume folds the history again
        assert first.events_processed == len(run.history)

    live = dict(run.decisions)
    chunked = Interpreter(run.flow)
    position = 0
    decision = None
    while position < len(run.history):
        size = data.draw(st.integers(1, 8), label="chunk")
        decision = chunked.feed(run.history[position : position + size])
        position = min(position + size, len(run.history))
        if position in live:  # a boundary where the live run decided: the same decision
            assert key(decision) == key(live[position]), f"chunks ending at {position}"
    assert decision is not None
    assert key(decision) == key(final)
    if not run.resumes:
        assert chunked.events_processed == len(run.history)
    assert CALLS == {"step": 0, "undo": 0}


@_settings(150)
@given(plan=PLANS, data=st.data())
def test_runs_end_within_the_action_bound(plan: Any, data: Any) -> None:
    """(d) Whatever the schedule, a run ends within a bound computed from its plan."""
    run = drive(data, plan)
    assert run.decisions[-1][1].done
    assert run.actions <= cost(plan) * (run.resumes + 1)
    assert CALLS == {"step": 0, "undo": 0}


@_settings(150)
@given(plan=PLANS, data=st.data())
def test_a_completion_is_never_accepted_twice(plan: Any, data: Any) -> None:
    """(e) Re-delivering an accepted StepCompleted, at the end of history, is rejected."""
    run = drive(data, plan)
    for seq in run.accepted:
        original = run.history[seq]
        end = len(run.history)
        duplicate = StepCompleted(end, original.ts, original.id, original.attempt, original.result)
        with pytest.raises(NonDeterminismError):
            replay(run.flow, [*run.history, duplicate])


@_settings(150)
@given(plan=PLANS, data=st.data())
def test_json_round_trip_replays_alike(plan: Any, data: Any) -> None:
    """(f) ``loads(dumps(history))`` replays to the same decision, at every decided prefix."""
    run = drive(data, plan)
    restored = loads(dumps(run.history))
    assert len(restored) == len(run.history)
    for length, live in run.decisions:
        assert key(replay(run.flow, restored[:length])) == key(live), f"prefix of {length}"


# --- explicit checks ------------------------------------------------------------------------------


def two_steps(ctx: Any) -> Any:
    a = yield step.run("a", forbidden_step)
    b = yield step.run("b", forbidden_step)
    return [a, b]


def test_duplicate_completion_is_non_determinism() -> None:
    """(e) A second StepCompleted for a step already completed raises NonDeterminismError."""
    CALLS["step"] = CALLS["undo"] = 0
    sim = Sim(two_steps)
    sim.complete("a", 1)
    with pytest.raises(NonDeterminismError, match="a second completion"):
        sim.interp.feed([StepCompleted(len(sim.history), sim.now, "a", 1, 1)])
    with pytest.raises(NonDeterminismError):
        replay(two_steps, [*sim.history, StepCompleted(len(sim.history), sim.now, "a", 1, 2)])
    assert CALLS == {"step": 0, "undo": 0}


def test_duplicate_completion_in_one_batch_is_non_determinism() -> None:
    sim = Sim(two_steps)
    seq = len(sim.history)
    batch = [StepCompleted(seq, sim.now, "a", 1, 1), StepCompleted(seq + 1, sim.now, "a", 1, 1)]
    with pytest.raises(NonDeterminismError):
        sim.interp.feed(batch)


def test_stale_failure_after_retry_is_non_determinism() -> None:
    sim = Sim(two_steps)
    sim.fail("a", ValueError("flaky"), retryable=True)
    assert sim.pending["a"].attempt == 2
    stale = StepFailed(len(sim.history), sim.now, "a", 1, encode_error(ValueError("x")), True)
    with pytest.raises(NonDeterminismError):
        replay(two_steps, [*sim.history, stale])


STEPS = 1_000


def many_steps(ctx: Any) -> Any:
    total = 0
    for i in range(STEPS + 1):
        total += yield step.run(f"step-{i}", forbidden_step, i)
    return total


def test_cached_interpreter_resumes_in_constant_work() -> None:
    """``events_processed`` grows by exactly the new events: resuming costs O(new events)."""
    CALLS["step"] = CALLS["undo"] = 0
    sim = Sim(many_steps, check=False)
    for i in range(STEPS):
        sim.complete(f"step-{i}", 1)
    history = sim.history
    assert len(history) >= 2 * STEPS
    interp = sim.interp
    assert interp.events_processed == len(history)

    before = interp.events_processed
    completion = StepCompleted(len(history), sim.now, f"step-{STEPS}", 1, 1)
    decision = interp.feed([completion])
    assert interp.events_processed == before + 1
    assert decision.done and decision.output == STEPS + 1
    assert key(decision) == key(replay(many_steps, [*history, completion]))

    ended = [*history, completion, *decision.events]
    interp.feed(decision.events)
    assert interp.events_processed == before + 1 + len(decision.events) == len(ended)

    fresh = Interpreter(many_steps)
    fresh.feed(ended)
    assert fresh.events_processed == len(ended)
    assert CALLS == {"step": 0, "undo": 0}
