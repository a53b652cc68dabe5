"""Tasks and slots: the workflow's running generators and the commands they wait on.

The workflow's generators (the root and one per parallel/map branch) are *tasks*. A task that
yields a command gets a *slot* keyed by the command's id (its scope path plus its name); the
id is claimed here, where a second claim of one id becomes a ``DuplicateStepError``. An event
from the runtime resolves the slot it names (``take``) and resumes its task.

A scheduler (``primitives/*.py``) answers a command with ``PENDING`` (its task now waits on a
slot) or with ``(value, error)`` to send straight back into the generator.
"""

from __future__ import annotations

import collections
import datetime as _dt
import inspect
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ironflow.errors import DuplicateStepError, NonDeterminismError
from ironflow.interpreter.decision import Work

if TYPE_CHECKING:
    from ironflow.interpreter.core import Interpreter
    from ironflow.interpreter.primitives.parallel import ParallelState

PENDING: Any = object()
# What the primitive modules register: history event type -> handler, command type ->
# scheduler (answering PENDING or ``(value, error)``). ``core`` merges them into its tables.
Handler = Callable[["Interpreter", Any], None]
Scheduler = Callable[["Interpreter", "Task", Any], Any]
# An undo registered by step.compensate('charge', ...) runs as the step 'compensate:charge'.
UNDO_PREFIX = "compensate:"


class Task:
    """A running generator (or a branch that returned one command) and where it waits."""

    __slots__ = ("abandoned", "gen", "index", "parallel", "prefix", "unrecorded", "waiting")

    def __init__(
        self,
        gen: Generator[Any, Any, Any] | None,
        prefix: str,
        parallel: ParallelState | None = None,
        index: int = 0,
    ) -> None:
        self.gen = gen
        self.prefix = prefix
        self.parallel = parallel
        self.index = index
        self.waiting: str | ParallelState | None = None
        self.abandoned = False
        # Commands this task yielded that history does not record yet, in yield order: the
        # history must record them in this order (that is the per-scope order check).
        self.unrecorded: collections.deque[Slot] = collections.deque()


class Slot:
    """A command the workflow yielded: tentative until recorded, waiting until resolved."""

    # Class-level defaults keep creation cheap: most slots are steps that never need them.
    attempt = 1
    due: _dt.datetime | None = None
    detail: dict[str, Any] | None = None
    child_run_id: str | None = None
    work: Work | None = None

    def __init__(self, sid: str, task: Task, command: Any, kind: str, order: int, ts: Any):
        self.id = sid
        self.task = task
        self.command = command
        self.kind = kind
        self.order = order
        self.ts = ts


def describe(value: Any) -> str:
    """``value`` for an error message that replay must reproduce: no memory addresses."""
    if value is None or type(value) in (bool, int, float, str, list, tuple, dict):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    kind = type(value)
    name = getattr(value, "__qualname__", None)
    what = f"{kind.__qualname__} {name}" if isinstance(name, str) else kind.__qualname__
    return f"a {what} object"


def not_a_command(value: Any) -> TypeError:
    """The error a workflow receives for yielding ``value``, which is not a command."""
    hint = ""
    if inspect.isgenerator(value):
        hint = " (a generator: did you mean `yield from`, or to pass it to step.parallel?)"
    return TypeError(
        f"the workflow yielded {describe(value)}{hint}; yield the commands that "
        f"ironflow.step builds, e.g. `result = yield step.run('name', fn)`"
    )


def claim(
    interp: Interpreter, task: Task, name: str, undo_of: str | None = None
) -> str | DuplicateStepError:
    """Take the id of ``name`` in ``task``'s scope (``undo_of``: the undo of that step)."""
    sid = task.prefix + name
    if sid in interp._ids:
        return duplicate(interp, task, name, undo_of)
    interp._ids.add(sid)
    return sid


def duplicate(
    interp: Interpreter, task: Task, name: str, undo_of: str | None
) -> DuplicateStepError:
    """The error for a second claim of ``name``'s id, saying whose id it is."""
    scope = task.prefix[:-1] or "the workflow"
    if name.startswith(UNDO_PREFIX):
        # An undo's id is 'compensate:<step name>', in the scope where it was registered:
        # a step a user named so takes the same id. Say which of the two came first.
        sid = task.prefix + name
        undo_first = any(slot.id == sid for slot in interp._undos or ())
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


def new_slot(interp: Interpreter, task: Task, sid: str, command: Any, kind: str) -> Slot:
    """A tentative slot for ``command``: the next decision, in yield order."""
    interp._order += 1
    slot = Slot(sid, task, command, kind, interp._order, interp.now)
    interp._tent_cmds[sid] = slot
    task.unrecorded.append(slot)
    return slot


def wait_on(interp: Interpreter, task: Task, slot: Slot) -> Any:
    """Park ``task`` on ``slot`` until an event resolves it."""
    interp._waiting[slot.id] = slot
    task.waiting = slot.id
    return PENDING


def take(interp: Interpreter, event: Any, accepted: tuple[str, ...]) -> Slot | None:
    """The waiting slot ``event`` resolves (its kind one of ``accepted``); None if it belongs
    to abandoned work."""
    sid = event.id
    slot = interp._waiting.get(sid)
    if slot is None or sid in interp._tent_cmds:
        if sid in interp._abandoned:
            return None
        raise unknown(interp, event)
    if slot.kind not in accepted:
        raise NonDeterminismError(
            f"history event {type(event).__name__} (seq {event.seq}) resolves {sid!r}, "
            f"but the code yielded a {slot.kind!r} command there",
            recorded=type(event).__name__,
            current=slot.kind,
            position=event.seq,
        )
    return slot


def unknown(interp: Interpreter, event: Any) -> NonDeterminismError:
    """The error for an event that resolves no waiting slot, saying why."""
    sid = event.id
    if sid in interp._tent_cmds:
        why = "before the history records that it was scheduled"
    elif sid in interp._ids:
        why = "which is no longer waiting (a second completion?)"
    else:
        why = "which the code never yielded"
    return NonDeterminismError(
        f"history event {type(event).__name__} (seq {event.seq}) is for step {sid!r}, {why}",
        recorded=sid,
        current=None,
        position=event.seq,
    )


def abandon_all(interp: Interpreter) -> None:
    """Stop every task: the run failed or was cancelled; late outcomes are then ignored."""
    if interp._root is not None:
        interp._root.abandoned = True
    for sid, slot in interp._waiting.items():
        slot.task.abandoned = True
        interp._abandoned.add(sid)
    interp._waiting.clear()


def dismantle(tasks: Iterable[Task | None]) -> None:
    """Break the references among ``tasks`` and what they reach (their branches, parallel
    states, slots and generators), which point at one another, so that each is freed by
    reference counting once nothing else holds it. A generator still suspended is closed
    then, as dropping it does."""
    stack = [task for task in tasks if task is not None]
    seen: set[int] = set()
    generators = []
    while stack:
        task = stack.pop()
        if id(task) in seen:
            continue
        seen.add(id(task))
        for state in (task.parallel, task.waiting):
            if state is not None and not isinstance(state, str):
                stack.append(state.task)
                stack.extend(branch for branch in state.tasks if branch is not None)
                state.tasks = []
        stack.extend(slot.task for slot in task.unrecorded)
        task.unrecorded.clear()
        task.waiting = task.parallel = None
        generators.append(task.gen)
        task.gen = None
    generators.clear()  # the last references of most: suspended ones are closed here


def release(interp: Interpreter) -> None:
    """Let go of ``interp``'s workflow code: its context, tasks, generators and kept errors.

    For a runtime dropping a run it will not feed again (it ended, or it parked and its
    history is read anew when it resumes). They refer to one another, so a dropped run would
    be freed only by the cyclic garbage collector, which walks every such run again
    (measured: 73,728 objects and a 65-98 ms collection per 6,000 ended 1-step runs). A
    generator still suspended is closed now, as dropping it does: its ``finally`` blocks run,
    with the context still usable. The history folded and the status stay.
    """
    ctx, interp.ctx = interp.ctx, None
    if ctx is not None:
        ctx._log = None  # a ReplayLog and its context refer to each other
    root, interp._root = interp._root, None
    # Most runs end with their one generator finished and nothing waiting: then that is all.
    if (
        interp._waiting
        or interp._tent_cmds
        or interp._undos
        or (root is not None and not _finished(root))
    ):
        slots = [*interp._waiting.values(), *interp._tent_cmds.values(), *(interp._undos or ())]
        dismantle([root, *(slot.task for slot in slots)])
        interp._waiting = {}
        interp._tent_cmds = {}
        interp._tent_other = {}
        interp._undos = None
    if interp._failure is not None or interp._handed is not None:
        # A kept error's traceback holds the frames that raised it and their callers,
        # which hold the error and the interpreter; what it said is in the history already.
        for kept in (interp._failure, interp._handed[0] if interp._handed else None):
            error = kept
            while error is not None and error.__traceback__ is not None:
                error.__traceback__ = None
                error = error.__cause__ or error.__context__
        interp._failure = None
        interp._handed = None


def _finished(task: Task) -> bool:
    """``task`` refers to nothing that refers back to it: its generator is done (or it had
    none), and it waits on nothing and holds no slot."""
    done = getattr(task.gen, "gi_frame", None) is None  # a finished generator has no frame
    return done and task.waiting is None and not task.unrecorded
