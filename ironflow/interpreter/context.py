"""``ctx``: what a workflow may ask about its run, all of it deterministic."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import uuid as _uuid
from typing import TYPE_CHECKING, Any

from ironflow.commands.event import Event

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter


class ReplayLog:
    """A logger that says nothing while the workflow is replaying recorded history.

    Its records carry ``run_id``, ``function_id`` and ``step_id``: the id of the step (or
    sleep, wait, child run...) whose outcome the logging code just received, ``None`` before
    the first one.
    """

    def __init__(self, ctx: Context, logger: logging.Logger) -> None:
        self._ctx = ctx
        self.logger = logger

    def _log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        # Checked first: a disabled level costs no replay check and no record.
        if not self.logger.isEnabledFor(level) or self._ctx.is_replaying:
            return
        ctx = self._ctx
        extra = {"run_id": ctx.run_id, "function_id": ctx.function_id, "step_id": ctx._step_id()}
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        kwargs.setdefault("stacklevel", 3)  # the record names the workflow's line, not ours
        self.logger.log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, *args, **kwargs)


class Context:
    """The workflow's view of its run: ``event``, ``run_id``, ``now()``, ``uuid()`` and more."""

    def __init__(self, interpreter: Interpreter, run_id: str, function_id: str, event: Event):
        self._interpreter = interpreter
        self.run_id = run_id
        self.function_id = function_id
        self.event = event
        self._events: tuple[Event, ...] | None = None  # a batched run's (batch_events)
        self._counter = 0
        self._log: ReplayLog | None = None

    @property
    def events(self) -> list[Event]:
        """The run's events: a batched run's batch (``batch_events``), in arrival order,
        ``event`` its first; for any other run, ``[event]``."""
        return list(self._events) if self._events is not None else [self.event]

    def now(self) -> _dt.datetime:
        """The time of the history event being processed: the same live and on replay."""
        now: _dt.datetime = self._interpreter.now
        return now

    def _digest(self) -> bytes:
        self._counter += 1
        return hashlib.sha256(f"{self.run_id}\x00{self._counter}".encode()).digest()

    def uuid(self) -> _uuid.UUID:
        """A version-4 UUID seeded from the run id and a per-run counter."""
        return _uuid.UUID(bytes=self._digest()[:16], version=4)

    def random(self) -> float:
        """A float in [0, 1) seeded from the run id and a per-run counter."""
        return (int.from_bytes(self._digest()[:8], "big") >> 11) / float(1 << 53)

    def patched(self, change_id: str) -> bool:
        """True where the new code path applies: new runs, and old runs past their history."""
        return self._interpreter.patched(change_id)

    def _step_id(self) -> str | None:
        """The id on the history event being folded: the one that resumed the code now running.

        Read off the interpreter's own state, so a replay and the live run agree; no clock and
        no engine involved.
        """
        interpreter = self._interpreter
        pos, events = interpreter._pos, interpreter.events
        if not 0 <= pos < len(events):
            return None
        step_id = getattr(events[pos], "id", None)
        return step_id if isinstance(step_id, str) else None

    @property
    def is_replaying(self) -> bool:
        """True while the code re-executes what history already records."""
        return self._interpreter.is_replaying

    @property
    def log(self) -> ReplayLog:
        """A logger (``ironflow.workflow.<function id>``) silent while replaying."""
        if self._log is None:
            logger = logging.getLogger(f"ironflow.workflow.{self.function_id}")
            self._log = ReplayLog(self, logger)
        return self._log

    def __repr__(self) -> str:
        return f"<Context run_id={self.run_id!r} function={self.function_id!r}>"
