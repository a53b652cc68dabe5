"""Recorded vs tentative decisions: the determinism check and the divergence diff.

What the code yields is *tentative* until the history records it. A recorded decision event
must match a tentative one: a ``CommandScheduled`` the slot of the same id, kind, name and
fingerprint, first in its scope's yield order; the other decision events (retries, undos,
patch markers, the run's end) the ``Other`` of the same key. A mismatch is a
``NonDeterminismError`` that shows the recorded and the current command side by side.
Whatever is still tentative when a batch ends becomes the new ``Decision``.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from ironflow.commands.classes import (
    Command,
    Compensate,
    Invoke,
    InvokeAsync,
    Map,
    Parallel,
    Publish,
    RunStep,
    WaitEvent,
)
from ironflow.errors import NonDeterminismError
from ironflow.history.codec import parse_timestamp
from ironflow.history.events import CommandScheduled
from ironflow.interpreter.decision import Work
from ironflow.interpreter.primitives.wait_for_event import match_value
from ironflow.interpreter.tasks import Handler, Slot

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter

# Kinds whose CommandScheduled records their own deadline (``detail["due"]``).
TIMED_KINDS = ("sleep", "sleep_until", "wait_event", "invoke")


class Other:
    """A tentative decision event other than a scheduled command."""

    __slots__ = ("event_cls", "fields", "order", "work")

    def __init__(
        self, order: int, event_cls: type, fields: dict[str, Any], work: Work | None
    ) -> None:
        self.order = order
        self.event_cls = event_cls
        self.fields = fields
        self.work = work


def _fn_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if type(name) is str else type(fn).__qualname__


def fingerprint(command: Command) -> str:
    """What, besides kind and name, must match between code and history."""
    if isinstance(command, RunStep | Compensate):
        return _fn_name(command.fn)
    if isinstance(command, WaitEvent | Publish):
        return command.event
    if isinstance(command, Invoke | InvokeAsync):
        return command.function
    if isinstance(command, Parallel):
        return f"{len(command.branches)} branches"
    if isinstance(command, Map):
        return f"{len(command.items)} items"
    return ""


def _iso(value: _dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def detail(interp: Interpreter, slot: Slot) -> dict[str, Any]:
    """``CommandScheduled.detail`` (and ``Work.detail``) of ``slot``, made once."""
    if slot.detail is not None:
        return slot.detail
    command = slot.command
    made: dict[str, Any] = {}
    # Only a timed command's own deadline; a retry's due changes and is in ``Work.due``.
    if slot.due is not None and slot.kind in TIMED_KINDS:
        made["due"] = _iso(slot.due)
    if isinstance(command, WaitEvent):
        made["event"] = command.event
        made["match"] = command.match
        made["match_value"] = match_value(interp, command)
    elif isinstance(command, Invoke | InvokeAsync):
        made["function"] = command.function
        made["data"] = command.data
        made["child_run_id"] = f"{interp.run_id}/{slot.id}"
    elif isinstance(command, Publish):
        made["event"] = command.event
        made["data"] = command.data
        made["event_id"] = f"{interp.run_id}/{slot.id}"
    elif isinstance(command, RunStep):
        policy = command.retry or interp.default_retry
        made["max_attempts"] = policy.max_attempts
        if command.timeout is not None:
            made["timeout"] = command.timeout.total_seconds()
    elif isinstance(command, Parallel | Map):
        made["concurrency"] = command.concurrency
        made["on_error"] = command.on_error
    slot.detail = made
    return made


def scheduled_event(interp: Interpreter, slot: Slot, seq: int) -> CommandScheduled:
    """The ``CommandScheduled`` that records the tentative ``slot`` at ``seq``."""
    prefix = slot.task.prefix
    return CommandScheduled(
        seq=seq,
        ts=slot.ts,
        id=slot.id,
        kind=slot.kind,
        name=slot.command.name,
        scope=prefix[:-1],
        fingerprint=fingerprint(slot.command),
        detail=detail(interp, slot),
    )


def work(interp: Interpreter, slot: Slot) -> Work:
    """What the runtime must carry out for ``slot`` now (kept while attempt and due hold)."""
    made = slot.work
    if made is None or made.attempt != slot.attempt or made.due != slot.due:
        made = Work(
            id=slot.id,
            kind=slot.kind,
            attempt=slot.attempt,
            due=slot.due,
            detail=detail(interp, slot),
            command=slot.command,
        )
        slot.work = made
    return made


def add_other(
    interp: Interpreter, key: tuple[Any, ...], cls: type, fields: dict[str, Any], work: Work | None
) -> None:
    """Decide a tentative ``cls`` event (``key`` matches it to the recorded one)."""
    interp._order += 1
    fields.setdefault("ts", interp.now)
    interp._tent_other[key] = Other(interp._order, cls, fields, work)


def match_other(interp: Interpreter, key: tuple[Any, ...], event: Any, what: str) -> Other:
    """The tentative decision that the recorded ``event`` (``what``, in errors) records."""
    other = interp._tent_other.pop(key, None)
    if other is None:
        raise NonDeterminismError(
            f"replay diverged from history at seq {event.seq}: recorded {what}, but the "
            f"code did not decide it now",
            recorded=type(event).__name__,
            current=None,
            position=event.seq,
        )
    return other


def on_command_scheduled(interp: Interpreter, event: CommandScheduled) -> None:
    tentative = interp._tent_cmds
    sid = event.id
    slot = tentative.get(sid)
    if slot is None:
        raise diverged(interp, event, None)
    unrecorded = slot.task.unrecorded
    if unrecorded[0] is not slot and not slot.task.abandoned:
        raise diverged(interp, event, unrecorded[0])
    command = slot.command
    if (
        event.kind != slot.kind
        or event.name != command.name
        or event.fingerprint != fingerprint(command)
    ):
        raise diverged(interp, event, slot)
    del tentative[sid]
    unrecorded.remove(slot)
    if slot.kind in TIMED_KINDS:
        due = event.detail.get("due")
        if due is not None:
            slot.due = parse_timestamp(due)


def diverged(
    interp: Interpreter, event: CommandScheduled, slot: Slot | None
) -> NonDeterminismError:
    """The error for a recorded command the code no longer yields there: both, side by side."""
    recorded = (
        f"{event.kind} {event.name!r} in scope {event.scope or '(root)'!r} "
        f"(fingerprint {event.fingerprint!r})"
    )
    if slot is None:
        for other in interp._tent_cmds.values():
            if other.task.prefix[:-1] == event.scope:
                slot = other
                break
    if slot is None:  # the same command moved to another scope?
        for other in interp._tent_cmds.values():
            if other.command.name == event.name and not other.task.abandoned:
                slot = other
                break
    if slot is None:
        current = "nothing: the code never reached this command"
        got = None
    else:
        got = (slot.kind, slot.command.name, slot.task.prefix[:-1], fingerprint(slot.command))
        current = (
            f"{slot.kind} {slot.command.name!r} in scope {got[2] or '(root)'!r} "
            f"(fingerprint {got[3]!r})"
        )
    return NonDeterminismError(
        f"replay diverged from history at seq {event.seq}:\n  recorded: {recorded}\n"
        f"  current:  {current}\nchanged workflow code must keep old runs' commands in "
        f"order; guard new code with ctx.patched()",
        recorded=(event.kind, event.name, event.scope, event.fingerprint),
        current=got,
        position=event.seq,
    )


HANDLERS: dict[type, Handler] = {CommandScheduled: on_command_scheduled}
