"""History events: the append-only, JSON-serializable record of a run.

Some are written by the runtime (what happened: a step completed, a timer fired); the rest by
the interpreter (what it decided: a command was scheduled, a retry is due, the run ended).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

from ironflow.commands.event import Event


@attrs.frozen
class ErrorInfo:
    """An exception as stored: its class (module-qualified unless builtin) and message."""

    type: str
    message: str
    traceback: str | None = attrs.field(default=None, eq=False)


# --- written by the runtime --------------------------------------------------------------


@attrs.frozen
class RunStarted:
    seq: int
    ts: _dt.datetime
    run_id: str
    function_id: str
    event: Event
    parent_run_id: str | None = None
    # A batched run's events (``batch_events``), ``event`` its first; ``None`` otherwise,
    # and then absent from the stored and exported event.
    events: tuple[Event, ...] | None = None


@attrs.frozen
class StepCompleted:
    seq: int
    ts: _dt.datetime
    id: str
    attempt: int
    result: Any


@attrs.frozen
class StepFailed:
    seq: int
    ts: _dt.datetime
    id: str
    attempt: int
    error: ErrorInfo
    retryable: bool


@attrs.frozen
class TimerFired:
    seq: int
    ts: _dt.datetime
    id: str


@attrs.frozen
class WaitMatched:
    seq: int
    ts: _dt.datetime
    id: str
    event: Event


@attrs.frozen
class WaitTimedOut:
    seq: int
    ts: _dt.datetime
    id: str


@attrs.frozen
class ChildStarted:
    seq: int
    ts: _dt.datetime
    id: str
    child_run_id: str


@attrs.frozen
class ChildCompleted:
    seq: int
    ts: _dt.datetime
    id: str
    child_run_id: str
    output: Any


@attrs.frozen
class ChildFailed:
    seq: int
    ts: _dt.datetime
    id: str
    child_run_id: str
    error: ErrorInfo


@attrs.frozen
class EventPublished:
    seq: int
    ts: _dt.datetime
    id: str
    event_id: str


@attrs.frozen
class RunCancelled:
    seq: int
    ts: _dt.datetime
    reason: str = ""
    compensate: bool = False


@attrs.frozen
class RunTimedOut:
    """The run passed its function's ``timeouts.finish``: it fails with ``RunTimeoutError``
    (its undos run first)."""

    seq: int
    ts: _dt.datetime
    reason: str = ""


@attrs.frozen
class RunResumed:
    seq: int
    ts: _dt.datetime
    reason: str = ""


# --- written by the interpreter ------------------------------------------------------------


@attrs.frozen
class CommandScheduled:
    """A command was yielded: enough of it to check determinism and to carry it out."""

    seq: int
    ts: _dt.datetime
    id: str
    kind: str
    name: str
    scope: str
    fingerprint: str
    detail: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class RetryScheduled:
    seq: int
    ts: _dt.datetime
    id: str
    attempt: int
    at: _dt.datetime
    jitter: float = 0.0


@attrs.frozen
class CompensationScheduled:
    seq: int
    ts: _dt.datetime
    id: str
    for_step: str


@attrs.frozen
class PatchMarked:
    seq: int
    ts: _dt.datetime
    change_id: str


@attrs.frozen
class RunCompleted:
    seq: int
    ts: _dt.datetime
    output: Any


@attrs.frozen
class RunFailed:
    seq: int
    ts: _dt.datetime
    error: ErrorInfo


RUNTIME_EVENTS: tuple[type, ...] = (
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
    ChildStarted,
    ChildCompleted,
    ChildFailed,
    EventPublished,
    RunCancelled,
    RunResumed,
    RunTimedOut,
)
DECISION_EVENTS: tuple[type, ...] = (
    CommandScheduled,
    RetryScheduled,
    CompensationScheduled,
    PatchMarked,
    RunCompleted,
    RunFailed,
)
EVENT_TYPES: dict[str, type] = {cls.__name__: cls for cls in RUNTIME_EVENTS + DECISION_EVENTS}

HistoryEvent = (
    RunStarted
    | StepCompleted
    | StepFailed
    | TimerFired
    | WaitMatched
    | WaitTimedOut
    | ChildStarted
    | ChildCompleted
    | ChildFailed
    | EventPublished
    | RunCancelled
    | RunResumed
    | RunTimedOut
    | CommandScheduled
    | RetryScheduled
    | CompensationScheduled
    | PatchMarked
    | RunCompleted
    | RunFailed
)
