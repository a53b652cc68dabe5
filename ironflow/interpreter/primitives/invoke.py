"""``step.invoke`` and ``step.invoke_async``: child runs (docs/primitives/invoke.md).

| yields           | ``Invoke`` (kind ``"invoke"``) or ``InvokeAsync`` (``"invoke_async"``)  |
|------------------|-------------------------------------------------------------------------|
| records          | ``CommandScheduled`` (detail: ``function``, ``data``, the deterministic |
|                  | ``child_run_id`` ``<run id>/<step id>``, and ``due`` for a timeout)     |
| runtime answers  | ``ChildStarted``, then ``ChildCompleted`` or ``ChildFailed`` (also when |
|                  | the child cannot start, or an invoke's timeout passes)                  |
| workflow receives| invoke: the child's output (a fresh copy) or ``InvokeError``;           |
|                  | invoke_async: the child run id, at ``ChildStarted``                     |

    yielded --CommandScheduled--> waiting --ChildStarted--> started (invoke_async: resumed)
    started --ChildCompleted--> resumed with the output
    waiting/started --ChildFailed--> resumed with InvokeError
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.commands.classes import Invoke, InvokeAsync
from ironflow.commands.jsonvalue import copy_json
from ironflow.errors import InvokeError
from ironflow.history.errors import decode_error
from ironflow.history.events import ChildCompleted, ChildFailed, ChildStarted, ErrorInfo
from ironflow.interpreter.determinism import Detail, Fingerprint
from ironflow.interpreter.tasks import (
    Handler,
    Scheduler,
    Slot,
    Task,
    claim,
    new_slot,
    take,
    wait_on,
)

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter

# What earlier runtimes recorded (as a ChildFailed) for an invoke whose timeout passed; such
# histories replay to the message their runs saw ("child run ... failed: TimeoutError: invoke
# timed out"). The runtime now records the whole message: see ``invoke_timeout``.
INVOKE_TIMEOUT = ErrorInfo("TimeoutError", "invoke timed out")


def _span(duration: _dt.timedelta) -> str:
    """``duration`` spelled as the builders take it: "1h", "1d2h", "1m30s", "0.5s"."""
    total = duration.total_seconds()
    if total != int(total):
        return f"{total:g}s"
    parts, rest = [], int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _invoke_timeout_tail(child_run_id: str) -> str:
    # The runtime does not cancel the child: it runs to its end, unheard.
    return f"; the child run {child_run_id!r} goes on"


def invoke_timeout(interp: Interpreter, step_id: str, child_run_id: str) -> ErrorInfo:
    """The error a runtime records (as a ChildFailed) when the invoke ``step_id`` times out."""
    slot = interp._waiting.get(step_id)
    command = None if slot is None else slot.command
    timeout = getattr(command, "timeout", None)
    if command is None or timeout is None:  # not waiting: the input is dropped as stale
        return INVOKE_TIMEOUT
    return ErrorInfo(
        "TimeoutError",
        f"invoke {command.name!r} of {command.function!r} timed out after "
        f"{_span(timeout)}{_invoke_timeout_tail(child_run_id)}",
    )


def child_detail(interp: Interpreter, slot: Slot, made: dict[str, Any]) -> None:
    command = slot.command
    made["function"] = command.function
    made["data"] = command.data
    made["child_run_id"] = f"{interp.run_id}/{slot.id}"


def child_fingerprint(command: Invoke | InvokeAsync) -> str:
    return command.function


def schedule_child(interp: Interpreter, task: Task, command: Invoke | InvokeAsync) -> Any:
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    slot = new_slot(interp, task, sid, command, command.kind)
    if isinstance(command, Invoke) and command.timeout is not None:
        slot.due = interp.now + command.timeout
    return wait_on(interp, task, slot)


def on_child_started(interp: Interpreter, event: ChildStarted) -> None:
    interp.now = event.ts
    slot = take(interp, event, kinds.CHILDREN)
    if slot is None:
        return
    slot.child_run_id = event.child_run_id
    if slot.kind == kinds.INVOKE_ASYNC:
        del interp._waiting[slot.id]
        interp._resume(slot.task, event.child_run_id, None)


def on_child_completed(interp: Interpreter, event: ChildCompleted) -> None:
    interp.now = event.ts
    slot = take(interp, event, (kinds.INVOKE,))
    if slot is not None:
        del interp._waiting[slot.id]
        interp._resume(slot.task, copy_json(event.output), None)


def on_child_failed(interp: Interpreter, event: ChildFailed) -> None:
    interp.now = event.ts
    # An invoke_async fails too when its child cannot be started (an unknown function).
    slot = take(interp, event, kinds.CHILDREN)
    if slot is None:
        return
    del interp._waiting[slot.id]
    info = event.error
    command = slot.command
    if info.type == "TimeoutError" and info.message.endswith(
        _invoke_timeout_tail(event.child_run_id)
    ):
        # Recorded by the runtime when the timeout passed (``invoke_timeout``): said as
        # recorded. A history with the older INVOKE_TIMEOUT replays to the older text below.
        message = info.message
    else:
        message = (
            f"child run {event.child_run_id!r} of {command.function!r} failed: "
            f"{info.type}: {info.message}"
        )
    error = InvokeError(message, function_id=command.function, child_run_id=event.child_run_id)
    error.__cause__ = decode_error(info)
    interp._handed = (error, event.seq)
    interp._resume(slot.task, None, error)


SCHEDULERS: dict[type, Scheduler] = {Invoke: schedule_child, InvokeAsync: schedule_child}
FINGERPRINTS: dict[type, Fingerprint] = {
    Invoke: child_fingerprint,
    InvokeAsync: child_fingerprint,
}
DETAILS: dict[type, Detail] = {Invoke: child_detail, InvokeAsync: child_detail}
HANDLERS: dict[type, Handler] = {
    ChildStarted: on_child_started,
    ChildCompleted: on_child_completed,
    ChildFailed: on_child_failed,
}
