"""``step.sleep`` and ``step.sleep_until``: durable pauses (docs/primitives/sleep.md).

| yields           | ``Sleep`` (kind ``"sleep"``) or ``SleepUntil`` (``"sleep_until"``)      |
|------------------|-------------------------------------------------------------------------|
| records          | ``CommandScheduled`` (detail: ``due``, the workflow time it ends)       |
| runtime answers  | ``TimerFired`` once ``due`` has passed                                  |
| workflow receives| ``None``; a ``sleep_until`` target not after the workflow's time raises |
|                  | ``ValueError`` at the ``yield`` (nothing is recorded)                   |

    yielded --CommandScheduled--> waiting --TimerFired--> resumed with None

``due`` is the workflow's own time (the event being folded) plus the duration, so it is the
same live and on replay; the recorded ``due`` wins when the history is folded again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.commands.classes import Sleep, SleepUntil
from ironflow.history.events import TimerFired
from ironflow.interpreter.determinism import Detail, Fingerprint, no_detail, no_fingerprint
from ironflow.interpreter.tasks import (
    Handler,
    Scheduler,
    Task,
    claim,
    new_slot,
    take,
    wait_on,
)

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


def schedule_sleep(interp: Interpreter, task: Task, command: Sleep) -> Any:
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    slot = new_slot(interp, task, sid, command, kinds.SLEEP)
    slot.due = interp.now + command.duration
    return wait_on(interp, task, slot)


def schedule_sleep_until(interp: Interpreter, task: Task, command: SleepUntil) -> Any:
    if command.when <= interp.now:
        return (
            None,
            ValueError(
                f"sleep_until {command.name!r} target {command.when.isoformat()} is not after "
                f"the workflow's current time {interp.now.isoformat()}"
            ),
        )
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    slot = new_slot(interp, task, sid, command, kinds.SLEEP_UNTIL)
    slot.due = command.when
    return wait_on(interp, task, slot)


def on_timer_fired(interp: Interpreter, event: TimerFired) -> None:
    interp.now = event.ts
    slot = take(interp, event, kinds.SLEEPS)
    if slot is not None:
        del interp._waiting[slot.id]
        interp._resume(slot.task, None, None)


SCHEDULERS: dict[type, Scheduler] = {Sleep: schedule_sleep, SleepUntil: schedule_sleep_until}
# A sleep records its ``due`` only, which ``determinism.detail`` adds for every timed kind.
FINGERPRINTS: dict[type, Fingerprint] = {Sleep: no_fingerprint, SleepUntil: no_fingerprint}
DETAILS: dict[type, Detail] = {Sleep: no_detail, SleepUntil: no_detail}
HANDLERS: dict[type, Handler] = {TimerFired: on_timer_fired}
