"""``step.publish``: emit an event from a workflow (docs/primitives/publish.md).

| yields           | ``Publish`` (kind ``"publish"``)                                        |
|------------------|-------------------------------------------------------------------------|
| records          | ``CommandScheduled`` (detail: ``event``, ``data``, the deterministic    |
|                  | ``event_id`` ``<run id>/<step id>``)                                    |
| runtime answers  | ``EventPublished`` once the event is stored (the store dedupes its id) |
| workflow receives| the published event's id                                                |

    yielded --CommandScheduled--> waiting --EventPublished--> resumed with the event id
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironflow.commands.classes import Publish
from ironflow.history.events import EventPublished
from ironflow.interpreter.tasks import Handler, Scheduler, Task, claim, new_slot, take, wait_on

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


def schedule_publish(interp: Interpreter, task: Task, command: Publish) -> Any:
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    return wait_on(interp, task, new_slot(interp, task, sid, command, "publish"))


def on_event_published(interp: Interpreter, event: EventPublished) -> None:
    interp.now = event.ts
    slot = take(interp, event, ("publish",))
    if slot is not None:
        del interp._waiting[slot.id]
        interp._resume(slot.task, event.event_id, None)


SCHEDULERS: dict[type, Scheduler] = {Publish: schedule_publish}
HANDLERS: dict[type, Handler] = {EventPublished: on_event_published}
