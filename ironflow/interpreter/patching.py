"""``ctx.patched`` and ``ctx.is_replaying``: what the history records past the event folded.

Both must give the same answer live and on replay, so both look *ahead* in the history: the
code is replaying while decisions already recorded follow the event being folded, and a patch
applies where its ``PatchMarked`` is recorded or where the code is past its history. The
batch being fed is scanned once, and only if the workflow asks (most never do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironflow.history.events import (
    CommandScheduled,
    CompensationScheduled,
    PatchMarked,
    RetryScheduled,
    RunCompleted,
    RunFailed,
)
from ironflow.interpreter.determinism import PATCH_KEY, add_other
from ironflow.interpreter.tasks import Handler

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter

_DECISION_TYPES = (
    CommandScheduled,
    RetryScheduled,
    CompensationScheduled,
    PatchMarked,
    RunCompleted,
    RunFailed,
)


def look_ahead(interp: Interpreter) -> None:
    """Note the recorded decisions of the batch being folded (once, and only if asked)."""
    if interp._batch_scanned:
        return
    interp._batch_scanned = True
    for event in interp._batch:
        if isinstance(event, _DECISION_TYPES):
            interp._last_decision_seq = max(interp._last_decision_seq, event.seq)
            if isinstance(event, PatchMarked):
                interp._recorded_patches.add(event.change_id)


def is_replaying(interp: Interpreter) -> bool:
    """True while the event being folded is followed by decisions already recorded."""
    look_ahead(interp)
    return interp._pos < interp._last_decision_seq


def patched(interp: Interpreter, change_id: str) -> bool:
    """True where the new code path applies: new runs, and old runs past their history."""
    if type(change_id) is not str or not change_id.strip():
        raise ValueError(f"patch change id must be a non-empty string, got {change_id!r}")
    known = interp._patches.get(change_id)
    if known is not None:
        return known
    look_ahead(interp)
    value = change_id in interp._recorded_patches or not is_replaying(interp)
    if value:
        add_other(interp, (PATCH_KEY, change_id), PatchMarked, {"change_id": change_id}, None)
    interp._patches[change_id] = value
    return value


def on_patch_marked(interp: Interpreter, event: PatchMarked) -> None:
    # A marker the code no longer asks about is a deprecated patch: accepted.
    interp._tent_other.pop((PATCH_KEY, event.change_id), None)
    interp._patches[event.change_id] = True


HANDLERS: dict[type, Handler] = {PatchMarked: on_patch_marked}
