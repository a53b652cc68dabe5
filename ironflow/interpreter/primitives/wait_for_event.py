"""``step.wait_for_event``: pause until an event arrives (docs/primitives/wait_for_event.md).

| yields           | ``WaitEvent`` (kind ``"wait_event"``)                                    |
|------------------|--------------------------------------------------------------------------|
| records          | ``CommandScheduled`` (detail: ``due``, ``event``, ``match``,             |
|                  | ``match_value``: what the runtime compares incoming events with)         |
| runtime answers  | ``WaitMatched`` (the event) or ``WaitTimedOut`` once ``due`` has passed  |
| workflow receives| the ``Event`` (its data a fresh copy), or ``WaitTimeoutError``           |

    yielded --CommandScheduled--> waiting --WaitMatched--> resumed with the event
    waiting --WaitTimedOut--> resumed with WaitTimeoutError

``match_value`` is read from the run's triggering event (or given as ``value=``) when the wait
is yielded, so the runtime matches on a recorded value, never on code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.commands.classes import UNSET, WaitEvent
from ironflow.commands.event import MISSING, Event, lookup
from ironflow.commands.jsonvalue import copy_json
from ironflow.errors import WaitTimeoutError
from ironflow.history.events import WaitMatched, WaitTimedOut
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


def match_value(interp: Interpreter, command: WaitEvent) -> Any:
    """The value an incoming event must hold at ``command.match``; MISSING if there is none."""
    if command.value is not UNSET:
        return command.value
    if command.match is None:
        return None
    assert interp.ctx is not None
    return lookup(interp.ctx.event, command.match)


def wait_detail(interp: Interpreter, slot: Slot, made: dict[str, Any]) -> None:
    command = slot.command
    made["event"] = command.event
    made["match"] = command.match
    made["match_value"] = match_value(interp, command)


def wait_fingerprint(command: WaitEvent) -> str:
    return command.event


def schedule_wait(interp: Interpreter, task: Task, command: WaitEvent) -> Any:
    if command.match is not None and match_value(interp, command) is MISSING:
        return (
            None,
            ValueError(
                f"wait {command.name!r}: the run's triggering event has no value at "
                f"{command.match!r} to match on; pass value= to compare with a value of "
                f"your own"
            ),
        )
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    slot = new_slot(interp, task, sid, command, kinds.WAIT_EVENT)
    slot.due = interp.now + command.timeout
    return wait_on(interp, task, slot)


def on_wait_matched(interp: Interpreter, event: WaitMatched) -> None:
    interp.now = event.ts
    slot = take(interp, event, (kinds.WAIT_EVENT,))
    if slot is not None:
        del interp._waiting[slot.id]
        got = event.event
        interp._resume(slot.task, Event(got.id, got.name, copy_json(got.data), got.ts), None)


def on_wait_timed_out(interp: Interpreter, event: WaitTimedOut) -> None:
    interp.now = event.ts
    slot = take(interp, event, (kinds.WAIT_EVENT,))
    if slot is not None:
        del interp._waiting[slot.id]
        error = WaitTimeoutError()
        interp._handed = (error, event.seq)
        interp._resume(slot.task, None, error)


SCHEDULERS: dict[type, Scheduler] = {WaitEvent: schedule_wait}
FINGERPRINTS: dict[type, Fingerprint] = {WaitEvent: wait_fingerprint}
DETAILS: dict[type, Detail] = {WaitEvent: wait_detail}
HANDLERS: dict[type, Handler] = {WaitMatched: on_wait_matched, WaitTimedOut: on_wait_timed_out}
