"""What the interpreter hands back: work to carry out, events to append, how the run ended."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

from ironflow.commands.classes import Command
from ironflow.history.errors import type_name
from ironflow.history.events import HistoryEvent


def _error_key(error: BaseException | None) -> tuple[str, str] | None:
    if error is None:
        return None
    return (type_name(getattr(type(error), "_ironflow_original", type(error))), str(error))


@attrs.frozen
class Work:
    """One thing the runtime must carry out for a run.

    ``kind`` is the command's kind (``"run"``, ``"sleep"``, ``"wait_event"``, ...), or
    ``"undo"`` for a compensation. ``due`` is when a timer fires, a retry is due, or a wait or
    invoke times out. ``detail`` holds what the runtime needs beyond the command: the wait's
    match value, the deterministic child run id or event id.
    """

    id: str
    kind: str
    attempt: int = 1
    due: _dt.datetime | None = None
    detail: dict[str, Any] = attrs.field(factory=dict)
    command: Command | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Decision:
    """The interpreter's answer to a history.

    ``commands`` is the new work to carry out and ``events`` the history events to append for
    it (they carry the next sequence numbers). ``pending`` is all outstanding work, new or not,
    so that a runtime rebuilding a cold run knows what to resume.
    """

    commands: tuple[Work, ...]
    events: tuple[HistoryEvent, ...]
    pending: tuple[Work, ...]
    done: bool
    status: str
    output: Any = None
    error: BaseException | None = attrs.field(default=None, eq=_error_key)
