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

This module holds what every event and command passes through: the fold loop (``record``,
with the two events every step has inlined), a task's generator loop (``_advance``, with
``RunStep`` inlined) and ``_decide``. What each primitive does is in ``primitives/``, one
module per docs page; each registers its ``SCHEDULERS`` and ``HANDLERS``, and per command
type what its ``CommandScheduled`` records (``FINGERPRINTS``, ``DETAILS``), merged below into
the dispatch tables once, at import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ironflow.commands.classes import RunStep
from ironflow.commands.function import check_workflow_fn
from ironflow.commands.kinds import COMPENSATE, REGISTRATIONS, RUN
from ironflow.commands.retry import DEFAULT_RETRY, RetryPolicy
from ironflow.history.events import (
    CommandScheduled,
    ErrorInfo,
    HistoryEvent,
    RunResumed,
    StepCompleted,
)
from ironflow.interpreter import determinism, lifecycle, patching, resume, tasks
from ironflow.interpreter.context import Context
from ironflow.interpreter.decision import Decision, Work
from ironflow.interpreter.determinism import Detail, Fingerprint, Other, scheduled_event, work
from ironflow.interpreter.lifecycle import root_done
from ironflow.interpreter.primitives import (
    compensate,
    invoke,
    parallel,
    publish,
    run,
    sleep,
    wait_for_event,
)
from ironflow.interpreter.primitives.parallel import branch_done
from ironflow.interpreter.primitives.run import schedule_run
from ironflow.interpreter.resume import ResumeState
from ironflow.interpreter.tasks import PENDING, Handler, Scheduler, Slot, Task, not_a_command
from ironflow.interpreter.values import RESULT_TYPES, deliverable

# Every module that registers handlers, schedulers, fingerprints or details. Each history
# event type has exactly one handler and each command type exactly one of the other three
# (tests/test_interpreter_layout.py holds that).
PARTS = (
    lifecycle,
    determinism,
    patching,
    resume,
    run,
    sleep,
    wait_for_event,
    invoke,
    publish,
    parallel,
    compensate,
)


def _merge(name: str) -> dict[type, Any]:
    table: dict[type, Any] = {}
    for part in PARTS:
        for key, fn in getattr(part, name, {}).items():
            if key in table:
                raise RuntimeError(f"{key.__name__} has two {name}: {table[key]} and {fn}")
            table[key] = fn
    return table


# Dispatch tables, built once: an interpreter per run must be cheap to create.
HANDLERS: dict[type, Handler] = _merge("HANDLERS")
SCHEDULERS: dict[type, Scheduler] = _merge("SCHEDULERS")
FINGERPRINTS: dict[type, Fingerprint] = _merge("FINGERPRINTS")
DETAILS: dict[type, Detail] = _merge("DETAILS")


class Interpreter:
    """Feed it history events; it answers with a ``Decision``.

    ``events_processed`` counts the events it has folded, so a caller can check that resuming
    a cached interpreter costs what the new events cost, not the whole history.
    """

    # Slots, not a __dict__: a runtime keeps one interpreter per run it holds, so size counts.
    # fmt: off
    __slots__ = (
        "_abandoned", "_batch", "_batch_scanned", "_ended", "_failed_at",
        "_failed_of_handed", "_failure", "_handed", "_ids", "_last_decision_seq", "_order",
        "_output", "_patches", "_pos", "_recorded_patches", "_resumed", "_root",
        "_tent_cmds", "_tent_other", "_undos", "_waiting", "ctx", "default_retry", "events",
        "events_processed", "flow", "function_id", "now", "run_id", "status",
    )
    # fmt: on

    # What a ``CommandScheduled`` records per command type, read by ``determinism`` (which
    # cannot import this module) through the interpreter.
    fingerprints = FINGERPRINTS
    details = DETAILS

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
        # What resuming a failed run marked: made by the first mark, kept across refeeds.
        self._resumed: ResumeState | None = None
        self._reset()

    def _reset(self) -> None:
        self.now: Any = None
        self.status = "pending"
        self.ctx: Context | None = None
        self.run_id = ""
        self._root: Task | None = None
        self._waiting: dict[str, Slot] = {}
        self._ids: set[str] = set()
        self._abandoned: set[str] = set()
        self._tent_cmds: dict[str, Slot] = {}
        self._tent_other: dict[tuple[Any, ...], Other] = {}
        self._order = 0
        # The saga: undos registered by step.compensate, last one last; made by the first.
        self._undos: list[Slot] | None = None
        self._failure: BaseException | None = None
        self._failed_at: int | None = None  # seq of the event whose folding failed the run
        # The error the last step failure, wait timeout or child failure handed the
        # workflow, with that event's seq; and whether the run failed of that very error.
        self._handed: tuple[BaseException, int] | None = None
        self._failed_of_handed = False
        self._output: Any = None
        self._ended = False
        self._patches: dict[str, bool] = {}
        self._pos = -1

    def release(self) -> None:
        """Let go of the workflow's code, for a runtime dropping the run (``tasks.release``)."""
        tasks.release(self)

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
        return invoke.invoke_timeout(self, step_id, child_run_id)

    def record(self, events: Iterable[HistoryEvent]) -> None:
        """Fold ``events`` without deciding: for a runtime appending a decision's own events."""
        handlers = HANDLERS
        history = self.events
        append = history.append
        tentative = self._tent_cmds
        waiting = self._waiting
        start = expected = len(history)
        result_types = RESULT_TYPES
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
                if slot is not None and slot.kind == RUN and event.kind == RUN:
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
                    and slot.kind == RUN
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
                            value = deliverable(fn, value)
                        if task.gen is None:
                            self._task_done(task, value, None)
                        else:
                            self._advance(task, value, None)
                    continue
            handler = handlers.get(kind)
            if handler is None:
                raise TypeError(f"not a history event: {event!r}")
            resumed = self._resumed
            if resumed is not None and seq in resumed.dead:  # taken back by a later resume
                continue
            handler(self, event)
            if kind is RunResumed:  # resuming a failed run refolds into fresh state
                tentative = self._tent_cmds
                waiting = self._waiting
        self.events_processed += expected - start

    def _refeed(self) -> None:
        """Fold the stored history again from scratch (used when a failed run resumes).

        Everything but the resume state is made afresh; see ``ResumeState`` for what that
        keeps, and why.
        """
        resumed = self._resumed
        assert resumed is not None  # made by the resume that refolds
        self._reset()
        resumed.suspended.clear()
        dead = resumed.dead
        handlers = HANDLERS
        # What is folded again plus the rest of the batch being fed: the look-ahead of
        # ``patched``/``is_replaying`` and ``taken_back`` must see the events after this one.
        self._batch = self.events + [e for e in self._batch if e.seq >= len(self.events)]
        self._batch_scanned = False
        for event in self.events:
            self._pos = event.seq
            if event.seq in dead:
                continue
            handlers[type(event)](self, event)
            self.events_processed += 1

    # --- what the context asks -----------------------------------------------------------------

    @property
    def is_replaying(self) -> bool:
        """True while the event being folded is followed by decisions already recorded."""
        return patching.is_replaying(self)

    def patched(self, change_id: str) -> bool:
        """True where the new code path applies: new runs, and old runs past their history."""
        return patching.patched(self, change_id)

    # --- deciding ------------------------------------------------------------------------------

    def _decide(self) -> Decision:
        # A registered undo is recorded even if its task was abandoned in the same batch: it
        # still runs should the run fail, and its completion must name a recorded command.
        fresh: list[Slot | Other] = [
            slot
            for slot in self._tent_cmds.values()
            if not slot.task.abandoned or slot.kind == COMPENSATE
        ]
        fresh.extend(self._tent_other.values())
        fresh.sort(key=lambda item: item.order)
        seq = len(self.events)
        events: list[HistoryEvent] = []
        commands: list[Work] = []
        for item in fresh:
            if isinstance(item, Slot):
                events.append(scheduled_event(self, item, seq))
                if item.kind not in REGISTRATIONS:
                    commands.append(work(self, item))
            else:
                events.append(item.event_cls(seq=seq, **item.fields))
                if item.work is not None:
                    commands.append(item.work)
            seq += 1
        pending = tuple(
            work(self, slot) for slot in self._waiting.values() if slot.kind not in REGISTRATIONS
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

    # --- running the workflow's generators --------------------------------------------------

    def _advance(self, task: Task, value: Any, error: BaseException | None) -> None:
        gen = task.gen
        assert gen is not None
        schedulers = SCHEDULERS
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
                    slot = Slot(sid, task, command, RUN, self._order, self.now)
                    self._tent_cmds[sid] = slot
                    task.unrecorded.append(slot)
                    self._waiting[sid] = slot
                    task.waiting = sid
                    return
                outcome = schedule_run(self, task, command)
            else:
                scheduler = schedulers.get(type(command))
                if scheduler is None:
                    outcome = (None, not_a_command(command))
                else:
                    outcome = scheduler(self, task, command)
            if outcome is PENDING:
                return
            value, error = outcome

    def _start_command(self, task: Task, command: Any) -> None:
        """Schedule the one command a branch returned (no generator to send its result to)."""
        outcome = SCHEDULERS[type(command)](self, task, command)
        if outcome is not PENDING:
            self._task_done(task, *outcome)

    def _resume(self, task: Task, value: Any, error: BaseException | None) -> None:
        task.waiting = None
        if task.abandoned:
            return
        if task.gen is None:
            self._task_done(task, value, error)
        else:
            self._advance(task, value, error)

    def _task_done(self, task: Task, value: Any, error: BaseException | None) -> None:
        if task.abandoned:
            return
        task.waiting = None
        if task is self._root:
            root_done(self, value, error)
        else:
            branch_done(self, task, value, error)


def replay(flow: Any, history: Iterable[HistoryEvent]) -> Decision:
    """Fold a whole ``history`` with a fresh interpreter: a pure function of its inputs."""
    return Interpreter(flow).feed(history)
