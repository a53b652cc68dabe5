"""Recorded vs tentative decisions: the determinism check and the divergence diff.

What the code yields is *tentative* until the history records it. A recorded decision event
must match a tentative one: a ``CommandScheduled`` the slot of the same id, kind, name and
fingerprint, first in its scope's yield order; the other decision events (retries, undos,
patch markers, the run's end) the ``Other`` of the same key. A mismatch is a
``NonDeterminismError`` that shows the recorded and the current command side by side.
Whatever is still tentative when a batch ends becomes the new ``Decision``.

What a command's ``CommandScheduled`` records besides its kind and name, its fingerprint and
its ``detail``, is said by the primitive module that schedules it (its ``FINGERPRINTS`` and
``DETAILS``, merged by ``core``); only the ``due`` of a timed kind is added here, for all.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ironflow.commands.kinds import TIMED
from ironflow.errors import NonDeterminismError
from ironflow.history.codec import parse_timestamp
from ironflow.history.events import CommandScheduled
from ironflow.interpreter.decision import Work
from ironflow.interpreter.tasks import Handler, Slot

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter

# What the primitive modules register per command type besides a scheduler: what its
# ``CommandScheduled`` records besides kind and name, the fingerprint (from the command) and
# the ``detail`` keys (added to ``made``, in the order they are stored).
Fingerprint = Callable[[Any], str]
Detail = Callable[["Interpreter", Slot, dict[str, Any]], None]

# What the keys of ``Interpreter._tent_other`` start with: one per kind of decision event
# other than a scheduled command. They match a recorded event to the tentative one and are
# never stored, so they are not kinds (``ironflow.commands.kinds``) and may change freely.
RETRY_KEY: Final = "retry"  # + step id, attempt: a RetryScheduled
UNDO_KEY: Final = "undo"  # + undo id: a CompensationScheduled
PATCH_KEY: Final = "patch"  # + change id: a PatchMarked
END_KEY: Final = ("end",)  # the whole key of the run's end, RunCompleted or RunFailed


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


def fn_name(fn: Any) -> str:
    """A step function's name as a fingerprint records it: its qualname."""
    name = getattr(fn, "__qualname__", None)
    return name if type(name) is str else type(fn).__qualname__


def no_fingerprint(command: Any) -> str:
    """The fingerprint of a command that has nothing to match but its kind and name."""
    return ""


def no_detail(interp: Interpreter, slot: Slot, made: dict[str, Any]) -> None:
    """The detail of a command with nothing to add (a sleep's ``due`` is added for all)."""


def fingerprint(interp: Interpreter, command: Any) -> str:
    """What, besides kind and name, must match between code and history."""
    return interp.fingerprints[type(command)](command)


def _iso(value: _dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def detail(interp: Interpreter, slot: Slot) -> dict[str, Any]:
    """``CommandScheduled.detail`` (and ``Work.detail``) of ``slot``, made once."""
    if slot.detail is not None:
        return slot.detail
    made: dict[str, Any] = {}
    # Only a timed command's own deadline; a retry's due changes and is in ``Work.due``.
    if slot.due is not None and slot.kind in TIMED:
        made["due"] = _iso(slot.due)
    interp.details[type(slot.command)](interp, slot, made)
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
        fingerprint=fingerprint(interp, slot.command),
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
        or event.fingerprint != fingerprint(interp, command)
    ):
        raise diverged(interp, event, slot)
    del tentative[sid]
    unrecorded.remove(slot)
    if slot.kind in TIMED:
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
        got = (
            slot.kind,
            slot.command.name,
            slot.task.prefix[:-1],
            fingerprint(interp, slot.command),
        )
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
