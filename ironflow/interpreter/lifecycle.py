"""A run's start and end: ``RunStarted``, the root's return or raise, the recorded end.

``RunStarted`` makes the ``ctx`` and the root task and runs the workflow to its first
command. When the root returns, the run completes with its (JSON) value; when it raises, the
run fails (``compensate.fail``: undos first, if any). The recorded end must be the one the
code reaches now, unless a later resume took that failure back. ``check_replayable`` says
whether a history is a whole run of a function, for the golden-history checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ironflow.commands.jsonvalue import NotJSONError, public_error, to_json_value
from ironflow.errors import NonDeterminismError
from ironflow.history.events import HistoryEvent, RunCompleted, RunFailed, RunStarted
from ironflow.interpreter.context import Context
from ironflow.interpreter.determinism import END_KEY, add_other, match_other
from ironflow.interpreter.primitives.compensate import fail
from ironflow.interpreter.resume import taken_back
from ironflow.interpreter.tasks import Handler, Task

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


def on_run_started(interp: Interpreter, event: RunStarted) -> None:
    if interp.status != "pending":
        raise ValueError(f"RunStarted at seq {event.seq}: a run starts once, at seq 0")
    interp.now = event.ts
    interp.run_id = event.run_id
    interp.status = "running"
    interp.ctx = Context(interp, event.run_id, event.function_id, event.event)
    interp.ctx._events = event.events  # a batched run's (batch_events)
    interp._root = Task(interp.flow(interp.ctx), "")
    interp._advance(interp._root, None, None)


def root_done(interp: Interpreter, value: Any, error: BaseException | None) -> None:
    """The workflow returned ``value`` or raised ``error``: the run ends (or compensates)."""
    if error is None:
        try:
            output = to_json_value(value, "the workflow's return value")
        except NotJSONError as exc:
            error = public_error(exc)
        else:
            interp.status = "completed"
            interp._output = output
            interp._ended = True
            add_other(interp, END_KEY, RunCompleted, {"output": output}, None)
            return
    fail(interp, error)


def on_run_ended(interp: Interpreter, event: RunCompleted | RunFailed) -> None:
    recorded = type(event).__name__
    if isinstance(event, RunFailed):
        ended = interp._tent_other.get(END_KEY)
        if (ended is None or ended.event_cls is not RunFailed) and taken_back(interp, event.seq):
            return
    other = match_other(interp, END_KEY, event, f"the run's end ({recorded})")
    if other.event_cls is not type(event):
        raise NonDeterminismError(
            f"replay diverged from history at seq {event.seq}: recorded {recorded}, but "
            f"the code now ends with {other.event_cls.__name__}",
            recorded=recorded,
            current=other.event_cls.__name__,
            position=event.seq,
        )


def check_replayable(flow: Any, history: Sequence[HistoryEvent], origin: str) -> None:
    """Fail with ``ValueError`` unless ``history`` is a whole run's history of ``flow``.

    For the golden-history checks (``ironflow.testing.replay``, ``ironflow replay``): an empty
    history, or one of another function, would otherwise "replay" as a run that never began.
    A plain generator function has no id, so any function's history may be replayed with it.
    """
    if not history:
        raise ValueError(
            f"{origin} is empty: a history starts with a RunStarted event "
            f"(write one with `ironflow runs export RUN_ID`)"
        )
    first = history[0]
    if not isinstance(first, RunStarted):
        raise ValueError(
            f"{origin}: a history starts with a RunStarted event, not {type(first).__name__}"
        )
    current = getattr(flow, "id", None)
    if isinstance(current, str) and current != first.function_id:
        raise ValueError(
            f"{origin} is a run of function {first.function_id!r}, not of {current!r}: the "
            f"functions differ; replay it with the function {first.function_id!r}"
        )


HANDLERS: dict[type, Handler] = {
    RunStarted: on_run_started,
    RunCompleted: on_run_ended,
    RunFailed: on_run_ended,
}
