"""``step.compensate``: register an undo; the saga runs them when the run fails
(docs/primitives/compensate.md).

| yields           | ``Compensate`` (kind ``"compensate"``)                                  |
|------------------|-------------------------------------------------------------------------|
| records          | ``CommandScheduled`` with the id ``compensate:<step name>``; if the run |
|                  | fails (or is cancelled with ``compensate=True``): one                   |
|                  | ``CompensationScheduled`` per undo, the last registered first (a run    |
|                  | past its ``timeouts.finish``, ``RunTimedOut``, fails the same way)      |
| runtime answers  | nothing at registration; for an undo (``Work`` kind ``"undo"``):        |
|                  | ``StepCompleted`` or ``StepFailed`` of its id                           |
| workflow receives| ``None`` at once; the undos run after the workflow has stopped          |

    registered --run fails--> compensating --CompensationScheduled--> undo running
    undo running --StepCompleted/StepFailed--> next undo, or RunFailed (cancelled: ended)

An undo gets one attempt, and one that fails does not stop the others. The run then ends
``failed`` with its original error, or ``cancelled``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.commands.classes import Compensate
from ironflow.errors import CancelledError, RunTimeoutError
from ironflow.history.errors import encode_error
from ironflow.history.events import (
    CompensationScheduled,
    RunCancelled,
    RunFailed,
    RunTimedOut,
)
from ironflow.interpreter.determinism import (
    END_KEY,
    UNDO_KEY,
    Detail,
    Fingerprint,
    add_other,
    fn_name,
    match_other,
    no_detail,
    work,
)
from ironflow.interpreter.resume import taken_back
from ironflow.interpreter.tasks import (
    UNDO_PREFIX,
    Handler,
    Scheduler,
    Slot,
    Task,
    abandon_all,
    claim,
    new_slot,
)

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


def schedule_compensate(interp: Interpreter, task: Task, command: Compensate) -> Any:
    sid = claim(interp, task, UNDO_PREFIX + command.name, undo_of=command.name)
    if not isinstance(sid, str):
        return (None, sid)
    undos = interp._undos
    if undos is None:  # the first undo makes the saga
        undos = interp._undos = []
    undos.append(new_slot(interp, task, sid, command, kinds.COMPENSATE))
    return (None, None)


def compensate_fingerprint(command: Compensate) -> str:
    return fn_name(command.fn)


def fail(interp: Interpreter, error: BaseException) -> None:
    """The run failed of ``error``: stop its tasks, then run its undos or end it failed."""
    interp._failure = error
    interp._failed_at = interp._pos
    handed = interp._handed
    interp._failed_of_handed = (
        handed is not None and handed[0] is error and handed[1] == interp._pos
    )
    abandon_all(interp)
    if interp._undos:
        interp.status = "compensating"
        next_undo(interp)
    else:
        end_failed(interp)


def next_undo(interp: Interpreter) -> None:
    """Decide the undo registered last: a ``CompensationScheduled`` and its ``undo`` work."""
    assert interp._undos  # called only while undos remain
    registration = interp._undos.pop()
    command = registration.command
    slot = Slot(registration.id, registration.task, command, kinds.UNDO, 0, interp.now)
    slot.detail = {"for_step": command.name}
    interp._waiting[slot.id] = slot
    interp._abandoned.discard(slot.id)
    add_other(
        interp,
        (UNDO_KEY, slot.id),
        CompensationScheduled,
        {"id": slot.id, "for_step": command.name},
        work(interp, slot),
    )


def undo_finished(interp: Interpreter) -> None:
    """An undo ended (either way): the next one, or the run's end."""
    if interp._undos:
        next_undo(interp)
    elif interp.status == "cancelling":
        interp.status = "cancelled"
        interp._ended = True
    else:
        end_failed(interp)


def end_failed(interp: Interpreter) -> None:
    assert interp._failure is not None
    interp.status = "failed"
    interp._ended = True
    info = encode_error(interp._failure, with_traceback=True)
    add_other(interp, END_KEY, RunFailed, {"error": info}, None)


def on_run_cancelled(interp: Interpreter, event: RunCancelled) -> None:
    interp.now = event.ts
    if interp._ended:
        return
    interp._failure = CancelledError(event.reason or "the run was cancelled")
    abandon_all(interp)
    if event.compensate and interp._undos:
        interp.status = "cancelling"
        next_undo(interp)
    else:
        interp.status = "cancelled"
        interp._ended = True


def on_run_timed_out(interp: Interpreter, event: RunTimedOut) -> None:
    # Past ``timeouts.finish``: the run fails as if its workflow had raised, so its undos run
    # (one arriving while they already run changes nothing: the run is failing already).
    interp.now = event.ts
    if interp._ended or interp._failure is not None:
        return
    fail(interp, RunTimeoutError(event.reason or "the run did not finish in time"))


def on_compensation_scheduled(interp: Interpreter, event: CompensationScheduled) -> None:
    if (UNDO_KEY, event.id) not in interp._tent_other and taken_back(interp, event.seq):
        return
    match_other(interp, (UNDO_KEY, event.id), event, f"compensation {event.id!r}")


SCHEDULERS: dict[type, Scheduler] = {Compensate: schedule_compensate}
# The registration records nothing but its fingerprint; an undo's own detail (``for_step``)
# is set on its slot by ``next_undo``.
FINGERPRINTS: dict[type, Fingerprint] = {Compensate: compensate_fingerprint}
DETAILS: dict[type, Detail] = {Compensate: no_detail}
HANDLERS: dict[type, Handler] = {
    CompensationScheduled: on_compensation_scheduled,
    RunCancelled: on_run_cancelled,
    RunTimedOut: on_run_timed_out,
}
