"""The pure interpreter: folds a run's history into the workflow's next commands.

No clock, no I/O, no threads: the same code and the same history give the same ``Decision``.
Fed events one batch at a time, it resumes the live generators it holds; ``replay`` feeds a
whole history to a fresh one. Both paths run the same code, so they decide alike.

How it works: the workflow's generators (the root and one per parallel/map branch) are
*tasks*. A task that yields a command gets a *slot* keyed by the command's id; events from the
runtime resolve slots and resume their tasks. What the code yields is *tentative* until the
history records it; recorded decision events are matched against the tentative ones (that is
the determinism check), and whatever is still tentative when a batch ends becomes the new
``Decision``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import hashlib
import inspect
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import attrs

import ironflow.commands.builders as step_namespace
from ironflow.commands.classes import (
    COMMAND_TYPES,
    UNSET,
    Command,
    Compensate,
    Invoke,
    InvokeAsync,
    Map,
    Parallel,
    Publish,
    RunStep,
    Sleep,
    SleepUntil,
    WaitEvent,
)
from ironflow.commands.event import MISSING, Event, lookup
from ironflow.commands.function import check_workflow_fn
from ironflow.commands.jsonvalue import NotJSONError, copy_json, public_error, to_json_value
from ironflow.commands.retry import DEFAULT_RETRY, RetryPolicy
from ironflow.errors import (
    CancelledError,
    DuplicateStepError,
    InvokeError,
    NonDeterminismError,
    StepError,
    WaitTimeoutError,
)
from ironflow.history.codec import converter, parse_timestamp
from ironflow.history.errors import RemoteError, decode_error, encode_error
from ironflow.history.events import (
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    CommandScheduled,
    CompensationScheduled,
    ErrorInfo,
    EventPublished,
    HistoryEvent,
    PatchMarked,
    RetryScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
)
from ironflow.interpreter.context import Context
from ironflow.interpreter.decision import Decision, Work

PENDING: Any = object()
_DECISION_TYPES = (
    CommandScheduled,
    RetryScheduled,
    CompensationScheduled,
    PatchMarked,
    RunCompleted,
    RunFailed,
)
_TIMED_KINDS = ("sleep", "sleep_until", "wait_event", "invoke")
# An undo registered by step.compensate('charge', ...) runs as the step 'compensate:charge'.
UNDO_PREFIX = "compensate:"
# What earlier runtimes recorded (as a ChildFailed) for an invoke whose timeout passed; such
# histories replay to the message their runs saw ("child run ... failed: TimeoutError: invoke
# timed out"). The runtime now records the whole message: see ``Interpreter.invoke_timeout``.
INVOKE_TIMEOUT = ErrorInfo("TimeoutError", "invoke timed out")


class _Task:
    """A running generator (or a branch that returned one command) and where it waits."""

    __slots__ = ("abandoned", "gen", "index", "parallel", "prefix", "unrecorded", "waiting")

    def __init__(
        self,
        gen: Generator[Any, Any, Any] | None,
        prefix: str,
        parallel: _ParallelState | None = None,
        index: int = 0,
    ) -> None:
        self.gen = gen
        self.prefix = prefix
        self.parallel = parallel
        self.index = index
        self.waiting: str | _ParallelState | None = None
        self.abandoned = False
        # Commands this task yielded that history does not record yet, in yield order: the
        # history must record them in this order (that is the per-scope order check).
        self.unrecorded: collections.deque[_Slot] = collections.deque()


class _Slot:
    """A command the workflow yielded: tentative until recorded, waiting until resolved."""

    # Class-level defaults keep creation cheap: most slots are steps that never need them.
    attempt = 1
    due: _dt.datetime | None = None
    detail: dict[str, Any] | None = None
    child_run_id: str | None = None
    work: Work | None = None

    def __init__(self, sid: str, task: _Task, command: Any, kind: str, order: int, ts: Any):
        self.id = sid
        self.task = task
        self.command = command
        self.kind = kind
        self.order = order
        self.ts = ts


class _Other:
    """A tentative decision event other than a scheduled command."""

    __slots__ = ("event_cls", "fields", "order", "work")

    def __init__(
        self, order: int, event_cls: type, fields: dict[str, Any], work: Work | None
    ) -> None:
        self.order = order
        self.event_cls = event_cls
        self.fields = fields
        self.work = work


class _ParallelState:
    """A ``parallel`` or ``map`` in progress: its branch window and results so far."""

    __slots__ = (
        "calls",
        "concurrency",
        "fail_fast",
        "finished",
        "id",
        "next",
        "prefix",
        "pumping",
        "results",
        "running",
        "settled",
        "sync",
        "sync_result",
        "task",
        "tasks",
    )

    def __init__(
        self,
        sid: str,
        task: _Task,
        calls: list[Callable[[], Any]],
        concurrency: int | None,
        fail_fast: bool,
    ) -> None:
        self.id = sid
        self.task = task
        self.prefix = sid + "/"
        self.calls = calls
        self.concurrency = concurrency
        self.fail_fast = fail_fast
        self.results: list[Any] = [None] * len(calls)
        self.tasks: list[_Task | None] = [None] * len(calls)
        self.next = 0
        self.running = 0
        self.finished = 0
        self.settled = False
        self.pumping = False
        self.sync = True
        self.sync_result: tuple[Any, BaseException | None] | None = None


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


def _describe(value: Any) -> str:
    """``value`` for an error message that replay must reproduce: no memory addresses."""
    if value is None or type(value) in (bool, int, float, str, list, tuple, dict):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    kind = type(value)
    name = getattr(value, "__qualname__", None)
    what = f"{kind.__qualname__} {name}" if isinstance(name, str) else kind.__qualname__
    return f"a {what} object"


def _iso(value: _dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _roll(run_id: str, sid: str, attempt: int) -> float:
    digest = hashlib.sha256(f"{run_id}\x00{sid}\x00{attempt}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


_combined: dict[type, Any] = {}


def _step_error_class(cls: type[BaseException]) -> Any:
    """A class that is both ``StepError`` and ``cls``, so either ``except`` catches it."""
    if cls in _combined:
        return _combined[cls]
    made: Any
    if issubclass(cls, StepError | RemoteError) or not issubclass(cls, Exception):
        made = None  # a RemoteError stands for a class not loaded here: plain StepError
    else:
        try:
            made = type(
                cls.__name__,
                (StepError, cls),
                {
                    "_ironflow_original": cls,
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                    "__init__": StepError.__init__,
                    "__str__": cls.__str__,
                },
            )
        except TypeError:  # incompatible layouts (e.g. OSError subclasses)
            made = None
    _combined[cls] = made
    return made


def _span(duration: _dt.timedelta) -> str:
    """``duration`` spelled as the builders take it: "1h", "1d2h", "1m30s", "0.5s"."""
    total = duration.total_seconds()
    if total != int(total):
        return f"{total:g}s"
    parts, rest = [], int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _invoke_timeout_tail(child_run_id: str) -> str:
    # The runtime does not cancel the child: it runs to its end, unheard.
    return f"; the child run {child_run_id!r} goes on"


def step_error(info: ErrorInfo, step_id: str, attempts: int) -> BaseException:
    """The exception a workflow receives for a step that failed for good."""
    original = decode_error(info)
    made = _step_error_class(type(original))
    error: BaseException
    if made is None:
        error = StepError(
            f"step {step_id!r} failed after {attempts} attempt(s): {info.type}: {info.message}",
            step_id=step_id,
            attempts=attempts,
        )
    else:
        combined: Any = made.__new__(made)
        combined.args = original.args
        combined.step_id = step_id
        combined.attempts = attempts
        error = combined
    error.__cause__ = original
    return error


_result_types: dict[Any, Any] = {}


def _result_type(fn: Callable[..., Any]) -> Any:
    """The attrs/dataclass type a step's results are structured into, or None."""
    try:
        return _result_types[fn]
    except (KeyError, TypeError):
        pass
    found: Any = None
    try:
        hint = inspect.signature(fn, eval_str=True).return_annotation
    except Exception:
        hint = inspect.Signature.empty
    if hint is not inspect.Signature.empty and _mentions_class(hint):
        found = hint
    with contextlib.suppress(TypeError):
        _result_types[fn] = found
    return found


def _mentions_class(hint: Any) -> bool:
    import dataclasses

    if isinstance(hint, type) and (attrs.has(hint) or dataclasses.is_dataclass(hint)):
        return True
    return any(_mentions_class(arg) for arg in getattr(hint, "__args__", ()) or ())


def _deliverable(fn: Callable[..., Any], value: Any) -> Any:
    """A step's stored result as the workflow receives it: a fresh copy, typed if annotated."""
    try:
        target = _result_types.get(fn, _result_types)
    except TypeError:
        target = _result_types
    if target is _result_types:
        target = _result_type(fn)
    if type(value) is dict or type(value) is list:
        value = copy_json(value)
    if target is None:
        return value
    return converter.structure(value, target)


class Interpreter:
    """Feed it history events; it answers with a ``Decision``.

    ``events_processed`` counts the events it has folded, so a caller can check that resuming
    a cached interpreter costs what the new events cost, not the whole history.
    """

    def __init__(self, flow: Any) -> None:
        check_workflow_fn(flow)
        self.flow = flow
        self.function_id = str(getattr(flow, "id", None) or getattr(flow, "__qualname__", "flow"))
        retry = getattr(flow, "retry", None)
        self.default_retry: RetryPolicy = retry if retry is not None else DEFAULT_RETRY
        self.events: list[HistoryEvent] = []
        self.events_processed = 0
        # What the history records, known a whole batch ahead: ``is_replaying`` and
        # ``patched`` must see the decisions that follow the event being folded.
        self._last_decision_seq = -1
        self._recorded_patches: set[str] = set()
        self._batch: list[Any] = []
        self._batch_scanned = True
        self._suspend_keys: set[tuple[str, int]] = set()
        # Waits and child runs that each RunResumed (by seq) waits for again with a fresh
        # timeout: applied again whenever that event is folded again.
        self._rearm: dict[int, set[str]] = {}
        self._unfailed: set[int] = set()  # RunResumed events already folded as such
        self._dead: set[int] = set()
        self._reset()

    def _reset(self) -> None:
        self.now: Any = None
        self.status = "pending"
        self.ctx: Context | None = None
        self.run_id = ""
        self._root: _Task | None = None
        self._waiting: dict[str, _Slot] = {}
        self._ids: set[str] = set()
        self._abandoned: set[str] = set()
        self._tent_cmds: dict[str, _Slot] = {}
        self._tent_other: dict[tuple[Any, ...], _Other] = {}
        self._order = 0
        self._undos: list[_Slot] = []
        self._failure: BaseException | None = None
        self._failed_at: int | None = None  # seq of the event whose folding failed the run
        # The error the last step failure, wait timeout or child failure handed the
        # workflow, with that event's seq; and whether the run failed of that very error.
        self._handed: tuple[BaseException, int] | None = None
        self._failed_of_handed = False
        self._output: Any = None
        self._ended = False
        self._suspended: list[_Slot] = []
        self._patches: dict[str, bool] = {}
        self._pos = -1

    # --- feeding -----------------------------------------------------------------------------

    def feed(self, events: Iterable[HistoryEvent]) -> Decision:
        """Fold ``events`` (the next ones of the history, in order) and decide."""
        self.record(events)
        return self._decide()

    def decide(self) -> Decision:
        """The decision for the history folded so far (what ``feed`` returns)."""
        return self._decide()

    def invoke_timeout(self, step_id: str, child_run_id: str) -> ErrorInfo:
        """The error a runtime records (as a ChildFailed) when the invoke ``step_id`` times out.

        The whole message is recorded, not rebuilt on replay, so that a history replays to the
        text its run saw whatever the code (or this wording) is by then.
        """
        slot = self._waiting.get(step_id)
        command = None if slot is None else slot.command
        timeout = getattr(command, "timeout", None)
        if command is None or timeout is None:  # not waiting: the input is dropped as stale
            return INVOKE_TIMEOUT
        return ErrorInfo(
            "TimeoutError",
            f"invoke {command.name!r} of {command.function!r} timed out after "
            f"{_span(timeout)}{_invoke_timeout_tail(child_run_id)}",
        )

    def record(self, events: Iterable[HistoryEvent]) -> None:
        """Fold ``events`` without deciding: for a runtime appending a decision's own events."""
        handlers = _HANDLERS
        history = self.events
        append = history.append
        tentative = self._tent_cmds
        waiting = self._waiting
        start = expected = len(history)
        result_types = _result_types
        dead = self._dead
        batch = events if type(events) is list else list(events)
        self._batch = batch
        self._batch_scanned = False
        event: Any
        for event in batch:
            seq = event.seq
            if seq != expected:
                raise ValueError(
                    f"history event {type(event).__name__} has seq {seq}, expected "
                    f"{expected}: a history is fed whole and in order"
                )
            expected += 1
            append(event)
            self._pos = seq
            kind = type(event)
            # Fast paths for the two events every step has; anything unusual takes the
            # general handler, which does the same with full checks and messages.
            if kind is CommandScheduled:
                sid = event.id
                slot = tentative.get(sid)
                if slot is not None and slot.kind == "run" and event.kind == "run":
                    command = slot.command
                    unrecorded = slot.task.unrecorded
                    if (
                        event.name == command.name
                        and unrecorded[0] is slot
                        and event.fingerprint == getattr(command.fn, "__qualname__", None)
                    ):
                        del tentative[sid]
                        unrecorded.popleft()
                        continue
            elif kind is StepCompleted:
                sid = event.id
                slot = waiting.get(sid)
                if (
                    slot is not None
                    and slot.kind == "run"
                    and slot.attempt == event.attempt
                    and sid not in tentative
                ):
                    del waiting[sid]
                    self.now = event.ts
                    task = slot.task
                    task.waiting = None
                    if not task.abandoned:
                        value = event.result
                        fn = slot.command.fn
                        try:
                            target = result_types.get(fn, result_types)
                        except TypeError:
                            target = result_types
                        if target is not None or type(value) is dict or type(value) is list:
                            value = _deliverable(fn, value)
                        if task.gen is None:
                            self._task_done(task, value, None)
                        else:
                            self._advance(task, value, None)
                    continue
            handler = handlers.get(kind)
            if handler is None:
                raise TypeError(f"not a history event: {event!r}")
            if dead and seq in dead:  # a failure a later resume took back (_taken_back)
                continue
            handler(self, event)
            if kind is RunResumed:  # resuming a failed run refolds into fresh state
                tentative = self._tent_cmds
                waiting = self._waiting
        self.events_processed += expected - start

    def _refeed(self) -> None:
        """Fold the stored history again from scratch (used when a failed run resumes)."""
        self._reset()
        handlers = _HANDLERS
        # What is folded again plus the rest of the batch being fed: the look-ahead of
        # ``patched``/``is_replaying`` and ``_taken_back`` must see the events after this one.
        self._batch = self.events + [e for e in self._batch if e.seq >= len(self.events)]
        self._batch_scanned = False
        for event in self.events:
            self._pos = event.seq
            if event.seq in self._dead:
                continue
            handlers[type(event)](self, event)
            self.events_processed += 1

    # --- what the context asks -----------------------------------------------------------------

    def _look_ahead(self) -> None:
        """Note the recorded decisions of the batch being folded (once, and only if asked)."""
        if self._batch_scanned:
            return
        self._batch_scanned = True
        for event in self._batch:
            if isinstance(event, _DECISION_TYPES):
                self._last_decision_seq = max(self._last_decision_seq, event.seq)
                if isinstance(event, PatchMarked):
                    self._recorded_patches.add(event.change_id)

    @property
    def is_replaying(self) -> bool:
        """True while the event being folded is followed by decisions already recorded."""
        self._look_ahead()
        return self._pos < self._last_decision_seq

    def patched(self, change_id: str) -> bool:
        if type(change_id) is not str or not change_id.strip():
            raise ValueError(f"patch change id must be a non-empty string, got {change_id!r}")
        known = self._patches.get(change_id)
        if known is not None:
            return known
        self._look_ahead()
        value = change_id in self._recorded_patches or not self.is_replaying
        if value:
            self._add_other(("patch", change_id), PatchMarked, {"change_id": change_id}, None)
        self._patches[change_id] = value
        return value

    # --- deciding ------------------------------------------------------------------------------

    def _decide(self) -> Decision:
        # A registered undo is recorded even if its task was abandoned in the same batch: it
        # still runs should the run fail, and its completion must name a recorded command.
        fresh: list[_Slot | _Other] = [
            slot
            for slot in self._tent_cmds.values()
            if not slot.task.abandoned or slot.kind == "compensate"
        ]
        fresh.extend(self._tent_other.values())
        fresh.sort(key=lambda item: item.order)
        seq = len(self.events)
        events: list[HistoryEvent] = []
        commands: list[Work] = []
        for item in fresh:
            if isinstance(item, _Slot):
                events.append(self._scheduled_event(item, seq))
                if item.kind not in ("parallel", "map", "compensate"):
                    commands.append(self._work(item))
            else:
                events.append(item.event_cls(seq=seq, **item.fields))
                if item.work is not None:
                    commands.append(item.work)
            seq += 1
        pending = tuple(
            self._work(slot)
            for slot in self._waiting.values()
            if slot.kind not in ("parallel", "map", "compensate")
        )
        failed = self.status == "failed" or (self._ended and self._failure is not None)
        return Decision(
            commands=tuple(commands),
            events=tuple(events),
            pending=pending,
            done=self._ended,
            status=self.status,
            output=self._output,
            error=self._failure if failed or self.status == "cancelled" else None,
        )

    def _detail(self, slot: _Slot) -> dict[str, Any]:
        if slot.detail is not None:
            return slot.detail
        command = slot.command
        detail: dict[str, Any] = {}
        # Only a timed command's own deadline; a retry's due changes and is in ``Work.due``.
        if slot.due is not None and slot.kind in _TIMED_KINDS:
            detail["due"] = _iso(slot.due)
        if isinstance(command, WaitEvent):
            detail["event"] = command.event
            detail["match"] = command.match
            detail["match_value"] = self._match_value(command)
        elif isinstance(command, Invoke | InvokeAsync):
            detail["function"] = command.function
            detail["data"] = command.data
            detail["child_run_id"] = f"{self.run_id}/{slot.id}"
        elif isinstance(command, Publish):
            detail["event"] = command.event
            detail["data"] = command.data
            detail["event_id"] = f"{self.run_id}/{slot.id}"
        elif isinstance(command, RunStep):
            policy = command.retry or self.default_retry
            detail["max_attempts"] = policy.max_attempts
            if command.timeout is not None:
                detail["timeout"] = command.timeout.total_seconds()
        elif isinstance(command, Parallel | Map):
            detail["concurrency"] = command.concurrency
            detail["on_error"] = command.on_error
        slot.detail = detail
        return detail

    def _scheduled_event(self, slot: _Slot, seq: int) -> CommandScheduled:
        prefix = slot.task.prefix
        return CommandScheduled(
            seq=seq,
            ts=slot.ts,
            id=slot.id,
            kind=slot.kind,
            name=slot.command.name,
            scope=prefix[:-1],
            fingerprint=fingerprint(slot.command),
            detail=self._detail(slot),
        )

    def _work(self, slot: _Slot) -> Work:
        work = slot.work
        if work is None or work.attempt != slot.attempt or work.due != slot.due:
            work = Work(
                id=slot.id,
                kind=slot.kind,
                attempt=slot.attempt,
                due=slot.due,
                detail=self._detail(slot),
                command=slot.command,
            )
            slot.work = work
        return work

    def _add_other(
        self, key: tuple[Any, ...], cls: type, fields: dict[str, Any], work: Work | None
    ) -> None:
        self._order += 1
        fields.setdefault("ts", self.now)
        self._tent_other[key] = _Other(self._order, cls, fields, work)

    # --- running the workflow's generators --------------------------------------------------

    def _advance(self, task: _Task, value: Any, error: BaseException | None) -> None:
        gen = task.gen
        assert gen is not None
        schedulers = _SCHEDULERS
        while True:
            try:
                command = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                self._task_done(task, stop.value, None)
                return
            except Exception as exc:
                self._task_done(task, None, exc)
                return
            if type(command) is RunStep:
                # The common case, inlined: a step in a fresh name waits for its result.
                sid = task.prefix + command.name
                ids = self._ids
                if sid not in ids:
                    ids.add(sid)
                    self._order += 1
                    slot = _Slot(sid, task, command, "run", self._order, self.now)
                    self._tent_cmds[sid] = slot
                    task.unrecorded.append(slot)
                    self._waiting[sid] = slot
                    task.waiting = sid
                    return
                outcome = self._schedule_run(task, command)
            else:
                scheduler = schedulers.get(type(command))
                if scheduler is None:
                    outcome = (None, self._not_a_command(command))
                else:
                    outcome = scheduler(self, task, command)
            if outcome is PENDING:
                return
            value, error = outcome

    def _resume(self, task: _Task, value: Any, error: BaseException | None) -> None:
        task.waiting = None
        if task.abandoned:
            return
        if task.gen is None:
            self._task_done(task, value, error)
        else:
            self._advance(task, value, error)

    def _not_a_command(self, value: Any) -> TypeError:
        hint = ""
        if inspect.isgenerator(value):
            hint = " (a generator: did you mean `yield from`, or to pass it to step.parallel?)"
        return TypeError(
            f"the workflow yielded {_describe(value)}{hint}; yield the commands that "
            f"ironflow.step builds, e.g. `result = yield step.run('name', fn)`"
        )

    def _claim(
        self, task: _Task, name: str, undo_of: str | None = None
    ) -> str | DuplicateStepError:
        """Take the id of ``name`` in ``task``'s scope (``undo_of``: the undo of that step)."""
        sid = task.prefix + name
        if sid in self._ids:
            return self._duplicate(task, name, undo_of)
        self._ids.add(sid)
        return sid

    def _duplicate(self, task: _Task, name: str, undo_of: str | None) -> DuplicateStepError:
        """The error for a second claim of ``name``'s id, saying whose id it is."""
        scope = task.prefix[:-1] or "the workflow"
        if name.startswith(UNDO_PREFIX):
            # An undo's id is 'compensate:<step name>', in the scope where it was registered:
            # a step a user named so takes the same id. Say which of the two came first.
            sid = task.prefix + name
            undo_first = any(slot.id == sid for slot in self._undos)
            step_name = name[len(UNDO_PREFIX) :]
            if undo_of is not None and undo_first:
                return DuplicateStepError(
                    f"step.compensate({undo_of!r}, ...) is called twice in {scope!r} (its "
                    f"undo runs as the step {name!r}): a step has one undo; register it once"
                )
            if undo_of is not None:
                return DuplicateStepError(
                    f"step.compensate({undo_of!r}, ...) runs its undo as the step {name!r}, "
                    f"but {scope!r} already has a step named {name!r}; rename that step: names "
                    f"starting with {UNDO_PREFIX!r} are the ids of undos"
                )
            if undo_first:
                return DuplicateStepError(
                    f"step name {name!r} is the id of the undo that step.compensate("
                    f"{step_name!r}, ...) registered in {scope!r}; rename the step: names "
                    f"starting with {UNDO_PREFIX!r} are the ids of undos"
                )
        return DuplicateStepError(
            f"step name {name!r} is used twice in {scope!r}: names must be unique within "
            f"a scope; put the index in the name (f'{name}-{{i}}') or use step.map"
        )

    def _slot(self, task: _Task, sid: str, command: Any, kind: str) -> _Slot:
        self._order += 1
        slot = _Slot(sid, task, command, kind, self._order, self.now)
        self._tent_cmds[sid] = slot
        task.unrecorded.append(slot)
        return slot

    def _wait_on(self, task: _Task, slot: _Slot) -> Any:
        self._waiting[slot.id] = slot
        task.waiting = slot.id
        return PENDING

    def _schedule_run(self, task: _Task, command: RunStep[Any]) -> Any:
        sid = task.prefix + command.name
        if sid in self._ids:
            return (None, self._claim(task, command.name))
        self._ids.add(sid)
        self._order += 1
        slot = _Slot(sid, task, command, "run", self._order, self.now)
        self._tent_cmds[sid] = slot
        task.unrecorded.append(slot)
        self._waiting[sid] = slot
        task.waiting = sid
        return PENDING

    def _schedule_sleep(self, task: _Task, command: Sleep) -> Any:
        sid = self._claim(task, command.name)
        if not isinstance(sid, str):
            return (None, sid)
        slot = self._slot(task, sid, command, "sleep")
        slot.due = self.now + command.duration
        return self._wait_on(task, slot)

    def _schedule_sleep_until(self, task: _Task, command: SleepUntil) -> Any:
        if command.when <= self.now:
            return (
                None,
                ValueError(
                    f"sleep_until {command.name!r} target {command.when.isoformat()} is not after "
                    f"the workflow's current time {self.now.isoformat()}"
                ),
            )
        sid = self._claim(task, command.name)
        if not isinstance(sid, str):
            return (None, sid)
        slot = self._slot(task, sid, command, "sleep_until")
        slot.due = command.when
        return self._wait_on(task, slot)

    def _match_value(self, command: WaitEvent) -> Any:
        if command.value is not UNSET:
            return command.value
        if command.match is None:
            return None
        assert self.ctx is not None
        return lookup(self.ctx.event, command.match)

    def _schedule_wait(self, task: _Task, command: WaitEvent) -> Any:
        if command.match is not None and self._match_value(command) is MISSING:
            return (
                None,
                ValueError(
                    f"wait {command.name!r}: the run's triggering event has no value at "
                    f"{command.match!r} to match on; pass value= to compare with a value of "
                    f"your own"
                ),
            )
        sid = self._claim(task, command.name)
        if not isinstance(sid, str):
            return (None, sid)
        slot = self._slot(task, sid, command, "wait_event")
        slot.due = self.now + command.timeout
        return self._wait_on(task, slot)

    def _schedule_child(self, task: _Task, command: Invoke | InvokeAsync) -> Any:
        sid = self._claim(task, command.name)
        if not isinstance(sid, str):
            return (None, sid)
        slot = self._slot(task, sid, command, command.kind)
        if isinstance(command, Invoke) and command.timeout is not None:
            slot.due = self.now + command.timeout
        return self._wait_on(task, slot)

    def _schedule_publish(self, task: _Task, command: Publish) -> Any:
        sid = self._claim(task, command.name)
        if not isinstance(sid, str):
            return (None, sid)
        return self._wait_on(task, self._slot(task, sid, command, "publish"))

    def _schedule_compensate(self, task: _Task, command: Compensate) -> Any:
        sid = self._claim(task, UNDO_PREFIX + command.name, undo_of=command.name)
        if not isinstance(sid, str):
            return (None, sid)
        self._undos.append(self._slot(task, sid, command, "compensate"))
        return (None, None)

    def _schedule_parallel(self, task: _Task, command: Parallel | Map) -> Any:
        sid = self._claim(task, command.name)
        if not isinstance(sid, str):
            return (None, sid)
        self._slot(task, sid, command, command.kind)
        calls: list[Callable[[], Any]]
        if isinstance(command, Parallel):
            calls = [_bind_branch(branch) for branch in command.branches]
        else:
            calls = [_bind_item(command.fn, item, i) for i, item in enumerate(command.items)]
        state = _ParallelState(
            sid, task, calls, command.concurrency, command.on_error == "fail_fast"
        )
        task.waiting = state
        self._pump(state)
        state.sync = False
        if state.sync_result is not None:
            return state.sync_result
        return PENDING

    # --- parallel branches ---------------------------------------------------------------------

    def _pump(self, state: _ParallelState) -> None:
        if state.pumping:
            return
        state.pumping = True
        total = len(state.calls)
        while (
            not state.settled
            and state.next < total
            and (state.concurrency is None or state.running < state.concurrency)
        ):
            index = state.next
            state.next += 1
            state.running += 1
            self._start_branch(state, index)
        state.pumping = False
        if not state.settled and state.finished == total:
            state.settled = True
            self._parallel_resolved(state, state.results, None)

    def _start_branch(self, state: _ParallelState, index: int) -> None:
        task = _Task(None, f"{state.prefix}{index}/", state, index)
        state.tasks[index] = task
        try:
            out = state.calls[index]()
        except Exception as exc:
            self._task_done(task, None, exc)
            return
        if inspect.isgenerator(out):
            task.gen = out
            self._advance(task, None, None)
        elif isinstance(out, COMMAND_TYPES):
            outcome = _SCHEDULERS[type(out)](self, task, out)
            if outcome is not PENDING:
                self._task_done(task, *outcome)
        else:
            self._task_done(
                task,
                None,
                TypeError(
                    f"branch {index} of {state.id!r} returned {_describe(out)}; a branch returns a "
                    f"command (`s.run(...)`) or a generator"
                ),
            )

    def _task_done(self, task: _Task, value: Any, error: BaseException | None) -> None:
        if task.abandoned:
            return
        task.waiting = None
        if task is self._root:
            self._root_done(value, error)
            return
        state = task.parallel
        assert state is not None
        if state.settled:
            return
        state.running -= 1
        state.finished += 1
        if error is not None:
            if state.fail_fast:
                state.settled = True
                self._abandon_state(state)
                self._parallel_resolved(state, None, error)
                return
            state.results[task.index] = error
        else:
            state.results[task.index] = value
        self._pump(state)

    def _parallel_resolved(
        self, state: _ParallelState, value: Any, error: BaseException | None
    ) -> None:
        if state.sync:
            state.sync_result = (value, error)
        else:
            self._resume(state.task, value, error)

    def _abandon_state(self, state: _ParallelState) -> None:
        state.settled = True
        for task in state.tasks:
            if task is not None and not task.abandoned:
                self._abandon_task(task)

    def _abandon_task(self, task: _Task) -> None:
        task.abandoned = True
        waiting = task.waiting
        if isinstance(waiting, str):
            if self._waiting.pop(waiting, None) is not None:
                self._abandoned.add(waiting)
        elif isinstance(waiting, _ParallelState):
            self._abandon_state(waiting)

    # --- ending the run -----------------------------------------------------------------------

    def _root_done(self, value: Any, error: BaseException | None) -> None:
        if error is None:
            try:
                output = to_json_value(value, "the workflow's return value")
            except NotJSONError as exc:
                error = public_error(exc)
            else:
                self.status = "completed"
                self._output = output
                self._ended = True
                self._add_other(("end",), RunCompleted, {"output": output}, None)
                return
        self._fail(error)

    def _abandon_all(self) -> None:
        if self._root is not None:
            self._root.abandoned = True
        for sid, slot in self._waiting.items():
            slot.task.abandoned = True
            self._abandoned.add(sid)
        self._waiting.clear()

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._failed_at = self._pos
        handed = self._handed
        self._failed_of_handed = (
            handed is not None and handed[0] is error and handed[1] == self._pos
        )
        self._abandon_all()
        if self._undos:
            self.status = "compensating"
            self._next_undo()
        else:
            self._end_failed()

    def _next_undo(self) -> None:
        registration = self._undos.pop()
        command = registration.command
        slot = _Slot(registration.id, registration.task, command, "undo", 0, self.now)
        slot.detail = {"for_step": command.name}
        self._waiting[slot.id] = slot
        self._abandoned.discard(slot.id)
        self._add_other(
            ("undo", slot.id),
            CompensationScheduled,
            {"id": slot.id, "for_step": command.name},
            self._work(slot),
        )

    def _undo_finished(self) -> None:
        if self._undos:
            self._next_undo()
        elif self.status == "cancelling":
            self.status = "cancelled"
            self._ended = True
        else:
            self._end_failed()

    def _end_failed(self) -> None:
        assert self._failure is not None
        self.status = "failed"
        self._ended = True
        info = encode_error(self._failure, with_traceback=True)
        self._add_other(("end",), RunFailed, {"error": info}, None)

    # --- runtime events ------------------------------------------------------------------------

    def _on_run_started(self, event: RunStarted) -> None:
        if self.status != "pending":
            raise ValueError(f"RunStarted at seq {event.seq}: a run starts once, at seq 0")
        self.now = event.ts
        self.run_id = event.run_id
        self.status = "running"
        self.ctx = Context(self, event.run_id, event.function_id, event.event)
        self.ctx._events = event.events
        self._root = _Task(self.flow(self.ctx), "")
        self._advance(self._root, None, None)

    def _take(self, event: Any, kinds: tuple[str, ...]) -> _Slot | None:
        """The waiting slot ``event`` resolves; None if it belongs to abandoned work."""
        sid = event.id
        slot = self._waiting.get(sid)
        if slot is None or sid in self._tent_cmds:
            if sid in self._abandoned:
                return None
            raise self._unknown(event)
        if slot.kind not in kinds:
            raise NonDeterminismError(
                f"history event {type(event).__name__} (seq {event.seq}) resolves {sid!r}, "
                f"but the code yielded a {slot.kind!r} command there",
                recorded=type(event).__name__,
                current=slot.kind,
                position=event.seq,
            )
        return slot

    def _unknown(self, event: Any) -> NonDeterminismError:
        sid = event.id
        if sid in self._tent_cmds:
            why = "before the history records that it was scheduled"
        elif sid in self._ids:
            why = "which is no longer waiting (a second completion?)"
        else:
            why = "which the code never yielded"
        return NonDeterminismError(
            f"history event {type(event).__name__} (seq {event.seq}) is for step {sid!r}, {why}",
            recorded=sid,
            current=None,
            position=event.seq,
        )

    def _take_step(self, event: StepCompleted | StepFailed) -> _Slot | None:
        """The step (or undo) slot an outcome resolves; it must be for the attempt due."""
        self.now = event.ts
        slot = self._take(event, ("run", "undo"))
        if slot is not None and event.attempt != slot.attempt:
            raise NonDeterminismError(
                f"{type(event).__name__} (seq {event.seq}) for {slot.id!r} is attempt "
                f"{event.attempt}, but attempt {slot.attempt} is the one due",
                position=event.seq,
            )
        return slot

    def _on_step_completed(self, event: StepCompleted) -> None:
        slot = self._take_step(event)
        if slot is None:
            return
        del self._waiting[slot.id]
        if slot.kind == "undo":
            self._undo_finished()
            return
        self._resume(slot.task, _deliverable(slot.command.fn, event.result), None)

    def _on_step_failed(self, event: StepFailed) -> None:
        slot = self._take_step(event)
        if slot is None:
            return
        if slot.kind == "undo":
            del self._waiting[slot.id]
            self._undo_finished()
            return
        if (slot.id, event.attempt) in self._suspend_keys:
            self._suspended.append(slot)
            return
        policy = slot.command.retry or self.default_retry
        if event.retryable and event.attempt < policy.max_attempts:
            roll = _roll(self.run_id, slot.id, event.attempt) if policy.jitter else 0.0
            delay = policy.delay_seconds(event.attempt, roll)
            base = policy.delay_seconds(event.attempt, 0.0)
            slot.attempt = event.attempt + 1
            slot.due = event.ts + _dt.timedelta(seconds=delay)
            self._add_other(
                ("retry", slot.id, slot.attempt),
                RetryScheduled,
                {"id": slot.id, "attempt": slot.attempt, "at": slot.due, "jitter": delay - base},
                self._work(slot),
            )
            return
        del self._waiting[slot.id]
        error = step_error(event.error, slot.id, event.attempt)
        self._handed = (error, event.seq)
        self._resume(slot.task, None, error)

    def _on_timer_fired(self, event: TimerFired) -> None:
        self.now = event.ts
        slot = self._take(event, ("sleep", "sleep_until"))
        if slot is not None:
            del self._waiting[slot.id]
            self._resume(slot.task, None, None)

    def _on_wait_matched(self, event: WaitMatched) -> None:
        self.now = event.ts
        slot = self._take(event, ("wait_event",))
        if slot is not None:
            del self._waiting[slot.id]
            got = event.event
            self._resume(slot.task, Event(got.id, got.name, copy_json(got.data), got.ts), None)

    def _on_wait_timed_out(self, event: WaitTimedOut) -> None:
        self.now = event.ts
        slot = self._take(event, ("wait_event",))
        if slot is not None:
            del self._waiting[slot.id]
            error = WaitTimeoutError()
            self._handed = (error, event.seq)
            self._resume(slot.task, None, error)

    def _on_child_started(self, event: ChildStarted) -> None:
        self.now = event.ts
        slot = self._take(event, ("invoke", "invoke_async"))
        if slot is None:
            return
        slot.child_run_id = event.child_run_id
        if slot.kind == "invoke_async":
            del self._waiting[slot.id]
            self._resume(slot.task, event.child_run_id, None)

    def _on_child_completed(self, event: ChildCompleted) -> None:
        self.now = event.ts
        slot = self._take(event, ("invoke",))
        if slot is not None:
            del self._waiting[slot.id]
            self._resume(slot.task, copy_json(event.output), None)

    def _on_child_failed(self, event: ChildFailed) -> None:
        self.now = event.ts
        # An invoke_async fails too when its child cannot be started (an unknown function).
        slot = self._take(event, ("invoke", "invoke_async"))
        if slot is None:
            return
        del self._waiting[slot.id]
        info = event.error
        command = slot.command
        if info.type == "TimeoutError" and info.message.endswith(
            _invoke_timeout_tail(event.child_run_id)
        ):
            # Recorded by the runtime when the timeout passed (``invoke_timeout``): said as
            # recorded. A history with the older INVOKE_TIMEOUT replays to the older text below.
            message = info.message
        else:
            message = (
                f"child run {event.child_run_id!r} of {command.function!r} failed: "
                f"{info.type}: {info.message}"
            )
        error = InvokeError(message, function_id=command.function, child_run_id=event.child_run_id)
        error.__cause__ = decode_error(info)
        self._handed = (error, event.seq)
        self._resume(slot.task, None, error)

    def _on_event_published(self, event: EventPublished) -> None:
        self.now = event.ts
        slot = self._take(event, ("publish",))
        if slot is not None:
            del self._waiting[slot.id]
            self._resume(slot.task, event.event_id, None)

    def _on_run_cancelled(self, event: RunCancelled) -> None:
        self.now = event.ts
        if self._ended:
            return
        self._failure = CancelledError(event.reason or "the run was cancelled")
        self._abandon_all()
        if event.compensate and self._undos:
            self.status = "cancelling"
            self._next_undo()
        else:
            self.status = "cancelled"
            self._ended = True

    def _on_run_resumed(self, event: RunResumed) -> None:
        self.now = event.ts
        if (
            self.status == "failed"
            and self._failed_at is not None
            and event.seq not in self._unfailed
        ):
            self._unfailed.add(event.seq)
            self._unfail(self._failed_at, event.seq)
            # Folds this event again: on a run that got past its failure, or on one that
            # failed again the same way (its code raised again), which then ends failed.
            self._refeed()
            return
        if self._ended:  # failed again while folding again (its code raised again)
            self._suspended.clear()
            return
        for slot in self._suspended:
            slot.attempt += 1
            slot.due = event.ts
            self._add_other(
                ("retry", slot.id, slot.attempt),
                RetryScheduled,
                {"id": slot.id, "attempt": slot.attempt, "at": event.ts, "jitter": 0.0},
                self._work(slot),
            )
        self._suspended.clear()
        for sid in sorted(self._rearm.get(event.seq, ())):
            again = self._waiting.get(sid)
            if again is None:
                continue
            timeout = getattr(again.command, "timeout", None)
            again.due = None if timeout is None else event.ts + timeout

    def _unfail(self, failed_at: int, resumed_at: int) -> None:
        """Mark what made the run fail so that folding the history again gets past it.

        If the run failed of the very error an event handed the workflow, that event is
        taken up again: a step whose attempts ran out is retried; a wait that timed out, or a
        child run that failed or timed out, is waited for again with a fresh timeout (the
        runtime hands over the child's outcome if it has ended since). So are failures that
        arrived afterwards for work the failure abandoned. Otherwise (the workflow caught
        that error and raised its own, or its code raised) the history is folded again by
        the code as it is now. What the failure itself led to (undos, the RunFailed) no
        longer counts.
        """
        later = self.events[failed_at + 1 : resumed_at]
        undo_ids = {e.id for e in later if isinstance(e, CompensationScheduled)}
        # Failures that arrived for work the failure had abandoned (a sibling branch's wait
        # timing out in the same batch, say) were never handled: they are taken up too.
        taken: list[HistoryEvent] = [
            e
            for e in later
            if isinstance(e, StepFailed | WaitTimedOut | ChildFailed)
            and e.seq not in self._dead
            and e.id not in undo_ids
        ]
        if self._failed_of_handed:
            taken.append(self.events[failed_at])
        for cause in taken:
            if isinstance(cause, StepFailed):
                self._suspend_keys.add((cause.id, cause.attempt))
            elif isinstance(cause, WaitTimedOut | ChildFailed):
                self._dead.add(cause.seq)
                self._rearm.setdefault(resumed_at, set()).add(cause.id)
        self._bury(later)

    def _bury(self, events: list[HistoryEvent]) -> None:
        """Mark dead, among ``events``, what a failure led to: its undos and its RunFailed."""
        undo_ids: set[str] = set()
        for event in events:
            if isinstance(event, CompensationScheduled):
                undo_ids.add(event.id)
                self._dead.add(event.seq)
            elif isinstance(event, RunFailed) or (
                isinstance(event, StepCompleted | StepFailed) and event.id in undo_ids
            ):
                self._dead.add(event.seq)

    # --- recorded decisions ---------------------------------------------------------------------

    def _on_command_scheduled(self, event: CommandScheduled) -> None:
        tentative = self._tent_cmds
        sid = event.id
        slot = tentative.get(sid)
        if slot is None:
            raise self._diverged(event, None)
        unrecorded = slot.task.unrecorded
        if unrecorded[0] is not slot and not slot.task.abandoned:
            raise self._diverged(event, unrecorded[0])
        command = slot.command
        if (
            event.kind != slot.kind
            or event.name != command.name
            or event.fingerprint != fingerprint(command)
        ):
            raise self._diverged(event, slot)
        del tentative[sid]
        unrecorded.remove(slot)
        if slot.kind in _TIMED_KINDS:
            due = event.detail.get("due")
            if due is not None:
                slot.due = parse_timestamp(due)

    def _diverged(self, event: CommandScheduled, slot: _Slot | None) -> NonDeterminismError:
        recorded = (
            f"{event.kind} {event.name!r} in scope {event.scope or '(root)'!r} "
            f"(fingerprint {event.fingerprint!r})"
        )
        if slot is None:
            for other in self._tent_cmds.values():
                if other.task.prefix[:-1] == event.scope:
                    slot = other
                    break
        if slot is None:  # the same command moved to another scope?
            for other in self._tent_cmds.values():
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

    def _taken_back(self, seq: int) -> bool:
        """Whether the failure recorded at ``seq`` was taken back by a later resume.

        Code fixed after a run failed does not fail where the old code did: its undos and
        RunFailed are then skipped, up to the RunResumed that follows them in the history
        being folded. Only the failure's own events are skipped; anything else the code no
        longer decides is still a divergence. The resume must be in the same feed as the
        failure (a runtime rebuilding a run folds its stored history whole).
        """
        events = self._batch
        if not events or events[-1].seq <= seq:
            return False
        first = events[0].seq
        resumed = next((e.seq for e in events[seq - first + 1 :] if type(e) is RunResumed), None)
        if resumed is None:
            return False
        self._bury(events[seq - first : resumed - first])
        return True

    def _match_other(self, key: tuple[Any, ...], event: Any, what: str) -> _Other:
        other = self._tent_other.pop(key, None)
        if other is None:
            raise NonDeterminismError(
                f"replay diverged from history at seq {event.seq}: recorded {what}, but the "
                f"code did not decide it now",
                recorded=type(event).__name__,
                current=None,
                position=event.seq,
            )
        return other

    def _on_retry_scheduled(self, event: RetryScheduled) -> None:
        self._match_other(
            ("retry", event.id, event.attempt), event, f"retry {event.attempt} of {event.id!r}"
        )
        slot = self._waiting.get(event.id)
        if slot is not None:
            slot.due = parse_timestamp(event.at)

    def _on_compensation_scheduled(self, event: CompensationScheduled) -> None:
        if ("undo", event.id) not in self._tent_other and self._taken_back(event.seq):
            return
        self._match_other(("undo", event.id), event, f"compensation {event.id!r}")

    def _on_patch_marked(self, event: PatchMarked) -> None:
        # A marker the code no longer asks about is a deprecated patch: accepted.
        self._tent_other.pop(("patch", event.change_id), None)
        self._patches[event.change_id] = True

    def _on_run_ended(self, event: RunCompleted | RunFailed) -> None:
        recorded = type(event).__name__
        if isinstance(event, RunFailed):
            ended = self._tent_other.get(("end",))
            if (ended is None or ended.event_cls is not RunFailed) and self._taken_back(event.seq):
                return
        other = self._match_other(("end",), event, f"the run's end ({recorded})")
        if other.event_cls is not type(event):
            raise NonDeterminismError(
                f"replay diverged from history at seq {event.seq}: recorded {recorded}, but "
                f"the code now ends with {other.event_cls.__name__}",
                recorded=recorded,
                current=other.event_cls.__name__,
                position=event.seq,
            )


# Dispatch tables, built once: an interpreter per run must be cheap to create.
_HANDLERS: dict[type, Callable[[Interpreter, Any], None]] = {
    RunStarted: Interpreter._on_run_started,
    CommandScheduled: Interpreter._on_command_scheduled,
    StepCompleted: Interpreter._on_step_completed,
    StepFailed: Interpreter._on_step_failed,
    TimerFired: Interpreter._on_timer_fired,
    WaitMatched: Interpreter._on_wait_matched,
    WaitTimedOut: Interpreter._on_wait_timed_out,
    ChildStarted: Interpreter._on_child_started,
    ChildCompleted: Interpreter._on_child_completed,
    ChildFailed: Interpreter._on_child_failed,
    EventPublished: Interpreter._on_event_published,
    RunCancelled: Interpreter._on_run_cancelled,
    RunResumed: Interpreter._on_run_resumed,
    RetryScheduled: Interpreter._on_retry_scheduled,
    CompensationScheduled: Interpreter._on_compensation_scheduled,
    PatchMarked: Interpreter._on_patch_marked,
    RunCompleted: Interpreter._on_run_ended,
    RunFailed: Interpreter._on_run_ended,
}
_SCHEDULERS: dict[type, Callable[[Interpreter, _Task, Any], Any]] = {
    RunStep: Interpreter._schedule_run,
    Sleep: Interpreter._schedule_sleep,
    SleepUntil: Interpreter._schedule_sleep_until,
    WaitEvent: Interpreter._schedule_wait,
    Invoke: Interpreter._schedule_child,
    InvokeAsync: Interpreter._schedule_child,
    Publish: Interpreter._schedule_publish,
    Compensate: Interpreter._schedule_compensate,
    Parallel: Interpreter._schedule_parallel,
    Map: Interpreter._schedule_parallel,
}


def _bind_branch(branch: Callable[[Any], Any]) -> Callable[[], Any]:
    return lambda: branch(step_namespace)


def _bind_item(fn: Callable[..., Any], item: Any, index: int) -> Callable[[], Any]:
    return lambda: fn(item, step_namespace, index)


def replay(flow: Any, history: Iterable[HistoryEvent]) -> Decision:
    """Fold a whole ``history`` with a fresh interpreter: a pure function of its inputs."""
    return Interpreter(flow).feed(history)


def check_replayable(flow: Any, history: Sequence[HistoryEvent], origin: str) -> None:
    """Fail with ``ValueError`` unless ``history`` is a whole run's history of ``flow``.

    For the golden-history checks (``ironflow.testing.replay``, ``ironflow replay``): an empty
    history, or one of another function, would otherwise "replay" as a run that never began.
    A plain generator function has no id, so any function's history may be replayed with it.
    """
    if not history:
        raise ValueError(
            f"{origin} is empty: a history starts with a RunStarted event "
            f"(write one with `ironflow runs export RUN_ID`)"
        )
    first = history[0]
    if not isinstance(first, RunStarted):
        raise ValueError(
            f"{origin}: a history starts with a RunStarted event, not {type(first).__name__}"
        )
    current = getattr(flow, "id", None)
    if isinstance(current, str) and current != first.function_id:
        raise ValueError(
            f"{origin} is a run of function {first.function_id!r}, not of {current!r}: the "
            f"functions differ; replay it with the function {first.function_id!r}"
        )
