"""``step.run``: execute a step once and memoize its result (docs/primitives/run.md).

| yields           | ``RunStep`` (kind ``"run"``)                                          |
|------------------|-----------------------------------------------------------------------|
| records          | ``CommandScheduled`` (fingerprint: the function's qualname; detail:   |
|                  | ``max_attempts``, ``timeout``); a ``RetryScheduled`` per retry        |
| runtime answers  | ``StepCompleted`` or ``StepFailed`` for the attempt due               |
| workflow receives| the result (a fresh copy, typed by the return annotation), or, once   |
|                  | the attempts run out, a ``StepError`` that is also the original class |

    yielded --CommandScheduled--> waiting --StepCompleted--> resumed with the result
    waiting --StepFailed (retryable, attempts left)--> RetryScheduled --> waiting (attempt+1)
    waiting --StepFailed (final)--> resumed with StepError

The common path (a fresh ``RunStep``, its ``CommandScheduled`` and ``StepCompleted``) is
inlined in ``core``; the functions here are the general path with full checks. Undos run as
steps too: their outcomes arrive here and go on to ``compensate``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.commands.classes import RunStep
from ironflow.errors import NonDeterminismError
from ironflow.history.codec import parse_timestamp
from ironflow.history.events import RetryScheduled, StepCompleted, StepFailed
from ironflow.interpreter.determinism import (
    RETRY_KEY,
    Detail,
    Fingerprint,
    add_other,
    fn_name,
    match_other,
    work,
)
from ironflow.interpreter.primitives.compensate import undo_finished
from ironflow.interpreter.tasks import (
    PENDING,
    Handler,
    Scheduler,
    Slot,
    Task,
    claim,
    take,
)
from ironflow.interpreter.values import deliverable, step_error

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


def _roll(run_id: str, sid: str, attempt: int) -> float:
    """The jitter roll of a retry: a pure function of the run, the step and the attempt."""
    digest = hashlib.sha256(f"{run_id}\x00{sid}\x00{attempt}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def schedule_run(interp: Interpreter, task: Task, command: RunStep[Any]) -> Any:
    sid = task.prefix + command.name
    if sid in interp._ids:
        return (None, claim(interp, task, command.name))
    interp._ids.add(sid)
    interp._order += 1
    slot = Slot(sid, task, command, kinds.RUN, interp._order, interp.now)
    interp._tent_cmds[sid] = slot
    task.unrecorded.append(slot)
    interp._waiting[sid] = slot
    task.waiting = sid
    return PENDING


def run_detail(interp: Interpreter, slot: Slot, made: dict[str, Any]) -> None:
    command = slot.command
    policy = command.retry or interp.default_retry
    made["max_attempts"] = policy.max_attempts
    if command.timeout is not None:
        made["timeout"] = command.timeout.total_seconds()


def run_fingerprint(command: RunStep[Any]) -> str:
    return fn_name(command.fn)


def take_step(interp: Interpreter, event: StepCompleted | StepFailed) -> Slot | None:
    """The step (or undo) slot an outcome resolves; it must be for the attempt due."""
    interp.now = event.ts
    slot = take(interp, event, kinds.STEPS)
    if slot is not None and event.attempt != slot.attempt:
        raise NonDeterminismError(
            f"{type(event).__name__} (seq {event.seq}) for {slot.id!r} is attempt "
            f"{event.attempt}, but attempt {slot.attempt} is the one due",
            position=event.seq,
        )
    return slot


def on_step_completed(interp: Interpreter, event: StepCompleted) -> None:
    slot = take_step(interp, event)
    if slot is None:
        return
    del interp._waiting[slot.id]
    if slot.kind == kinds.UNDO:
        undo_finished(interp)
        return
    interp._resume(slot.task, deliverable(slot.command.fn, event.result), None)


def on_step_failed(interp: Interpreter, event: StepFailed) -> None:
    slot = take_step(interp, event)
    if slot is None:
        return
    if slot.kind == kinds.UNDO:
        del interp._waiting[slot.id]
        undo_finished(interp)
        return
    resumed = interp._resumed
    if resumed is not None and (slot.id, event.attempt) in resumed.suspend_keys:
        resumed.suspended.append(slot)  # the RunResumed that follows retries it
        return
    policy = slot.command.retry or interp.default_retry
    if event.retryable and event.attempt < policy.max_attempts:
        roll = _roll(interp.run_id, slot.id, event.attempt) if policy.jitter else 0.0
        delay = policy.delay_seconds(event.attempt, roll)
        base = policy.delay_seconds(event.attempt, 0.0)
        slot.attempt = event.attempt + 1
        slot.due = event.ts + _dt.timedelta(seconds=delay)
        add_other(
            interp,
            (RETRY_KEY, slot.id, slot.attempt),
            RetryScheduled,
            {"id": slot.id, "attempt": slot.attempt, "at": slot.due, "jitter": delay - base},
            work(interp, slot),
        )
        return
    del interp._waiting[slot.id]
    error = step_error(event.error, slot.id, event.attempt)
    interp._handed = (error, event.seq)
    interp._resume(slot.task, None, error)


def on_retry_scheduled(interp: Interpreter, event: RetryScheduled) -> None:
    match_other(
        interp,
        (RETRY_KEY, event.id, event.attempt),
        event,
        f"retry {event.attempt} of {event.id!r}",
    )
    slot = interp._waiting.get(event.id)
    if slot is not None:
        slot.due = parse_timestamp(event.at)


SCHEDULERS: dict[type, Scheduler] = {RunStep: schedule_run}
FINGERPRINTS: dict[type, Fingerprint] = {RunStep: run_fingerprint}
DETAILS: dict[type, Detail] = {RunStep: run_detail}
HANDLERS: dict[type, Handler] = {
    StepCompleted: on_step_completed,
    StepFailed: on_step_failed,
    RetryScheduled: on_retry_scheduled,
}
