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

from ironflow.commands import kinds
from ironflow.commands.classes import Publish
from ironflow.history.events import EventPublished
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


def publish_detail(interp: Interpreter, slot: Slot, made: dict[str, Any]) -> None:
    command = slot.command
    made["event"] = command.event
    made["data"] = command.data
    made["event_id"] = f"{interp.run_id}/{slot.id}"


def publish_fingerprint(command: Publish) -> str:
    return command.event


def schedule_publish(interp: Interpreter, task: Task, command: Publish) -> Any:
    sid = claim(interp, task, command.name)
    if not isinstance(sid, str):
        return (None, sid)
    return wait_on(interp, task, new_slot(interp, task, sid, command, kinds.PUBLISH))


def on_event_published(interp: Interpreter, event: EventPublished) -> None:
    interp.now = event.ts
    slot = take(interp, event, (kinds.PUBLISH,))
    if slot is not None:
        del interp._waiting[slot.id]
        interp._resume(slot.task, event.event_id, None)


SCHEDULERS: dict[type, Scheduler] = {Publish: schedule_publish}
FINGERPRINTS: dict[type, Fingerprint] = {Publish: publish_fingerprint}
DETAILS: dict[type, Detail] = {Publish: publish_detail}
HANDLERS: dict[type, Handler] = {EventPublished: on_event_published}
