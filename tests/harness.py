"""A tiny runtime for tests: carries out Decisions with scripted outcomes, appends events."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

import pendulum

from ironflow.commands import Event, kinds
from ironflow.commands.jsonvalue import to_json_value
from ironflow.errors import NonRetryableError
from ironflow.history import (
    DECISION_EVENTS,
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    EventPublished,
    RunCancelled,
    RunResumed,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
    converter,
    dumps,
    encode_error,
    loads,
)
from ironflow.interpreter import Decision, Interpreter, Work, replay
from ironflow.testing.simulator import Simulator

T0 = pendulum.datetime(2026, 1, 1, tz="UTC")


class Sim(Simulator):
    """Drives one run: ``complete``/``fail``/``fire``/... append runtime events and feed them.

    The test kit's ``Simulator`` (``ironflow.testing.simulator``) does the feeding and, in
    ``execute`` and ``run_all``, answers work as a runtime would; the methods here let a test
    hand the interpreter outcomes of its own choosing. With ``check``, every decision is
    compared with a fresh replay of the history so far.
    """

    def __init__(self, flow: Any, data: Any = None, *, run_id: str = "run-1", check: bool = True):
        super().__init__(flow, now=T0)
        self.check = check
        self.decisions: list[tuple[int, Decision]] = []
        self.start(data, run_id=run_id, event_id="ev-1")

    @property
    def interp(self) -> Interpreter:
        return self.interpreter

    @property
    def pending(self) -> dict[str, Work]:
        return {work.id: work for work in self.decision.pending}

    def tick(self, seconds: float = 1.0) -> None:
        self.now = self.now + _dt.timedelta(seconds=seconds)

    def decided(self, start: int, decision: Decision) -> None:
        self.decisions.append((len(self.history), decision))
        if self.check:
            assert replay(self.flow, list(self.history)) == decision, "replay differs from live"

    def feed(self, cls: type, **fields: Any) -> Decision:
        return self.append([(cls, fields)])

    def feed_many(self, items: list[tuple[type, dict[str, Any]]]) -> Decision:
        return self.append(items)

    # runtime outcomes --------------------------------------------------------------------------

    def complete(self, sid: str, result: Any = None, *, attempt: int | None = None) -> Decision:
        """``attempt`` defaults to the pending one; give it for work no longer pending."""
        if attempt is None:
            attempt = self.pending[sid].attempt
        value = to_json_value(converter.unstructure(result))
        return self.feed(StepCompleted, id=sid, attempt=attempt, result=value)

    def fail(
        self,
        sid: str,
        error: BaseException,
        retryable: bool | None = None,
        *,
        attempt: int | None = None,
    ) -> Decision:
        if attempt is None:
            attempt = self.pending[sid].attempt
        if retryable is None:
            retryable = not isinstance(error, NonRetryableError)
        return self.feed(
            StepFailed, id=sid, attempt=attempt, error=encode_error(error), retryable=retryable
        )

    def execute(self, sid: str) -> Decision:
        """Run the pending step's function for real, as a runtime would."""
        work = self.pending[sid]
        assert work.kind in kinds.STEPS, f"{sid!r} is {work.kind} work, not a step"
        return self.carry_out(work)

    def fire(self, sid: str) -> Decision:
        return self.feed(TimerFired, id=sid)

    def match(self, sid: str, name: str, data: Any = None, event_id: str = "ev-2") -> Decision:
        return self.feed(WaitMatched, id=sid, event=Event(event_id, name, data, self.now))

    def time_out(self, sid: str) -> Decision:
        return self.feed(WaitTimedOut, id=sid)

    def child_started(self, sid: str, child: str = "child-1") -> Decision:
        return self.feed(ChildStarted, id=sid, child_run_id=child)

    def child_completed(self, sid: str, output: Any, child: str = "child-1") -> Decision:
        return self.feed(ChildCompleted, id=sid, child_run_id=child, output=output)

    def child_failed(self, sid: str, error: BaseException, child: str = "child-1") -> Decision:
        return self.feed(ChildFailed, id=sid, child_run_id=child, error=encode_error(error))

    def published(self, sid: str, event_id: str = "pub-1") -> Decision:
        return self.feed(EventPublished, id=sid, event_id=event_id)

    def cancel(self, compensate: bool = False) -> Decision:
        return self.feed(RunCancelled, reason="test", compensate=compensate)

    def resume(self) -> Decision:
        return self.feed(RunResumed, reason="test")

    def choose(self, question: str, options: list[Any]) -> Any:
        # ``run_all``'s plain path, but waits time out: no event is emitted in a test's run.
        return False if question == "event" else options[0]

    def run_all(
        self, limit: int = 10_000, choose: Callable[[list[Work]], Work] | None = None
    ) -> Decision:
        """Carry out pending work until the run ends, as the kit's simulator answers each
        kind: steps really run, timers fire, waits time out, children complete."""
        for _ in range(limit):
            if self.decision.done:
                return self.decision
            pending = list(self.decision.pending)
            if not pending:
                raise AssertionError(f"run is stuck: {self.decision}")
            self.carry_out(choose(pending) if choose else pending[0])
        raise AssertionError("run did not finish")

    # inspecting the history ---------------------------------------------------------------------

    def events(self, cls: type | tuple[type, ...]) -> list[Any]:
        """The history events of type ``cls``, in order."""
        return [event for event in self.history if isinstance(event, cls)]

    def scheduled_ids(self) -> list[str]:
        """The ids of all commands the history records as scheduled, in order."""
        return [event.id for event in self.history if type(event).__name__ == "CommandScheduled"]

    def verify(self, *, sizes: tuple[int, ...] = (1, 2, 3, 5)) -> Decision:
        """Replay the whole recorded history and check it agrees with the live run.

        A fresh replay, a replay through JSON text (``dumps``/``loads``) and feeds split into
        batches of each of ``sizes`` units must all decide nothing new and end in the live
        state. A unit is a runtime event with the decision events recorded right after it:
        a batch never separates the two (``ctx.patched`` must see a run's decisions whole).
        """
        full = replay(self.flow, list(self.history))
        assert not full.events, f"a replay of the full history decided more: {full.events}"
        assert same_state(full, self.decision), (full, self.decision)
        assert replay(self.flow, loads(dumps(self.history))) == full, "JSON round trip differs"
        units: list[list[Any]] = []
        for event in self.history:
            if units and is_decision_event(event):
                units[-1].append(event)
            else:
                units.append([event])
        for size in sizes:
            interp = Interpreter(self.flow)
            last = None
            for start in range(0, len(units), size):
                last = interp.feed([e for unit in units[start : start + size] for e in unit])
            assert last == full, f"feeding batches of {size} differs: {last} != {full}"
            if not any(isinstance(event, RunResumed) for event in self.history):
                assert interp.events_processed == len(self.history)  # resuming refolds
        return full


def same_state(a: Decision, b: Decision) -> bool:
    """True if two decisions agree on everything but what is new (commands, events)."""
    return (
        a.pending == b.pending
        and a.done == b.done
        and a.status == b.status
        and a.output == b.output
        and Decision.__eq__(
            Decision((), (), (), False, "", None, a.error),
            Decision((), (), (), False, "", None, b.error),
        )
    )


def is_decision_event(event: Any) -> bool:
    return isinstance(event, DECISION_EVENTS)
