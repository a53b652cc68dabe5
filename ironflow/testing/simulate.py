"""A simulated runtime for checking workflows: every schedule the checker picks, played out.

It drives the pure interpreter the way the engine does (append runtime events, append the
decision's events), but outcomes, orders, event arrivals, timer firings and crashes come from
a *script*: a callable the checker backs with Hypothesis draws.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import random as _random
import time as _time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import attrs

from ironflow.commands.event import Event
from ironflow.commands.jsonvalue import NotJSONError, public_error
from ironflow.errors import NonDeterminismError, NonRetryableError
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
from ironflow.interpreter import Decision, Interpreter, Work, replay
from ironflow.runtime.executor import serialize_result

START = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)


class CheckFailure(AssertionError):
    """A schedule under which the workflow did not hold up."""


@attrs.frozen
class Action:
    """One thing the script decided: resolve ``step`` with ``outcome`` (or crash)."""

    kind: str
    step: str = ""
    outcome: str = ""

    def __str__(self) -> str:
        if self.kind == "crash":
            return "crash: the worker dies; the run is rebuilt from stored history"
        return f"{self.kind} {self.step!r}: {self.outcome}"


@attrs.frozen
class _Taken:
    """One batch the live run was fed: ``history[start:end]``, and what it decided."""

    start: int
    end: int
    decision: Decision
    actions: int  # how many actions the schedule had taken by then


_SHADOW = (
    "a step-by-step replay of the history, with other executions of the workflow running "
    "between its steps,"
)
_SHARED = (
    "(does the workflow read something that changes from one execution to the next: "
    "a module-level variable, a cache, the clock, random numbers?)"
)


Script = Callable[[str, list[Any]], Any]
"""``script(question, options) -> choice``: the checker answers with Hypothesis draws."""


@attrs.define
class Outcome:
    status: str
    output: Any
    error: str | None
    history: list[HistoryEvent]
    actions: list[Action]


# --- a perturbed environment: code that reads it outside a step diverges on replay ---------------


class _Epoch:
    current = 0


def _skewed_now(tz: Any = None) -> _dt.datetime:
    # Each epoch moves every field (day, hour, minute, second, microsecond) by a different
    # amount, so code branching on any of them sees a change.
    skew = _dt.timedelta(days=1, hours=7, minutes=13, seconds=17, microseconds=7919)
    base = START + skew * _Epoch.current
    return base if tz is not None else base.replace(tzinfo=None)


class _SkewedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        return _skewed_now(tz)

    @classmethod
    def utcnow(cls) -> Any:  # type: ignore[override]
        return _skewed_now()

    @classmethod
    def today(cls) -> Any:  # type: ignore[override]
        return _skewed_now()


class _SkewedModule:
    """``datetime`` the module, but with the skewed ``datetime`` class."""

    datetime = _SkewedDatetime

    def __getattr__(self, name: str) -> Any:
        return getattr(_dt, name)


@contextlib.contextmanager
def perturbed(flow: Any, epoch: int) -> Iterator[None]:
    """Within, wall-clock time and module-level randomness differ from one ``epoch`` to the
    next, so a workflow that branches on them outside a step diverges between executions."""
    _Epoch.current = epoch
    fn = getattr(flow, "fn", flow)
    namespace = getattr(fn, "__globals__", {})
    saved: dict[str, Any] = {}
    for name, value in list(namespace.items()):
        if value is _dt.datetime:
            saved[name] = value
            namespace[name] = _SkewedDatetime
        elif value is _dt:
            saved[name] = value
            namespace[name] = _SkewedModule()
    rng = _random.Random(epoch * 7_777 + 1)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patch(_random, "random", rng.random))
        stack.enter_context(_patch(_random, "randint", rng.randint))
        stack.enter_context(_patch(_random, "choice", rng.choice))
        stack.enter_context(_patch(_time, "time", lambda: _skewed_now(_dt.UTC).timestamp()))
        try:
            yield
        finally:
            namespace.update(saved)


@contextlib.contextmanager
def _patch(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


# --- the simulation ------------------------------------------------------------------------------


class Simulation:
    """One run of ``flow`` under a script; raises ``CheckFailure`` when a property breaks."""

    def __init__(
        self,
        flow: Any,
        data: Any,
        script: Script,
        *,
        mocks: dict[str, Callable[..., Any]] | None = None,
        crashes: bool = True,
        max_decisions: int = 200,
        check_prefixes: bool = True,
    ) -> None:
        self.flow = flow
        self.data = data
        self.script = script
        self.mocks = mocks or {}
        self.crashes = crashes
        self.max_decisions = max_decisions
        self.check_prefixes = check_prefixes
        self.history: list[HistoryEvent] = []
        self.actions: list[Action] = []
        self.now = START
        self.epoch = 0
        self.results: dict[tuple[str, int], tuple[bool, Any, bool]] = {}
        self.completed: set[str] = set()
        self.interpreter = self._fresh()
        self.decision: Decision | None = None
        self.taken: list[_Taken] = []

    def _fresh(self) -> Interpreter:
        self.epoch += 1
        return Interpreter(self.flow)

    def _feed(self, interpreter: Interpreter, events: list[HistoryEvent]) -> Decision:
        with perturbed(self.flow, self.epoch):
            return interpreter.feed(events)

    def _append(self, items: list[tuple[type, dict[str, Any]]]) -> None:
        start = len(self.history)
        batch = []
        for cls, fields in items:
            batch.append(cls(seq=len(self.history) + len(batch), ts=self.now, **fields))
        self.history.extend(batch)
        decision = self._feed(self.interpreter, batch)
        # Recorded, not checked here: a replay run now would execute the workflow while the
        # live generator is suspended, and the live run would see what that replay changed
        # in module-level state (a counter, a cache) as if it were its own.
        self.taken.append(_Taken(start, len(self.history), decision, len(self.actions)))
        if decision.events:
            self.history.extend(decision.events)
            self._feed(self.interpreter, list(decision.events))
        self.decision = decision

    def _check_replays(self) -> None:
        """After the live run: each prefix's fresh replay must decide as the live run did.

        A second incremental execution (the *shadow*) is then fed the same batches with those
        replays running between its steps, as other runs of the same workflow do in a real
        worker: it must decide as the live run, which ran alone, did.
        """
        shadow = Interpreter(self.flow)
        self.epoch += 1
        shadow_epoch = self.epoch
        for taken in self.taken:
            self.epoch += 1
            try:
                with perturbed(self.flow, self.epoch):
                    fresh = replay(self.flow, self.history[: taken.end])
            except NonDeterminismError as exc:
                self._fail_at(taken, f"a fresh replay of the history diverged: {exc}")
            if fresh != taken.decision:
                self._fail_at(
                    taken,
                    "a fresh replay of the history gives a different decision than the live "
                    f"run made:\n  live:   {_brief(taken.decision)}\n  replay: {_brief(fresh)}",
                )
            try:
                with perturbed(self.flow, shadow_epoch):
                    seen = shadow.feed(self.history[taken.start : taken.end])
            except NonDeterminismError as exc:
                self._fail_at(taken, f"{_SHADOW} diverged {_SHARED}: {exc}")
            if seen != taken.decision:
                self._fail_at(
                    taken,
                    f"{_SHADOW} decided differently than the live run {_SHARED}:\n"
                    f"  live:   {_brief(taken.decision)}\n  second: {_brief(seen)}",
                )
            scheduled = self.history[taken.end : taken.end + len(taken.decision.events)]
            if scheduled:
                with perturbed(self.flow, shadow_epoch):
                    shadow.feed(scheduled)

    def _fail_at(self, taken: _Taken, reason: str) -> NoReturn:
        # The schedule up to the divergence is the counterexample; what came after is noise.
        del self.actions[taken.actions :]
        raise CheckFailure(reason)

    def run(self) -> Outcome:
        """Play the run out under the script, then check replays of every history prefix."""
        try:
            outcome = self._run_live()
        except CheckFailure:
            if self.check_prefixes:
                # A replay that diverged earlier explains a stuck or endless run better.
                self._check_replays()
            raise
        if self.check_prefixes:
            self._check_replays()
        return outcome

    def _run_live(self) -> Outcome:
        fid = getattr(self.flow, "id", "flow")
        self._append(
            [
                (
                    RunStarted,
                    {
                        "run_id": "check-run",
                        "function_id": fid,
                        "event": Event("check-event", fid, self.data, START),
                    },
                )
            ]
        )
        for _ in range(self.max_decisions):
            decision = self.decision
            assert decision is not None
            if decision.done:
                error = (
                    None
                    if decision.error is None
                    else f"{type(decision.error).__name__}: {decision.error}"
                )
                return Outcome(decision.status, decision.output, error, self.history, self.actions)
            pending = sorted(decision.pending, key=lambda work: work.id)
            if not pending:
                raise CheckFailure("the run is stuck: nothing pending and not done")
            for work in pending:
                if work.kind in ("run", "undo") and work.id in self.completed:
                    raise CheckFailure(
                        f"step {work.id!r} has a recorded completion but is pending again"
                    )
            if self.crashes and self.script("crash", [False, True]):
                self.actions.append(Action("crash"))
                self.interpreter = self._fresh()
                try:
                    self.decision = self._feed(self.interpreter, list(self.history))
                except NonDeterminismError as exc:
                    raise CheckFailure(
                        f"rebuilding the run from its history failed: {exc}"
                    ) from None
                continue
            work = self.script("next", pending)
            self.now = self.now + _dt.timedelta(seconds=self.script("wait", [0, 1, 60, 86400]))
            if work.due is not None and work.due > self.now:
                self.now = work.due
            self._resolve(work)
        raise CheckFailure(f"did not finish in {self.max_decisions} decisions")

    def _resolve(self, work: Work) -> None:
        kind = work.kind
        if kind in ("run", "undo"):
            ok, value, retryable = self._execute(work)
            if ok:
                self.completed.add(work.id)
                self.actions.append(
                    Action("step", work.id, f"attempt {work.attempt} returned {value!r}")
                )
                self._append(
                    [(StepCompleted, {"id": work.id, "attempt": work.attempt, "result": value})]
                )
            else:
                self.actions.append(
                    Action("step", work.id, f"attempt {work.attempt} raised {value}")
                )
                self._append(
                    [
                        (
                            StepFailed,
                            {
                                "id": work.id,
                                "attempt": work.attempt,
                                "error": value,
                                "retryable": retryable,
                            },
                        )
                    ]
                )
        elif kind in ("sleep", "sleep_until"):
            self.actions.append(Action("timer", work.id, "fired"))
            self._append([(TimerFired, {"id": work.id})])
        elif kind == "wait_event":
            if self.script("event", [True, False]):
                detail = work.detail
                data = _event_data(detail.get("match"), detail.get("match_value"))
                event = Event(f"evt-{work.id}", detail["event"], data, self.now)
                self.actions.append(Action("wait", work.id, f"event {detail['event']!r} arrived"))
                self._append([(WaitMatched, {"id": work.id, "event": event})])
            else:
                self.actions.append(Action("wait", work.id, "timed out"))
                self.now = max(self.now, work.due or self.now)
                self._append([(WaitTimedOut, {"id": work.id})])
        elif kind == "invoke":
            child = work.detail.get("child_run_id", "child")
            if self.script("child", [True, False]):
                self.actions.append(Action("invoke", work.id, "child completed"))
                self._append(
                    [
                        (ChildStarted, {"id": work.id, "child_run_id": child}),
                        (
                            ChildCompleted,
                            {"id": work.id, "child_run_id": child, "output": {"child": work.id}},
                        ),
                    ]
                )
            else:
                self.actions.append(Action("invoke", work.id, "child failed"))
                self._append(
                    [
                        (ChildStarted, {"id": work.id, "child_run_id": child}),
                        (
                            ChildFailed,
                            {
                                "id": work.id,
                                "child_run_id": child,
                                "error": encode_error(RuntimeError("child failed")),
                            },
                        ),
                    ]
                )
        elif kind == "invoke_async":
            self.actions.append(Action("invoke_async", work.id, "child started"))
            self._append([(ChildStarted, {"id": work.id, "child_run_id": f"child-{work.id}"})])
        elif kind == "publish":
            self.actions.append(Action("publish", work.id, "published"))
            self._append([(EventPublished, {"id": work.id, "event_id": f"evt-{work.id}"})])
        else:  # pragma: no cover - every kind the interpreter emits is handled above
            raise CheckFailure(f"unknown work kind {kind!r}")

    def _execute(self, work: Work) -> tuple[bool, Any, bool]:
        """Run a step once per (id, attempt): crashes replay it, they never re-roll it."""
        key = (work.id, work.attempt)
        if key in self.results:
            return self.results[key]
        command: Any = work.command
        name = getattr(command, "name", work.id)
        fn = self.mocks.get(name, command.fn)
        verdict = self.script("outcome", ["call", "fail", "fail-for-good"])
        result: tuple[bool, Any, bool]
        if verdict == "fail":
            result = (False, encode_error(RuntimeError(f"injected failure of {work.id}")), True)
        elif verdict == "fail-for-good":
            result = (
                False,
                encode_error(NonRetryableError(f"injected failure of {work.id}")),
                False,
            )
        else:
            try:
                value = fn(*command.args)
                result = (True, serialize_result(value, work.id), True)
            except NotJSONError as exc:
                result = (False, encode_error(public_error(exc)), False)
            except NonRetryableError as exc:
                result = (False, encode_error(exc), False)
            except Exception as exc:
                result = (False, encode_error(exc), True)
        self.results[key] = result
        return result


def _event_data(path: str | None, value: Any) -> Any:
    if not path or not path.startswith("data."):
        return {}
    data: Any = value
    for part in reversed(path.split(".")[1:]):
        data = {part: data}
    return data


def _brief(decision: Decision) -> str:
    commands = ", ".join(f"{w.kind} {w.id!r}" for w in decision.commands) or "nothing new"
    return f"status={decision.status} output={decision.output!r} commands=[{commands}]"
