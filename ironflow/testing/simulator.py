"""The simulated runtime of the test kit: the real interpreter, fed as the engine feeds it.

``Simulator`` keeps a run's history in a list. ``append`` numbers runtime events, feeds them,
appends the decision's events and feeds those back (``docs/embedding.md``, "One round of the
loop"). ``carry_out`` answers one pending ``Work`` the way a runtime does, from one table keyed
by its kind (``ironflow.commands.kinds``). It re-derives nothing a primitive decides: a child's
run id, a publish's event id, the event a wait matches and when a timeout falls are read from
the ``Work`` the interpreter handed out; retries, results and errors come from the interpreter
when it folds the answer. The choices a runtime does not control (does the step body fail,
does the event arrive, does the child succeed) come from ``choose``: the first option here;
``Simulation`` (behind ``check_workflow``) asks a Hypothesis-driven script instead.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any, ClassVar

from ironflow.commands import kinds
from ironflow.commands.event import Event
from ironflow.commands.jsonvalue import NotJSONError, public_error
from ironflow.errors import NonRetryableError
from ironflow.history.errors import encode_error
from ironflow.history.events import (
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    EventPublished,
    HistoryEvent,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
)
from ironflow.interpreter import Decision, Interpreter, Work
from ironflow.runtime.results import serialize_result

START = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)

Input = tuple[type, dict[str, Any]]
"""A runtime event before it is numbered: its class and its fields but ``seq`` (and ``ts``)."""


class Simulator:
    """One run of ``flow`` in memory; ``start`` appends its ``RunStarted``."""

    def __init__(
        self, flow: Any, *, now: _dt.datetime = START, mocks: dict[str, Any] | None = None
    ) -> None:
        self.flow = flow
        self.now = now
        self.mocks: dict[str, Callable[..., Any]] = mocks or {}
        self.history: list[HistoryEvent] = []
        self.interpreter = Interpreter(flow)
        self.decision: Decision | None = None
        # One outcome per (step id, attempt): a rebuilt run that runs an attempt again gets
        # the outcome the first try had, as a crash between body and commit would replay it.
        self.results: dict[tuple[str, int], tuple[bool, Any, bool]] = {}

    # --- hooks ----------------------------------------------------------------------------

    def choose(self, question: str, options: list[Any]) -> Any:
        """What happens where the runtime does not decide: the plain path, ``options[0]``."""
        return options[0]

    def note(self, kind: str, step_id: str, outcome: str) -> None:
        """Told what ``carry_out`` did (``Simulation`` keeps it as the schedule)."""

    def fold(self, events: list[HistoryEvent]) -> Decision:
        """Feed ``events`` to the interpreter (``Simulation`` perturbs the environment)."""
        return self.interpreter.feed(events)

    def decided(self, start: int, decision: Decision) -> None:
        """Told the decision for the runtime events ``history[start:]``, before its own
        events are appended."""

    # --- the round --------------------------------------------------------------------------

    def start(self, data: Any, *, run_id: str, event_id: str) -> Decision:
        fid = getattr(self.flow, "id", "flow")
        event = Event(event_id, fid, data, self.now)
        return self.append([(RunStarted, {"run_id": run_id, "function_id": fid, "event": event})])

    def append(self, items: list[Input]) -> Decision:
        """Number ``items`` (``ts`` defaults to ``now``), feed them, record the decision."""
        start = len(self.history)
        batch: list[HistoryEvent] = []
        for cls, fields in items:
            fields.setdefault("ts", self.now)
            batch.append(cls(seq=start + len(batch), **fields))
        self.history.extend(batch)
        decision = self.fold(batch)
        self.decided(start, decision)
        if decision.events:
            self.history.extend(decision.events)
            again = self.fold(list(decision.events))
            assert not again.events, f"recording a decision decided more: {again.events}"
        self.decision = decision
        return decision

    # --- answering work -------------------------------------------------------------------

    def carry_out(self, work: Work) -> Decision:
        """Answer ``work`` as a runtime would; ``KeyError`` names a kind nobody answers."""
        try:
            answer = self.ANSWERS[work.kind]
        except KeyError:
            raise KeyError(f"the simulator cannot carry out work of kind {work.kind!r}") from None
        return self.append(answer(self, work))

    def _step(self, work: Work) -> list[Input]:
        ok, value, retryable = self.run_step(work)
        if ok:
            self.note("step", work.id, f"attempt {work.attempt} returned {value!r}")
            return [(StepCompleted, {"id": work.id, "attempt": work.attempt, "result": value})]
        self.note("step", work.id, f"attempt {work.attempt} raised {value}")
        fields = {"id": work.id, "attempt": work.attempt, "error": value, "retryable": retryable}
        return [(StepFailed, fields)]

    def _timer(self, work: Work) -> list[Input]:
        self.note("timer", work.id, "fired")
        return [(TimerFired, {"id": work.id})]

    def _wait(self, work: Work) -> list[Input]:
        detail = work.detail
        if self.choose("event", [True, False]):
            data = event_data(detail.get("match"), detail.get("match_value"))
            event = Event(f"evt-{work.id}", detail["event"], data, self.now)
            self.note("wait", work.id, f"event {detail['event']!r} arrived")
            return [(WaitMatched, {"id": work.id, "event": event})]
        self.note("wait", work.id, "timed out")
        self.now = max(self.now, work.due or self.now)
        return [(WaitTimedOut, {"id": work.id})]

    def _invoke(self, work: Work) -> list[Input]:
        child = work.detail["child_run_id"]
        started: Input = (ChildStarted, {"id": work.id, "child_run_id": child})
        if self.choose("child", [True, False]):
            self.note("invoke", work.id, "child completed")
            output = {"child": work.id}
            return [
                started,
                (ChildCompleted, {"id": work.id, "child_run_id": child, "output": output}),
            ]
        self.note("invoke", work.id, "child failed")
        error = encode_error(RuntimeError("child failed"))
        return [started, (ChildFailed, {"id": work.id, "child_run_id": child, "error": error})]

    def _invoke_async(self, work: Work) -> list[Input]:
        self.note("invoke_async", work.id, "child started")
        return [(ChildStarted, {"id": work.id, "child_run_id": work.detail["child_run_id"]})]

    def _publish(self, work: Work) -> list[Input]:
        self.note("publish", work.id, "published")
        return [(EventPublished, {"id": work.id, "event_id": work.detail["event_id"]})]

    ANSWERS: ClassVar[dict[str, Callable[[Simulator, Work], list[Input]]]] = {
        kinds.RUN: _step,
        kinds.UNDO: _step,
        kinds.SLEEP: _timer,
        kinds.SLEEP_UNTIL: _timer,
        kinds.WAIT_EVENT: _wait,
        kinds.INVOKE: _invoke,
        kinds.INVOKE_ASYNC: _invoke_async,
        kinds.PUBLISH: _publish,
    }
    """What answers each kind of work: every kind in ``kinds.WORK``, one entry each."""

    def run_step(self, work: Work) -> tuple[bool, Any, bool]:
        """Run a step once per (id, attempt): ``(ok, result or ErrorInfo, retryable)``, the
        body's result stored as the engine's executor stores it."""
        key = (work.id, work.attempt)
        if key in self.results:
            return self.results[key]
        command: Any = work.command
        fn = self.mocks.get(command.name, command.fn)
        verdict = self.choose("outcome", ["call", "fail", "fail-for-good"])
        result: tuple[bool, Any, bool]
        if verdict == "fail":
            result = (False, encode_error(RuntimeError(f"injected failure of {work.id}")), True)
        elif verdict == "fail-for-good":
            error = NonRetryableError(f"injected failure of {work.id}")
            result = (False, encode_error(error), False)
        else:
            try:
                result = (True, serialize_result(fn(*command.args), work.id), True)
            except NotJSONError as exc:
                result = (False, encode_error(public_error(exc)), False)
            except NonRetryableError as exc:
                result = (False, encode_error(exc), False)
            except Exception as exc:
                result = (False, encode_error(exc), True)
        self.results[key] = result
        return result


def event_data(path: str | None, value: Any) -> Any:
    """Data in which ``path`` (``data.a.b``) holds ``value``: an event a wait matches."""
    if not path or not path.startswith("data."):
        return {}
    data: Any = value
    for part in reversed(path.split(".")[1:]):
        data = {part: data}
    return data
